"""What List costs: summaries without inputs, outputs or workflow state (Get gives one
call whole), each filter read from an index in creation order, and reads that run on
connections of their own beside the SQLite store's writer."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.cli.call_views import table, unlisted_result
from dispatchlet.client import CallError, CallInfo
from dispatchlet.core import values
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.store import LISTED_ERROR_BYTES, NewCall, State
from dispatchlet.scheduler.store.sqlite import SQL, SQLiteStore
from google.protobuf import json_format
from scheduler_harness import call, harness, raised, returned

LIST = "/dispatchlet.scheduler.v1.CallService/List"
GET = "/dispatchlet.scheduler.v1.CallService/Get"
BIG = 200_000  # bytes of an input and of an output
PROTO, JSON = "application/proto", "application/json"


def test_list_answers_summaries_and_get_the_whole_call(tmp_path: Path) -> None:
    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        if request.function == "big":
            return returned("o" * BIG)
        if request.function == "huge_error":
            return raised("ValueError", "e" * (LISTED_ERROR_BYTES + 1), Status.PERMANENT_ERROR)
        return raised("ValueError", "bad input", Status.PERMANENT_ERROR)

    async def scenario() -> None:
        async with harness(tmp_path, answer) as h:
            ids = await h.dispatch(
                call("big", "i" * BIG), call("bad", "i" * BIG), call("huge_error", "x")
            )
            for dispatch_id in ids:
                await h.done(dispatch_id)
            for content_type, request in ((PROTO, b""), (JSON, b"{}")):
                status, body = await h.post(LIST, request, content_type=content_type)
                assert status == 200, body
                # A page of summaries is small, whatever its calls hold.
                assert len(body) < 4096, len(body)
                listed = parsed(body, content_type, calls_pb2.ListResponse())
                big, bad, huge = listed.calls
                assert [c.dispatch_id for c in listed.calls] == ids
                assert not any(c.HasField("input") or c.HasField("output") for c in listed.calls)
                assert (big.status, big.done) == (Status.OK.value, True)
                # A failed call's error is in its summary, when it is small.
                assert (bad.error.type, bad.error.message) == ("ValueError", "bad input")
                assert not huge.HasField("error")
                assert huge.status == Status.PERMANENT_ERROR.value
            # Get has the whole call.
            whole = await h.rpc(
                GET, calls_pb2.GetRequest(dispatch_id=ids[0]), calls_pb2.GetResponse
            )
            assert values.from_any(whole.call.input) == "i" * BIG
            assert values.from_any(whole.call.output) == "o" * BIG
            huge_call = await h.rpc(
                GET, calls_pb2.GetRequest(dispatch_id=ids[2]), calls_pb2.GetResponse
            )
            assert huge_call.call.error.message == "e" * (LISTED_ERROR_BYTES + 1)

    asyncio.run(scenario())


def parsed(body: bytes, content_type: str, kind: Any) -> Any:
    if content_type == PROTO:
        kind.ParseFromString(body)
    else:
        json_format.Parse(body, kind)
    return kind


# Each of List's filters, alone and with another, in both orders, with a cursor or not.
FILTERS: list[dict[str, Any]] = [
    {},
    {"state": "done"},
    {"state": "ready"},
    {"state": "waiting"},
    {"function": "f"},
    {"root_id": "r"},
    {"status": 7},
    {"failed": True},
    {"state": "done", "function": "f"},
    {"failed": True, "function": "f"},
    {"status": 1, "root_id": "r"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
@pytest.mark.parametrize("newest_first", [True, False], ids=["newest", "oldest"])
@pytest.mark.parametrize("after", [None, "x"], ids=["first", "next"])
def test_each_list_filter_reads_an_index_in_creation_order(
    tmp_path: Path, filters: dict[str, Any], newest_first: bool, after: str | None
) -> None:
    """A page is a range of one index, in the order asked for: no scan of the table, no
    sort of what matched (at 200k calls, a sort of every match is what made a List
    cost 30 ms on the store's thread)."""
    path = tmp_path / "plans.db"
    asyncio.run(_opened_and_closed(path))
    arguments: dict[str, Any] = {
        "state": None,
        "function": None,
        "root_id": None,
        "status": None,
        "failed": False,
        "newest_first": newest_first,
        "after": after,
        "limit": 100,
        **filters,
    }
    query, params = SQL.list(**arguments)
    plan = query_plan(path, query, params)
    main = [step for step in plan if step.startswith(("SCAN calls", "SEARCH calls"))]
    assert not [step for step in plan if "TEMP B-TREE" in step], plan
    assert main, plan
    if filters:
        assert main[0].startswith("SEARCH calls USING INDEX calls_list_"), plan
    else:  # in rowid order: the table is the index
        assert main[0] in (
            "SCAN calls",
            "SEARCH calls USING INTEGER PRIMARY KEY (rowid<?)",
            "SEARCH calls USING INTEGER PRIMARY KEY (rowid>?)",
        ), plan


def test_claims_keep_to_their_own_indexes(tmp_path: Path) -> None:
    """List's indexes filter on a state too; a claim must not take them for its own."""
    path = tmp_path / "plans.db"
    asyncio.run(_opened_and_closed(path))
    params = {"now": 1.0, "window": 10, "roots": 10, "count": 10}
    for query in (SQL.ranked_window, SQL.root_heads):
        plan = query_plan(path, query, params)
        assert not [step for step in plan if "calls_list_" in step], plan


async def _opened_and_closed(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.close()


def query_plan(path: Path, query: str, params: dict[str, Any]) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {query}", params)]
    finally:
        db.close()


def test_reads_answer_while_the_writer_waits(tmp_path: Path) -> None:
    """Get and List run on read-only connections of their own: while the store's
    writer waits for a lock (here: another connection's write transaction), they answer,
    and see what was committed."""
    path = tmp_path / "scheduler.db"

    async def scenario() -> None:
        store = await SQLiteStore.open(path)
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            (committed,) = await store.dispatch([new_call("before")], now=1.0)
            blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
            writing = asyncio.create_task(store.dispatch([new_call("blocked")], now=2.0))
            for _ in range(10):  # the write is handed to the writer's thread first
                await asyncio.sleep(0)
            reading = asyncio.ensure_future(
                asyncio.gather(store.list(function="before"), store.get(committed))
            )
            done, _ = await asyncio.wait(
                {writing, reading}, timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            assert reading in done, "the reads waited for the writer"
            assert not writing.done()
            listed, got = reading.result()
            assert [c.dispatch_id for c in listed] == [committed]
            assert got is not None
            assert got.function == "before"
            blocker.execute("COMMIT")
            assert len(await asyncio.wait_for(writing, 60)) == 1
            # What the writer committed, the readers see at once.
            assert [c.function for c in await store.list(newest_first=True)] == [
                "blocked",
                "before",
            ]
            assert [c.state for c in await store.list(state=State.READY)] == [State.READY] * 2
        finally:
            blocker.close()
            await store.close()

    asyncio.run(scenario())


def new_call(function: str) -> NewCall:
    return NewCall(function, "http://127.0.0.1:1", b"", 3600.0)


def test_a_list_page_in_json_carries_no_value(tmp_path: Path) -> None:
    """The JSON answer too: no base64 of an input or output in a page."""

    async def scenario() -> dict[str, Any]:
        async with harness(tmp_path, lambda e, r: returned("o" * BIG)) as h:
            (dispatch_id,) = await h.dispatch(call("big", "i" * BIG))
            await h.done(dispatch_id)
            status, body = await h.post(LIST, b"{}", content_type="application/json")
            assert status == 200, body
            answer: dict[str, Any] = json.loads(body)
            return answer

    (info,) = asyncio.run(scenario())["calls"]
    assert "input" not in info
    assert "output" not in info
    assert info["status"] == "STATUS_OK"


def summary(**fields: Any) -> CallInfo:
    """A call as List gives it."""
    moment = datetime.datetime(2026, 12, 5, tzinfo=datetime.timezone.utc)
    given: dict[str, Any] = {
        "dispatch_id": "d1",
        "function": "f",
        "endpoint": "http://e",
        "status": None,
        "done": False,
        "output": None,
        "error": None,
        "attempts": 1,
        "parent_dispatch_id": "",
        "root_dispatch_id": "d1",
        "created_at": moment,
        "finished_at": None,
        "expires_at": moment,
        "state": "ready",
        **fields,
    }
    return CallInfo(**given)


def test_the_calls_table_points_at_an_error_too_large_to_list() -> None:
    shown = summary(done=True, state="done", status=Status.PERMANENT_ERROR, error=None)
    small = summary(
        dispatch_id="d2",
        done=True,
        state="done",
        status=Status.PERMANENT_ERROR,
        error=CallError("ValueError", "bad"),
    )
    ok = summary(dispatch_id="d3", done=True, state="done", status=Status.OK)
    _, large_row, small_row, ok_row = table([shown, small, ok])
    assert large_row.endswith("(see: dispatchlet calls show d1)")
    assert small_row.endswith("ValueError: bad")
    assert ok_row.endswith("f")
    # What `calls list --json` fetches whole: an output, or an error left out.
    assert [unlisted_result(c) for c in (shown, small, ok)] == [True, False, True]


def test_list_answers_the_calls_created_within_a_time_range(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            ids = []
            for n in range(4):
                ids += await h.dispatch(call("f", n))
            created = {}
            for dispatch_id in ids:
                found = await h.store.get(dispatch_id)
                assert found is not None
                created[dispatch_id] = found.created_at
            since, until = calls_pb2.ListRequest(), calls_pb2.ListRequest()
            # Just below the second call's time, and after the first's: a whole
            # microsecond below it, more than a float of these times' spacing (0.24 us)
            # can round the bound back above it (the calls are dispatched one by one, far
            # more than that apart).
            at = (math.floor(created[ids[1]] * 1e6) - 1) * 1000
            since.created_after.FromNanoseconds(at)
            until.created_before.FromNanoseconds(at)
            bound = since.created_after.seconds + since.created_after.nanos / 1e9

            async def listed(request: calls_pb2.ListRequest) -> list[str]:
                answer = await h.rpc(LIST, request, calls_pb2.ListResponse)
                return [c.dispatch_id for c in answer.calls]

            after = await listed(since)
            assert after == [i for i in ids if created[i] >= bound]
            assert ids[1] in after
            before = await listed(until)
            assert before == [i for i in ids if created[i] < bound]
            assert ids[1] not in before
            # As JSON, a time in RFC 3339.
            status, body = await h.post(
                LIST, b'{"createdAfter": "2000-01-01T00:00:00Z"}', content_type=JSON
            )
            assert status == 200, body
            answer = parsed(body, JSON, calls_pb2.ListResponse())
            assert [c.dispatch_id for c in answer.calls] == ids

    asyncio.run(scenario())
