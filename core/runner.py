"""Running one function for one RunRequest, and shaping its RunResponse."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2

from ..proto.dispatch.sdk.v1 import call_pb2, error_pb2, function_pb2, status_pb2
from . import values
from .context import RunContext
from .errors import (
    DeadlineExceeded,
    DispatchletError,
    IncompatibleState,
    InvalidArgument,
    status_for,
    type_name,
)
from .functions import Function, TailCall
from .status import Status

MAX_TRACEBACK_BYTES = 64 * 1024

logger = logging.getLogger("dispatchlet")


def response(status: Status, result: call_pb2.CallResult | None = None) -> function_pb2.RunResponse:
    """A RunResponse that exits with ``result`` (empty when None)."""
    message = function_pb2.RunResponse(status=status.value)  # type: ignore[arg-type]
    # Filled in place: cheaper than building the nested messages and copying them in.
    exit_result = message.exit.result
    if result is None:
        exit_result.SetInParent()
    else:
        exit_result.CopyFrom(result)
    return message


def error_proto(exc: BaseException, *, allow_pickle: bool = False) -> error_pb2.Error:
    """An Error carrying the exception's type, message and traceback text."""
    cls = type(exc)
    name = type_name(cls)
    import traceback  # failures only: it costs cold-start time

    trace = "".join(traceback.format_exception(cls, exc, exc.__traceback__)).encode(
        "utf-8", "replace"
    )
    error = error_pb2.Error(type=name, message=str(exc), traceback=trace[-MAX_TRACEBACK_BYTES:])
    if allow_pickle:
        import pickle

        # The value is optional: type and message remain when it does not pickle.
        with contextlib.suppress(Exception):
            error.value = pickle.dumps(exc)
    return error


def error_run_response(
    exc: BaseException, *, allow_pickle: bool = False
) -> function_pb2.RunResponse:
    """The RunResponse for a run that ended with ``exc``."""
    return response(
        status_for(exc),
        call_pb2.CallResult(error=error_proto(exc, allow_pickle=allow_pickle)),
    )


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


_UNSIGNED_PICKLE = (
    "refusing pickled input: this request carries no verified signature (Lambda direct "
    "invocation, Endpoint.run, insecure=True), and unpickling it would let anyone who can "
    "reach the function run code in it; Endpoint(allow_pickle=True, "
    "allow_unsigned_pickle=True) accepts it where the caller is trusted otherwise"
)


def execute(
    function: Function[..., Any],
    request: function_pb2.RunRequest,
    *,
    allow_pickle: bool,
    unpickle_input: bool | None = None,
) -> function_pb2.RunResponse:
    """Run ``function`` for ``request``; every outcome is a RunResponse, never a raise.

    ``allow_pickle`` lets outputs and errors be pickled; ``unpickle_input`` (by default
    ``allow_pickle``) lets a pickled input be unpickled: only for a verified request,
    unless the user opted in to more.
    """
    unpickle = allow_pickle if unpickle_input is None else unpickle_input
    deadline = None
    if request.HasField("expiration_time"):
        deadline = _seconds(request.expiration_time)
        if deadline <= time.time():
            return error_run_response(
                DeadlineExceeded(f"the run of {function.name} expired before it started")
            )
    journal = None
    if request.WhichOneof("directive") == "poll_result":
        if not function.is_async:
            return error_run_response(
                IncompatibleState(
                    f"{function.name} is not a coroutine: there is no state to resume"
                )
            )
        from .journal import read_journal  # workflows only: cold starts

        try:
            journal = read_journal(request.poll_result, function.name)
        except IncompatibleState as exc:
            return error_run_response(exc)
    # An unset input reads as an empty Any: no type URL.
    input_any = request.input if journal is None else journal.input
    bound = arguments(
        function,
        input_any,
        lambda: run_context(function, request),
        allow_pickle=allow_pickle,
        unpickle=unpickle,
    )
    if isinstance(bound, function_pb2.RunResponse):
        return bound
    args, kwargs = bound

    try:
        if function.is_async:
            # Imported here: an endpoint without workflows never loads them (cold starts).
            from .journal import new_journal
            from .replay import Replay
            from .workflow_driver import Suspended, run_workflow

            timeout = None if deadline is None else max(deadline - time.time(), 0.0)
            replay = Replay(
                journal or new_journal(function.name, input_any),
                function.endpoint,
                allow_pickle=allow_pickle,
                unpickle=unpickle,
            )
            if journal is not None:
                replay.merge(request.poll_result.results)
            endpoint = function.endpoint
            if endpoint is not None:
                from .inline_steps import InlineSteps

                after = function.checkpoint_after
                replay.inline = InlineSteps(
                    request,
                    endpoint.checkpoint_after if after is None else after,
                    deadline,
                    allow_pickle=allow_pickle,
                    unpickle=unpickle,
                )
            result = run_workflow(function, args, kwargs, replay, timeout)
            if isinstance(result, Suspended):
                return result.response
        else:
            result = function.fn(*args, **kwargs)
    except Exception as exc:
        logger.warning("%s failed: %s: %s", function.name, type(exc).__name__, exc)
        return error_run_response(exc, allow_pickle=allow_pickle)

    return exit_response(function, result, allow_pickle=allow_pickle)


def arguments(
    function: Function[..., Any],
    input_any: any_pb2.Any,
    context: Callable[[], RunContext],
    *,
    allow_pickle: bool,
    unpickle: bool,
) -> tuple[tuple[object, ...], dict[str, object]] | function_pb2.RunResponse:
    """The arguments of a run of ``function`` with ``input_any``, or the RunResponse
    that refuses that input (INVALID_ARGUMENT, or the status of the error raised)."""
    try:
        present = bool(input_any.type_url)
        if allow_pickle and not unpickle and values.is_pickled(input_any):
            raise values.DecodeError(_UNSIGNED_PICKLE)
        value = values.from_any(input_any, allow_pickle=unpickle) if present else None
        return function.arguments(value, present, context)
    except (values.DecodeError, DispatchletError) as exc:
        # Bad input is the caller's fault: no traceback of ours to show.
        status = Status.INVALID_ARGUMENT if isinstance(exc, values.DecodeError) else status_for(exc)
        error = error_pb2.Error(type=type(exc).__name__, message=str(exc))
        return response(status, call_pb2.CallResult(error=error))


def exit_response(
    function: Function[..., Any], result: object, *, allow_pickle: bool
) -> function_pb2.RunResponse:
    """The RunResponse of a run of ``function`` that returned ``result``: its output, or
    the tail call it handed over to."""
    try:
        if isinstance(result, TailCall):
            call = call_pb2.Call(
                function=result.function,
                endpoint=result.endpoint,
                input=values.to_any(result.input, allow_pickle=allow_pickle),
            )
            if result.settings:
                result.settings.apply(call)
            resp = response(Status.OK)
            resp.exit.tail_call.CopyFrom(call)
            return resp
        output = values.to_any(result, allow_pickle=allow_pickle)
    except values.EncodeError as exc:
        return response(
            Status.PERMANENT_ERROR,
            call_pb2.CallResult(
                error=error_pb2.Error(
                    type="TypeError",
                    message=f"cannot encode the return value of {function.name}: {exc}",
                )
            ),
        )
    message = function_pb2.RunResponse(status=status_pb2.STATUS_OK)
    message.exit.result.output.CopyFrom(output)
    return message


def run_context(function: Function[..., Any], request: function_pb2.RunRequest) -> RunContext:
    """The ``RunContext`` of a run of ``function`` for ``request``."""
    return RunContext(
        function=function.name,
        dispatch_id=request.dispatch_id,
        parent_dispatch_id=request.parent_dispatch_id,
        root_dispatch_id=request.root_dispatch_id,
        creation_time=_datetime(request, "creation_time"),
        expiration_time=_datetime(request, "expiration_time"),
    )


def _datetime(request: function_pb2.RunRequest, name: str) -> datetime | None:
    if not request.HasField(name):  # type: ignore[arg-type]
        return None
    try:
        value: datetime = getattr(request, name).ToDatetime(timezone.utc)
    except (ValueError, OverflowError):
        # Out of the datetime range: the caller's mistake, reported as such.
        raise InvalidArgument(f"{name} is out of range") from None
    return value
