"""dispatchlet: Dispatch function endpoints on AWS Lambda, Google Cloud Functions and WSGI.

from dispatchlet import Endpoint

endpoint = Endpoint()

@endpoint.function
def greet(name: str) -> str:
    return f"Hello, {name}!"
"""

__version__ = "0.1.0"

from .core.context import RunContext
from .core.endpoint import Endpoint
from .core.errors import (
    ConfigurationError,
    DeadlineExceeded,
    DispatchletError,
    IncompatibleState,
    InvalidArgument,
    NotFound,
    PermanentError,
    PermissionDenied,
    TemporaryError,
    Throttled,
    Unauthenticated,
    register_error_status,
)
from .core.functions import Function, TailCall
from .core.http import Request, Response
from .core.status import Status

__all__ = [
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
    "TailCall",
    "TemporaryError",
    "Throttled",
    "Unauthenticated",
    "register_error_status",
]
