"""The CallService as a client sees it, in process: a call's input, next attempt time
and latest attempt status; Wait answering on each failed attempt; List by final status,
newest first."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from dispatchlet.core import values
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.retry import RetryPolicy
from scheduler_harness import Harness, call, harness, raised, returned

CALLS = "/dispatchlet.scheduler.v1.CallService/"
# A retry waits for at least half an hour: a call that failed once stays ready meanwhile.
SLOW_RETRIES = RetryPolicy(base=3600.0, cap=3600.0)
BOUND = 30.0  # far below the Wait's own limit (60 s)


def by_function(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
    if request.function == "slow":
        return raised("TimeoutError", "took too long", Status.TIMEOUT)
    if request.function == "refuse":
        return raised("ValueError", "never valid", Status.INVALID_ARGUMENT)
    if request.function == "give_up":
        return raised("PermanentError", "no", Status.PERMANENT_ERROR)
    return returned(values.from_any(request.input) if request.HasField("input") else None)


async def wait(h: Harness, dispatch_id: str, **fields: Any) -> calls_pb2.CallInfo:
    """A Wait, which must be answered well before its own limit."""
    answer = h.rpc(
        CALLS + "Wait",
        calls_pb2.WaitRequest(dispatch_id=dispatch_id, **fields),
        calls_pb2.WaitResponse,
    )
    try:
        return (await asyncio.wait_for(answer, BOUND)).call
    except (TimeoutError, asyncio.TimeoutError):
        raise AssertionError(f"Wait {fields} not answered within {BOUND} s") from None


def test_wait_answers_on_a_failed_attempt_with_its_status_error_and_next_time(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[calls_pb2.CallInfo, ...]:
        async with harness(tmp_path, by_function, policy=SLOW_RETRIES) as h:
            (dispatch_id,) = await h.dispatch(call("slow", {"n": 1}))
            retrying = await wait(h, dispatch_id, attempts_seen=0)
            got = await h.rpc(
                CALLS + "Get", calls_pb2.GetRequest(dispatch_id=dispatch_id), calls_pb2.GetResponse
            )
            listed = await h.rpc(
                CALLS + "List", calls_pb2.ListRequest(function="slow"), calls_pb2.ListResponse
            )
            return retrying, got.call, listed.calls[0]

    retrying, got, listed = asyncio.run(scenario())
    assert (retrying.done, retrying.state, retrying.attempts) == (False, "ready", 1)
    # Not final: the call's status stays unset; the attempt's is reported beside it.
    assert retrying.status == Status.UNSPECIFIED
    assert retrying.last_status == Status.TIMEOUT
    assert (retrying.error.type, retrying.error.message) == ("TimeoutError", "took too long")
    assert retrying.ready_at.ToSeconds() >= retrying.created_at.ToSeconds() + 1800
    assert values.from_any(retrying.input) == {"n": 1}
    assert got == retrying
    # List leaves the input out (its pages stay small); the rest is the same.
    assert not listed.HasField("input")
    assert listed.last_status == Status.TIMEOUT


def test_a_done_call_has_its_final_status_as_its_latest_and_no_next_attempt(
    tmp_path: Path,
) -> None:
    async def scenario() -> calls_pb2.CallInfo:
        async with harness(tmp_path, by_function) as h:
            (dispatch_id,) = await h.dispatch(call("refuse", "x"))
            # Answered once the call is done, however many attempts it has seen.
            return await wait(h, dispatch_id, attempts_seen=5)

    info = asyncio.run(scenario())
    assert (info.done, info.status, info.last_status) == (
        True,
        Status.INVALID_ARGUMENT,
        Status.INVALID_ARGUMENT,
    )
    assert not info.HasField("ready_at")
    assert values.from_any(info.input) == "x"


def test_list_by_final_status_newest_first_a_page_at_a_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, by_function, policy=SLOW_RETRIES) as h:
            ids = {}
            for function in ("greet", "refuse", "give_up", "greet", "slow"):
                (ids[len(ids)],) = await h.dispatch(call(function, "x"))
            for n in range(4):
                await h.done(ids[n])
            await wait(h, ids[4], attempts_seen=0)  # failed once, waiting for its retry

            async def listed(**fields: Any) -> list[str]:
                found, token = [], ""
                while True:
                    page = await h.rpc(
                        CALLS + "List",
                        calls_pb2.ListRequest(page_size=2, page_token=token, **fields),
                        calls_pb2.ListResponse,
                    )
                    found += [c.dispatch_id for c in page.calls]
                    if not (token := page.next_page_token):
                        return found

            assert await listed(status="OK") == [ids[0], ids[3]]
            assert await listed(status="OK", newest_first=True) == [ids[3], ids[0]]
            assert await listed(status="failed") == [ids[1], ids[2]]
            assert await listed(status="INVALID_ARGUMENT") == [ids[1]]
            assert await listed(status="invalid_argument") == [ids[1]]  # any case
            assert await listed(status="Failed") == [ids[1], ids[2]]
            # Its latest attempt timed out, but the call is not done: no final status.
            assert await listed(status="TIMEOUT") == []
            assert await listed(newest_first=True) == [ids[n] for n in (4, 3, 2, 1, 0)]

            status, body = await h.post(
                CALLS + "List",
                b'{"status": "BROKEN"}',
                content_type="application/json",
            )
            assert status == 400
            error = json.loads(body)
            assert error["code"] == "invalid_argument"
            assert "invalid status 'BROKEN'" in error["message"]
            assert "OK, TIMEOUT" in error["message"]
            assert "failed" in error["message"]

    asyncio.run(scenario())
