"""One error hierarchy, mapped both to HTTP (Connect) errors and to run statuses.

Raised before a function runs (verification, routing, decoding), a
``DispatchletError`` becomes an HTTP error response with its ``http_status`` and
Connect ``code``. Raised by a function, any exception becomes a run ``Status`` via
``status_for``: the project's classes carry a fixed status, built-in and common
library exceptions are looked up in ``BUILTIN_STATUSES`` by name (so that this module
imports neither ssl nor socket), user types registered with ``register_error_status``
come first, and anything else is PERMANENT_ERROR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from .status import Status


class ConfigurationError(ValueError):
    """A setting that cannot be used, from an argument or an environment variable; the
    message names the setting. Raised when an Endpoint (or another part) is made, never
    while serving."""


class DispatchletError(Exception):
    """Base class of dispatchlet's errors; each subclass fixes its status."""

    status: ClassVar[Status] = Status.PERMANENT_ERROR
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"


class InvalidArgument(DispatchletError):
    """Malformed request or input."""

    status = Status.INVALID_ARGUMENT
    http_status = 400
    code = "invalid_argument"


class Unauthenticated(DispatchletError):
    """Missing or malformed credentials (request signature)."""

    status = Status.UNAUTHENTICATED
    http_status = 401
    code = "unauthenticated"


class PermissionDenied(DispatchletError):
    """Credentials present but rejected (invalid, stale or misdirected signature)."""

    status = Status.PERMISSION_DENIED
    http_status = 403
    code = "permission_denied"


class NotFound(DispatchletError):
    """The thing asked for does not exist (an RPC path, a function, a resource)."""

    status = Status.NOT_FOUND
    http_status = 404
    code = "not_found"


class MethodNotAllowed(DispatchletError):
    """An HTTP method other than POST."""

    http_status = 405
    code = "unimplemented"


class UnsupportedMediaType(DispatchletError):
    """A content type other than the codecs served."""

    http_status = 415
    code = "unimplemented"


class TemporaryError(DispatchletError):
    """A failure worth retrying."""

    status = Status.TEMPORARY_ERROR
    http_status = 503
    code = "unavailable"


class PermanentError(DispatchletError):
    """A failure that retrying will not fix."""


class Throttled(DispatchletError):
    """Rate limited: retry later."""

    status = Status.THROTTLED
    http_status = 429
    code = "resource_exhausted"


class DeadlineExceeded(DispatchletError):
    """The run's time is up."""

    status = Status.TIMEOUT
    http_status = 504
    code = "deadline_exceeded"


class IncompatibleState(DispatchletError):
    """Saved state cannot be resumed by this version of the code."""

    status = Status.INCOMPATIBLE_STATE
    http_status = 409
    code = "aborted"


# Exceptions by "module.qualname": the most specific class in an exception's MRO wins.
BUILTIN_STATUSES: dict[str, Status] = {
    "builtins.TimeoutError": Status.TIMEOUT,
    "asyncio.exceptions.TimeoutError": Status.TIMEOUT,  # Python 3.10
    "concurrent.futures._base.TimeoutError": Status.TIMEOUT,  # Python 3.10
    "asyncio.exceptions.CancelledError": Status.TEMPORARY_ERROR,
    "builtins.ConnectionError": Status.TCP_ERROR,
    "socket.gaierror": Status.DNS_ERROR,
    "socket.herror": Status.DNS_ERROR,
    "ssl.SSLError": Status.TLS_ERROR,
    "ssl.SSLCertVerificationError": Status.TLS_ERROR,
    "ssl.CertificateError": Status.TLS_ERROR,
    "http.client.HTTPException": Status.HTTP_ERROR,
    "urllib.error.HTTPError": Status.HTTP_ERROR,
    "builtins.PermissionError": Status.PERMISSION_DENIED,
    "builtins.FileNotFoundError": Status.NOT_FOUND,
    "builtins.TypeError": Status.INVALID_ARGUMENT,
    "builtins.ValueError": Status.INVALID_ARGUMENT,
    "builtins.NotImplementedError": Status.PERMANENT_ERROR,
    "builtins.InterruptedError": Status.TEMPORARY_ERROR,
    "builtins.EOFError": Status.TEMPORARY_ERROR,
    "builtins.MemoryError": Status.TEMPORARY_ERROR,
    "builtins.OSError": Status.TEMPORARY_ERROR,
    # Common HTTP clients, matched by name so that neither needs to be installed.
    "requests.exceptions.Timeout": Status.TIMEOUT,
    "requests.exceptions.ConnectionError": Status.TCP_ERROR,
    "requests.exceptions.SSLError": Status.TLS_ERROR,
    "requests.exceptions.HTTPError": Status.HTTP_ERROR,
    "httpx.TimeoutException": Status.TIMEOUT,
    "httpx.ConnectError": Status.TCP_ERROR,
    "httpx.NetworkError": Status.TCP_ERROR,
    "httpx.HTTPStatusError": Status.HTTP_ERROR,
}

StatusRule = Status | Callable[[BaseException], Status]

_registered: dict[type[BaseException], StatusRule] = {}


def register_error_status(exc_type: type[BaseException], status: StatusRule) -> None:
    """Map ``exc_type`` (and its subclasses) to a status, or to a function of the exception.

    Registered types take precedence over the built-in table and over dispatchlet's own
    classes, the most specific class winning.
    """
    if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
        raise TypeError(f"expected an exception class, got {exc_type!r}")
    _registered[exc_type] = status


def status_for(exc: BaseException) -> Status:
    """The run status reported for a function that raised ``exc``."""
    for cls in type(exc).__mro__:
        rule = _registered.get(cls)
        if rule is not None:
            return rule if isinstance(rule, Status) else Status(rule(exc))
        if issubclass(cls, DispatchletError) and "status" in cls.__dict__:
            return cls.status
        found = BUILTIN_STATUSES.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return Status.PERMANENT_ERROR
