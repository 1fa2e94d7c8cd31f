"""Running one function for one RunRequest, and shaping its RunResponse."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Coroutine
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2

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

if TYPE_CHECKING:
    import asyncio

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
        from . import workflow

        try:
            journal = workflow.read_journal(request.poll_result, function.name)
        except IncompatibleState as exc:
            return error_run_response(exc)
    try:
        # An unset input reads as an empty Any: no type URL.
        input_any = request.input if journal is None else journal.input
        present = bool(input_any.type_url)
        if allow_pickle and not unpickle and values.is_pickled(input_any):
            raise values.DecodeError(_UNSIGNED_PICKLE)
        value = values.from_any(input_any, allow_pickle=unpickle) if present else None
        args, kwargs = function.arguments(value, present, lambda: _context(function, request))
    except (values.DecodeError, DispatchletError) as exc:
        # Bad input is the caller's fault: no traceback of ours to show.
        status = Status.INVALID_ARGUMENT if isinstance(exc, values.DecodeError) else exc.status
        error = error_pb2.Error(type=type(exc).__name__, message=str(exc))
        return response(status, call_pb2.CallResult(error=error))

    try:
        if function.is_async:
            from . import workflow

            timeout = None if deadline is None else max(deadline - time.time(), 0.0)
            replay = workflow.Replay(
                journal or workflow.new_journal(function.name, input_any),
                function.endpoint,
                allow_pickle=allow_pickle,
                unpickle=unpickle,
            )
            if journal is not None:
                replay.merge(request.poll_result.results)
            result = workflow.run_workflow(function, args, kwargs, replay, timeout)
            if isinstance(result, workflow.Suspended):
                return result.response
        else:
            result = function.fn(*args, **kwargs)
    except Exception as exc:
        logger.warning("%s failed: %s: %s", function.name, type(exc).__name__, exc)
        return error_run_response(exc, allow_pickle=allow_pickle)

    try:
        if isinstance(result, TailCall):
            call = call_pb2.Call(
                function=result.function,
                endpoint=result.endpoint,
                input=values.to_any(result.input, allow_pickle=allow_pickle),
            )
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


def _context(function: Function[..., Any], request: function_pb2.RunRequest) -> RunContext:
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


_loops = threading.local()


def run_coroutine(awaitable: Awaitable[object], timeout: float | None) -> object:
    """Run a coroutine to completion on this thread's event loop, within ``timeout``.

    asyncio is imported here, not at module level: it costs cold-start time and only
    async functions need it. A thread that already runs a loop (a notebook, an async
    server) hands the coroutine to a fresh thread instead.
    """
    import asyncio

    async def bounded() -> object:
        return await asyncio.wait_for(awaitable, timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _thread_loop().run_until_complete(bounded())
    return _in_fresh_thread(bounded())


def _thread_loop() -> asyncio.AbstractEventLoop:
    import asyncio

    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops.loop = loop
    return loop


def _in_fresh_thread(coro: Coroutine[Any, Any, object]) -> object:
    import asyncio

    outcome: list[object] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(asyncio.run(coro))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="dispatchlet-coroutine")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
