"""dispatchlet: Dispatch function endpoints on AWS Lambda, Google Cloud Functions and WSGI.

from dispatchlet import Endpoint

endpoint = Endpoint()

@endpoint.function
def greet(name: str) -> str:
    return f"Hello, {name}!"
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from .core import dispatching as _dispatching
from .core.context import RunContext
from .core.dispatch_options import Backoff
from .core.endpoint import Endpoint
from .core.errors import (
    AllFailed,
    CallFailed,
    ConfigurationError,
    DeadlineExceeded,
    DispatchletError,
    IncompatibleState,
    InvalidArgument,
    NotFound,
    PermanentError,
    PermissionDenied,
    StepMismatch,
    TemporaryError,
    Throttled,
    Unauthenticated,
    register_error_status,
)
from .core.functions import Function, TailCall
from .core.http import Request, Response
from .core.status import Status

if TYPE_CHECKING:
    from .client import CallError, CallInfo, Client, ClientError
    from .core.workflow import any, call, gather, patched, race, receive, sleep


def _default_client() -> _dispatching.Dispatcher:
    # Imported when a call is first dispatched: serving requests never needs the client.
    from .client import Client

    return Client()


_dispatching.set_default_factory(_default_client)
_CLIENT_NAMES = ("CallError", "CallInfo", "Client", "ClientError")
_WORKFLOW_NAMES = ("any", "call", "gather", "patched", "race", "receive", "sleep")


def __getattr__(name: str) -> object:
    # The client and the workflow steps are imported on first use: a Lambda cold start
    # of an endpoint that uses neither never pays for them.
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    if name in _WORKFLOW_NAMES:
        from .core import workflow

        return getattr(workflow, name)
    raise AttributeError(f"module 'dispatchlet' has no attribute {name!r}")


__all__ = [
    "AllFailed",
    "Backoff",
    "CallError",
    "CallFailed",
    "CallInfo",
    "Client",
    "ClientError",
    "ConfigurationError",
    "DeadlineExceeded",
    "DispatchletError",
    "Endpoint",
    "Function",
    "IncompatibleState",
    "InvalidArgument",
    "NotFound",
    "PermanentError",
    "PermissionDenied",
    "Request",
    "Response",
    "RunContext",
    "Status",
    "StepMismatch",
    "TailCall",
    "TemporaryError",
    "Throttled",
    "Unauthenticated",
    "any",
    "call",
    "gather",
    "patched",
    "race",
    "receive",
    "register_error_status",
    "sleep",
]
