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

import builtins
import typing
from collections.abc import Callable

from .status import Status


class DispatchletError(Exception):
    """The root of every exception dispatchlet raises, so that ``except DispatchletError``
    catches them all.

    Raised before a function runs, a subclass answers with its ``http_status`` and
    Connect ``code`` (these defaults: 500, ``internal``). Raised by a function, a
    subclass that sets ``status`` reports that status; the root itself fixes none, so
    that an error that also derives from a built-in one (``ConfigurationError`` is a
    ``ValueError``) reports the built-in's, as it did before it joined the family.
    """

    # Not ClassVars: errors that describe an answer received (``CallFailed``,
    # ``ClientError``) set them on the instance.
    status: Status = Status.PERMANENT_ERROR
    http_status: int = 500
    code: str = "internal"


class ConfigurationError(ValueError, DispatchletError):
    """A setting that cannot be used, from an argument or an environment variable; the
    message names the setting. Raised when an Endpoint (or another part) is made, never
    while serving. A ``ValueError`` first: its status is INVALID_ARGUMENT, as it was."""


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

    status = Status.PERMANENT_ERROR


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


class StepMismatch(IncompatibleState):
    """A resumed workflow made a step other than the one its journal records in that
    slot: its code changed the order of its steps. Unlike other incompatible states,
    the scheduler does not start such a call over, which would repeat the steps it took
    already; it ends INCOMPATIBLE_STATE (``patched`` keeps runs on their old branch)."""


class CallFailed(DispatchletError):
    """A call awaited in a workflow ended with an error: the error's type and message,
    the call's status (as the error's type tells it) and its dispatch id.

    A failed call whose error type is a built-in exception (``ValueError``, ...) or one
    of dispatchlet's raises a subclass of both, so ``except ValueError`` catches it too.
    Uncaught, it ends the workflow with the call's status when that status is final,
    else (the call ran out of retries) with PERMANENT_ERROR.
    """

    def __init__(
        self, function: str, error_type: str, message: str, status: Status, dispatch_id: str = ""
    ) -> None:
        super().__init__(message)
        self.function = function
        self.error_type = error_type
        self.message = message
        self.status = status
        self.dispatch_id = dispatch_id

    def __str__(self) -> str:
        kind = f"{self.error_type}: " if self.error_type else ""
        return f"the call of {self.function} failed ({self.status.name}): {kind}{self.message}"

    @property
    def run_status(self) -> Status:
        """The status of a workflow that this error ends: retrying the workflow would
        only replay the same failure."""
        return Status.PERMANENT_ERROR if self.status.retryable else self.status


class AllFailed(DispatchletError):
    """Every call given to ``any`` failed; their errors, in the order given."""

    def __init__(self, errors: list[CallFailed]) -> None:
        super().__init__(f"all {len(errors)} calls failed")
        self.errors = errors


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


def refuses(exc: BaseException) -> typing.TypeGuard[DispatchletError]:
    """Whether ``exc`` refuses a request with an answer of its own (its class sets an
    HTTP status: a bad request, a bad signature, a database away), rather than being a
    failure of the code that raised it, which is answered as an internal error."""
    return isinstance(exc, DispatchletError) and any(
        "http_status" in vars(cls) for cls in type(exc).__mro__ if cls is not DispatchletError
    )


def status_for(exc: BaseException) -> Status:
    """The run status reported for a function that raised ``exc``."""
    for cls in type(exc).__mro__:
        found = _class_status(cls, exc)
        if found is not None:
            return found
    return Status.PERMANENT_ERROR


def _class_status(cls: type[BaseException], exc: BaseException | None) -> Status | None:
    """The status that ``cls``, one class of an exception's MRO, fixes, if it fixes one.
    ``exc`` is the exception; None when only its type is known, where rules that are
    functions of the exception cannot apply."""
    rule = _registered.get(cls)
    if isinstance(rule, Status):
        return rule
    if rule is not None and exc is not None:
        return Status(rule(exc))
    if cls is CallFailed and exc is not None:
        return typing.cast(CallFailed, exc).run_status
    if issubclass(cls, DispatchletError) and cls is not DispatchletError and "status" in vars(cls):
        return cls.status
    return BUILTIN_STATUSES.get(f"{cls.__module__}.{cls.__qualname__}")


def type_name(cls: type[BaseException]) -> str:
    """An exception type as an Error message names it: ``ValueError`` for a built-in,
    else ``module.QualName``."""
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


# What the scheduler names the errors it makes itself (no answer, a bad answer, ...).
_SCHEDULER_ERRORS: dict[str, Status] = {
    "InvalidResponse": Status.INVALID_RESPONSE,
    "InvalidPoll": Status.INVALID_RESPONSE,
    "InvalidTailCall": Status.INVALID_RESPONSE,
    "HTTPError": Status.HTTP_ERROR,
    "DeadlineExceeded": Status.TIMEOUT,
    "Cancelled": Status.PERMANENT_ERROR,
}


def error_class(name: str) -> type[BaseException] | None:
    """The class an Error's type names, when it is one this process knows by name alone
    (a built-in exception, one of dispatchlet's, a registered one); never an import."""
    if "." not in name:
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
    for cls in (*_registered, *_own_errors()):
        if type_name(cls) == name:
            return cls
    return None


def _own_errors() -> list[type[DispatchletError]]:
    found: list[type[DispatchletError]] = []
    todo: list[type[DispatchletError]] = [DispatchletError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    # CallFailed and AllFailed describe failures of other calls: a child that ended with
    # one is read as a plain CallFailed, as before they joined the family.
    return [c for c in found if c.__module__ == __name__ and not issubclass(c, _RELAYED)]


def status_for_type(name: str) -> Status:
    """The status of a call whose error has type ``name``: by the same table as for a
    raised exception (registered types, dispatchlet's, the built-in table), then the
    names of errors the scheduler makes, else PERMANENT_ERROR."""
    cls = error_class(name)
    if cls is not None:
        for base in cls.__mro__:
            found = _class_status(base, None)
            if found is not None:
                return found
        return Status.PERMANENT_ERROR
    qualified = name if "." in name else f"builtins.{name}"
    return BUILTIN_STATUSES.get(qualified) or _SCHEDULER_ERRORS.get(name, Status.PERMANENT_ERROR)


STEP_MISMATCH = type_name(StepMismatch)
"""The error type of a workflow whose code changed the order of its steps: a resume that
answers it is final, since starting over would repeat the steps taken."""

_RELAYED = (CallFailed, AllFailed)
