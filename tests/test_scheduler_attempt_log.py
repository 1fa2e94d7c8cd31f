"""The scheduler's line per attempt tells what the run came to: a function that raised
is logged with its status and error, not as the transport's OK."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler.http_caller import Outcome
from scheduler_harness import call, harness, raised, returned


def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
    if request.function == "refuse":
        return raised(
            "ValueError", "never valid\nsecond line " + "x" * 500, Status.INVALID_ARGUMENT
        )
    if request.function == "unreachable":
        return Outcome(Status.TCP_ERROR, error_type="ConnectionRefusedError", message="refused")
    if request.function == "bad_poll":
        response = function_pb2.RunResponse(status=Status.OK.value)
        response.poll.min_results, response.poll.max_results = 2, 1
        return Outcome(Status.OK, response)
    return returned("fine")


def attempts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    async def scenario() -> None:
        async with harness(tmp_path, answer) as h:
            ids = await h.dispatch(
                call("greet"),
                call("refuse"),
                call("bad_poll"),
                call("unreachable", expiration={"seconds": 1}),
            )
            for dispatch_id in ids:
                await h.done(dispatch_id)

    with caplog.at_level(logging.INFO, logger="dispatchlet.scheduler"):
        asyncio.run(scenario())
    lines = [r for r in caplog.records if r.getMessage().startswith("attempt ")]
    return {r.function: r for r in lines}  # type: ignore[attr-defined]


def test_each_attempt_is_logged_with_its_runs_status_and_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logged = attempts(tmp_path, caplog)

    ok = logged["greet"]
    assert ok.status == "OK"  # type: ignore[attr-defined]
    assert not hasattr(ok, "error_type")
    assert ok.getMessage().endswith(" ms")

    refused = logged["refuse"]
    # The endpoint answered 200 with a RunResponse: the run's status is what counts.
    assert refused.status == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert refused.error_type == "ValueError"  # type: ignore[attr-defined]
    assert refused.error_message == "never valid"  # type: ignore[attr-defined]
    assert ": INVALID_ARGUMENT in " in refused.getMessage()
    assert refused.getMessage().endswith(" ms (ValueError: never valid)")
    # The fields that were there before stay.
    assert refused.attempt == 1  # type: ignore[attr-defined]
    assert refused.duration_ms >= 0  # type: ignore[attr-defined]

    # What the scheduler made of the answer: an invalid Poll ends the call.
    bad = logged["bad_poll"]
    assert bad.status == "INVALID_RESPONSE"  # type: ignore[attr-defined]
    assert bad.error_type == "InvalidPoll"  # type: ignore[attr-defined]
    assert "min_results must be 1 to max_results" in bad.error_message  # type: ignore[attr-defined]

    unreachable = logged["unreachable"]
    assert unreachable.status == "TCP_ERROR"  # type: ignore[attr-defined]
    assert unreachable.getMessage().endswith("(ConnectionRefusedError: refused)")
