"""The overview (``CallService/Overview``, ``Client.overview``, ``dispatchlet calls
stats``) of a scheduler in this process, after calls that succeeded, failed and were
retried."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from dispatchlet import Client
from dispatchlet.client.overview import Overview
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.concurrency import Limiter
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.overview import DESTINATIONS, overview_message
from dispatchlet.scheduler.store import Finished, QueueStats
from scheduler_harness import API_KEY, ENDPOINT, Answer, Harness, call, harness, raised, returned

OVERVIEW = "/dispatchlet.scheduler.v1.CallService/Overview"


def answers() -> Answer:
    """``ok`` returns, ``fails`` raises (a permanent error), ``flaky`` fails once with a
    temporary error and then returns."""
    failed: set[str] = set()

    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        if request.function == "fails":
            return raised("ValueError", "no", Status.PERMANENT_ERROR)
        if request.function == "flaky" and request.dispatch_id not in failed:
            failed.add(request.dispatch_id)
            return raised("ConnectionError", "later", Status.TEMPORARY_ERROR)
        return returned("done")

    return answer


async def finished_calls(h: Harness) -> None:
    ids = await h.dispatch(call("ok"), call("ok"), call("fails"), call("flaky"))
    for dispatch_id in ids:
        await h.done(dispatch_id)


def test_the_overview_counts_the_last_hours_calls_and_the_queue(tmp_path: Path) -> None:
    async def scenario() -> tuple[calls_pb2.OverviewResponse, Overview, dict[str, object]]:
        async with harness(tmp_path, answers()) as h:
            await finished_calls(h)
            answer = await h.rpc(OVERVIEW, calls_pb2.OverviewRequest(), calls_pb2.OverviewResponse)
            client = Client(h.url, API_KEY)
            try:
                overview = await asyncio.to_thread(client.overview)
            finally:
                client.close()
            # The dashboard reads it as JSON.
            status, body = await h.post(OVERVIEW, b"{}", content_type="application/json")
            assert status == 200, body
            return answer, overview, json.loads(body)

    answer, overview, as_json = asyncio.run(scenario())
    by_function = {f.function: (f.calls, f.failed) for f in answer.functions}
    assert by_function == {"ok": (2, 0), "fails": (1, 1), "flaky": (1, 0)}
    statuses: dict[int, int] = {}
    for minute in answer.finished:
        statuses[minute.status] = statuses.get(minute.status, 0) + minute.count
    assert statuses == {Status.OK.value: 3, Status.PERMANENT_ERROR.value: 1}
    assert list(answer.most_failing) == ["fails"]
    assert sorted(answer.slowest) == ["fails", "flaky", "ok"]
    assert answer.window.seconds == 3600
    assert (answer.queue.ready, answer.queue.running, answer.queue.waiting) == (0, 0, 0)
    (destination,) = answer.destinations
    assert destination.destination == ENDPOINT
    assert destination.limit >= 1
    assert destination.in_flight == 0
    # The client's values are the RPC's.
    assert [(f.function, f.calls, f.failed) for f in overview.functions] == [
        (f.function, f.calls, f.failed) for f in answer.functions
    ]
    assert all(0 <= f.p50 <= f.p99 for f in overview.functions)
    assert sum(m.count for m in overview.finished if m.status is Status.OK) == 3
    assert overview.most_failing == ("fails",)
    assert overview.window == 3600
    assert as_json["mostFailing"] == ["fails"]


def test_the_overview_shows_the_calls_waiting_for_a_claim(tmp_path: Path) -> None:
    async def scenario() -> calls_pb2.OverviewResponse:
        async with harness(tmp_path, running=False) as h:
            await h.dispatch(call("a"), call("b"))
            return await h.rpc(OVERVIEW, calls_pb2.OverviewRequest(), calls_pb2.OverviewResponse)

    answer = asyncio.run(scenario())
    assert (answer.queue.ready, answer.queue.scheduled, answer.queue.running) == (2, 0, 0)
    assert answer.queue.oldest_ready_age.ToNanoseconds() >= 0
    assert list(answer.functions) == []
    assert list(answer.destinations) == []


def test_the_last_hour_is_read_once_in_a_while(tmp_path: Path) -> None:
    """However often overviews are asked (a dashboard's refreshes), the calls finished in
    the hour are read from the store at most once every few seconds."""

    async def scenario() -> list[int]:
        async with harness(tmp_path) as h:
            counts = []
            for ttl in (3600.0, 3600.0, 0.0):
                h.api.recent.ttl = ttl
                (dispatch_id,) = await h.dispatch(call("f"))
                await h.done(dispatch_id)
                answer = await h.rpc(
                    OVERVIEW, calls_pb2.OverviewRequest(), calls_pb2.OverviewResponse
                )
                counts.append(sum(f.calls for f in answer.functions))
            return counts

    # The second overview is given the first one's reading; the third reads again.
    assert asyncio.run(scenario()) == [1, 1, 3]


def test_the_overview_needs_the_api_key(tmp_path: Path) -> None:
    async def scenario() -> int:
        async with harness(tmp_path, running=False) as h:
            status, _ = await h.post(OVERVIEW, b"", key="wrong")
            return status

    assert asyncio.run(scenario()) == 401


async def stats_command(h: Harness, *args: str, key: str = API_KEY) -> tuple[int, str, str]:
    """``dispatchlet calls stats ARGS`` against the harness's scheduler."""
    env = {**os.environ, "DISPATCH_API_URL": h.url, "DISPATCH_API_KEY": key}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatchlet",
        "calls",
        "stats",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
def test_calls_stats_prints_the_overview(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, str, str]]:
        async with harness(tmp_path, answers()) as h:
            await finished_calls(h)
            return [
                await stats_command(h),
                await stats_command(h, "--json"),
                await stats_command(h, key="wrong"),
            ]

    (code, text, _), (json_code, as_json, _), (refused, _, error) = asyncio.run(scenario())
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == "queue: 0 ready, 0 scheduled, 0 running, 0 waiting"
    assert lines[1] == "finished in the last 1h00m: 4 (3 OK, 1 PERMANENT_ERROR)"
    table = [line.split() for line in lines if line.split()[:1] in (["ok"], ["fails"])]
    assert [row[:3] for row in table] == [["ok", "2", "0"], ["fails", "1", "1"]]
    assert "most failing: fails (1 of 1)" in lines
    assert any(line.split()[:1] == [ENDPOINT] for line in lines), text
    assert json_code == 0
    found = json.loads(as_json)
    assert {f["function"]: f["calls"] for f in found["functions"]} == {
        "ok": 2,
        "fails": 1,
        "flaky": 1,
    }
    assert sum(m["count"] for m in found["finished"] if m["status"] == "OK") == 3
    assert found["queue"]["ready"] == 0
    assert refused == 2
    assert "unauthenticated" in error


def test_the_overview_tells_of_the_busiest_destinations_first_and_at_most_a_hundred() -> None:
    limiter = Limiter()
    for n in range(DESTINATIONS + 5):
        limiter.release(f"http://host{n:03d}", Status.OK)  # seen, nothing in flight
    assert limiter.acquire("http://host104") is not None
    none = Finished(per_minute=(), functions=())
    queue = QueueStats(ready=0, scheduled=0, running=0, waiting=0, oldest_ready=None)
    answer = overview_message(0.0, none, queue, limiter)
    assert len(answer.destinations) == DESTINATIONS
    assert (answer.destinations[0].destination, answer.destinations[0].in_flight) == (
        "http://host104",
        1,
    )
    assert answer.destinations[1].destination == "http://host000"
