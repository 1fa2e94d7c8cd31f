"""``dispatchlet call --lambda HANDLER``: invoke an app's Lambda handler in this process
with the event the scheduler sends to an ``arn:aws:lambda:...`` endpoint, and read the
answer as the scheduler does.

The event of a direct invocation (PROTOCOL.md, section 5) is a JSON string literal: the
standard base64 of a serialized RunRequest. Lambda's runtime decodes the JSON, so the
handler gets a ``str``, and encodes what the handler returns as JSON: the base64 of the
RunResponse. Both JSON steps are taken here too, so that what works here works there.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from ..proto.dispatch.sdk.v1 import function_pb2
from ..serving.app_loading import AppLoadError, load_module
from .errors import CommandError
from .local_server import load_failed

LambdaHandler = Callable[[Any, Any], Any]
# The attribute of a file given without one: the name the deploy guides use.
DEFAULT_ATTRIBUTE = "handler"


class LocalContext:
    """What a handler may read of Lambda's context object, for one local invocation."""

    def __init__(self, timeout: float) -> None:
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        )
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def split_handler(spec: str) -> tuple[str, str]:
    """HANDLER as (module or file, attribute): ``MODULE:ATTR``, ``path/to/file.py:ATTR``,
    ``path/to/file.py`` (attribute ``handler``) or Lambda's ``MODULE.ATTR``."""
    target, colon, attribute = spec.rpartition(":")
    if colon and target and attribute:
        return target, attribute
    if spec.endswith(".py"):
        return spec, DEFAULT_ATTRIBUTE
    module, dot, attribute = spec.rpartition(".")
    if not dot or not module or not attribute:
        raise CommandError(
            f"--lambda {spec!r}: expected MODULE:ATTR, path/to/file.py[:ATTR] or "
            "Lambda's MODULE.ATTR (template.yaml's Handler)"
        )
    return module, attribute


def load_handler(spec: str) -> LambdaHandler:
    """The handler HANDLER names; a failure shows the app's own traceback, then one line."""
    target, attribute = split_handler(spec)
    try:
        module = load_module(target)
    except AppLoadError as exc:
        raise load_failed(exc) from None
    handler = getattr(module, attribute, None)
    if not callable(handler):
        found = "is missing" if handler is None else f"is of type {type(handler).__name__}"
        raise CommandError(
            f"{target}:{attribute} {found}: --lambda wants a Lambda handler, "
            "`handler = lambda_handler(endpoint)`"
        )
    return handler  # type: ignore[no-any-return]


def direct_event(request: function_pb2.RunRequest) -> Any:
    """The event a direct invocation hands the handler, through the JSON it travels as."""
    payload = json.dumps(base64.b64encode(request.SerializeToString()).decode("ascii"))
    return json.loads(payload)


def invoke(
    handler: LambdaHandler,
    request: function_pb2.RunRequest,
    *,
    timeout: float,
    show_traceback: bool = False,
) -> function_pb2.RunResponse:
    """Invoke ``handler`` with ``request`` as a direct invocation; its RunResponse. As on
    Lambda, an invocation that runs past ``timeout`` seconds gets no answer."""
    try:
        answer = _within(timeout, lambda: handler(direct_event(request), LocalContext(timeout)))
    except TimeoutError:
        raise CommandError(
            f"no answer within {timeout:g} s (see --timeout; on Lambda: Task timed out)"
        ) from None
    except Exception as exc:
        # On Lambda, a function error: the scheduler sees no RunResponse.
        if show_traceback:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        raise CommandError(
            f"the handler raised {type(exc).__name__}: {exc} (a function error on Lambda)"
        ) from None
    try:
        returned = json.loads(json.dumps(answer))
    except (TypeError, ValueError) as exc:
        raise CommandError(f"the handler returned what Lambda cannot send as JSON: {exc}") from None
    if not isinstance(returned, str):
        raise CommandError(
            f"the handler returned a {type(returned).__name__}, not the base64 of a "
            "RunResponse: is it lambda_handler(endpoint)?"
        )
    try:
        return function_pb2.RunResponse.FromString(base64.b64decode(returned, validate=True))
    except (binascii.Error, ValueError, DecodeError) as exc:
        raise CommandError(f"the handler's answer is not a base64 RunResponse: {exc}") from None


def _within(timeout: float, work: Callable[[], Any]) -> Any:
    """What ``work`` returns or raises, run in a thread; TimeoutError once ``timeout``
    seconds pass first (the thread, a daemon, is left to end with the process)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="dispatchlet-lambda", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError
    returned, value = outcome[0]
    if not returned:
        raise value
    return value
