"""The command line's side of running an app locally: where its server listens by
default, and an APP that does not load reported as the command's error."""

from __future__ import annotations

import sys

from ..core.endpoint import Endpoint
from ..serving.app_loading import AppLoadError, load_endpoint, user_traceback
from .errors import CommandError

DEFAULT_ENDPOINT_URL = "http://127.0.0.1:8000"
"""Where ``dispatchlet serve`` listens by default, and where ``call`` sends by default."""


def load_app(app: str) -> Endpoint:
    """The Endpoint APP names; a failure shows the app's own traceback, then one line."""
    try:
        return load_endpoint(app)
    except AppLoadError as exc:
        raise load_failed(exc) from None


def load_failed(exc: AppLoadError) -> CommandError:
    """The command's error for an app that did not load, once the app's own traceback
    (if it raised) is shown."""
    trace = user_traceback(exc)
    if trace:
        print(trace, end="", file=sys.stderr)
    return CommandError(str(exc))
