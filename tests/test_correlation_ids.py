"""Correlation ids are uint64 (the protocol's type): every value, 2^63 and above
included, is accepted at Dispatch and comes back whole in the results a Poll's parent is
resumed with, on the embedded SQLite store (whose INTEGER is signed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dispatchlet.core import values
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.http_caller import Outcome
from scheduler_harness import call, harness, returned

EDGES = [0, 2**63 - 1, 2**63, 2**64 - 1]
BOUND = 60.0


def test_dispatch_stores_every_uint64_correlation_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            ids = await h.dispatch(*[call("f", correlation_id=c) for c in EDGES])
            assert len(ids) == len(EDGES)
            stored = [await h.store.get(i) for i in ids]
            assert [c.correlation_id if c else None for c in stored] == EDGES
            assert [c.correlation_id for c in await h.store.list()] == EDGES
            got = await h.rpc(
                "/dispatchlet.scheduler.v1.CallService/Get",
                calls_pb2.GetRequest(dispatch_id=ids[-1]),
                calls_pb2.GetResponse,
            )
            assert got.call.function == "f"

    asyncio.run(scenario())


def test_a_poll_of_children_with_uint64_ids_resumes_its_parent_once(tmp_path: Path) -> None:
    runs: dict[str, int] = {}

    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        runs[request.function] = runs.get(request.function, 0) + 1
        if request.function == "child":
            return returned(None)
        if request.HasField("poll_result"):
            got = sorted(r.correlation_id for r in request.poll_result.results)
            return returned(" ".join(str(c) for c in got))
        response = function_pb2.RunResponse(status=Status.OK.value)
        response.poll.coroutine_state = b"state"
        response.poll.min_results = response.poll.max_results = len(EDGES)
        for correlation_id in EDGES:
            response.poll.calls.add(function="child", correlation_id=correlation_id)
        return Outcome(Status.OK, response)

    async def scenario() -> None:
        async with harness(tmp_path, answer) as h:
            (parent,) = await h.dispatch(call("parent"))
            done = await h.done(parent, timeout=BOUND)
            assert done.status == Status.OK, done
            output = call_pb2.CallResult.FromString(done.result).output
            assert values.from_any(output) == " ".join(str(c) for c in EDGES)

    asyncio.run(scenario())
    # Run once, resumed once: the Poll was recorded the first time.
    assert runs == {"parent": 2, "child": len(EDGES)}
