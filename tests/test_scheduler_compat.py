"""What the original Dispatch SDK (dispatch-py) sends the scheduler: Polls without
max_wait, and requests to a base URL that ends in a slash."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from dispatchlet.core import values
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.http_caller import Outcome
from scheduler_harness import ENDPOINT, call, harness, returned


def polling(max_wait: float | None) -> Outcome:
    """A Poll as dispatch-py makes it: one call, min 1 and max 10 results, and
    ``max_wait`` only when given."""
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.poll.coroutine_state = b"state"
    response.poll.calls.add(function="child", endpoint=ENDPOINT).input.CopyFrom(values.to_any(21))
    response.poll.min_results, response.poll.max_results = 1, 10
    if max_wait is not None:
        response.poll.max_wait.FromMilliseconds(int(max_wait * 1000))
    return Outcome(Status.OK, response)


def parent_and_child(max_wait: float | None) -> Callable[[str, function_pb2.RunRequest], Outcome]:
    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        if request.function == "child":
            return returned(2 * values.from_any(request.input))
        if request.WhichOneof("directive") == "poll_result":
            (result,) = request.poll_result.results
            return returned(values.from_any(result.output))
        return polling(max_wait)

    return answer


def test_a_poll_without_max_wait_resumes_when_its_results_are_ready(tmp_path: Path) -> None:
    async def scenario() -> tuple[int | None, bytes]:
        async with harness(tmp_path, parent_and_child(None)) as h:
            (dispatch_id,) = await h.dispatch(call("parent"))
            done = await h.done(dispatch_id)
            return done.status, done.result

    status, result = asyncio.run(scenario())
    assert status == Status.OK.value, call_pb2.CallResult.FromString(result)
    assert values.from_any(call_pb2.CallResult.FromString(result).output) == 42


def test_a_max_wait_under_a_second_is_still_refused(tmp_path: Path) -> None:
    async def scenario() -> tuple[int | None, bytes]:
        async with harness(tmp_path, parent_and_child(0.5)) as h:
            (dispatch_id,) = await h.dispatch(call("parent"))
            done = await h.done(dispatch_id)
            return done.status, done.result

    status, result = asyncio.run(scenario())
    assert status == Status.INVALID_RESPONSE.value
    error = call_pb2.CallResult.FromString(result).error
    assert "max_wait must be at least 1 second" in error.message


def test_repeated_slashes_before_the_service_path_reach_the_api(tmp_path: Path) -> None:
    """dispatch-py with DISPATCH_API_URL ending in "/" posts to //dispatch.sdk.v1...:
    answered there, with the body it sent (no redirect)."""

    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            request = dispatch_pb2.DispatchRequest(calls=[call("f", "x")])
            status, body = await h.post(
                "//dispatch.sdk.v1.DispatchService/Dispatch", request.SerializeToString()
            )
            assert status == 200, body
            (dispatch_id,) = dispatch_pb2.DispatchResponse.FromString(body).dispatch_ids
            status, body = await h.post(
                "///dispatchlet.scheduler.v1.CallService/Get",
                calls_pb2.GetRequest(dispatch_id=dispatch_id).SerializeToString(),
            )
            assert status == 200, body
            assert calls_pb2.GetResponse.FromString(body).call.function == "f"
            # Only slashes: anything else before the service path is still unknown.
            status, _ = await h.post(
                "/x/dispatch.sdk.v1.DispatchService/Dispatch", request.SerializeToString()
            )
            assert status == 404

    asyncio.run(scenario())
