"""Call trees are bounded, and large ones end in batches (on SQLite, through the API):
a fork bomb stops at the bound on calls below its root, a Poll beyond the bound on a
call's unfinished children ends that call, each with an error naming the limit; a
cancelled tree ends at once for the call and the first batch, then a batch at a time,
while Get keeps answering."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.store import END_BATCH, NewCall, Store
from scheduler_harness import ENDPOINT, Harness, call, harness, returned
from support import EndpointServer

BOUND = 60.0
CALLS = "/dispatchlet.scheduler.v1.CallService/"


def polling(width: int) -> function_pb2.RunResponse:
    """A run's answer: a Poll of ``width`` calls to ``bomb``, resumed once all are done."""
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.poll.coroutine_state = b"state"
    response.poll.min_results = response.poll.max_results = width
    for n in range(width):
        response.poll.calls.add(function="bomb", correlation_id=n)
    return response


def fork_bomb(width: int) -> object:
    """Each run of ``bomb`` polls ``width`` more; a resume returns."""

    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        if request.HasField("poll_result"):
            return returned("resumed")
        return Outcome(Status.OK, polling(width))

    return answer


def error_of(result: bytes) -> tuple[str, str]:
    error = call_pb2.CallResult.FromString(result).error
    return error.type, error.message


async def tree_of(h: Harness, root: str) -> list[object]:
    return list(await h.store.list(root_id=root, limit=100_000))


def test_a_fork_bomb_stops_at_the_bound_on_descendants_with_an_error_naming_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, fork_bomb(4)) as h:  # type: ignore[arg-type]
            h.engine.max_descendants = 30
            (root,) = await h.dispatch(call("bomb"))
            done = await h.done(root, timeout=BOUND)
            assert done.status == Status.OK  # resumed with its children's outcomes
            calls = await h.store.list(root_id=root, limit=1000)
            # 4 + 16 below the root, then 2 of 16 grandchildren's Polls fit: 28 of 30;
            # the other 14 grandchildren and the 8 calls below the 2 are refused.
            assert len(calls) - 1 == 28
            assert all(c.done for c in calls)
            refused = [c for c in calls if c.status == Status.INVALID_RESPONSE]
            assert len(refused) == 14 + 8
            for c in refused:
                kind, message = error_of(c.result)
                assert kind == "TreeLimitExceeded"
                assert message == (
                    "a Poll of 4 calls would make its call tree 32 calls below its root "
                    "(28 already): at most 30 (--max-descendants)"
                )

    asyncio.run(scenario())


def test_a_poll_beyond_the_bound_on_children_ends_its_call_naming_it(tmp_path: Path) -> None:
    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        return Outcome(Status.OK, polling(6))

    async def scenario() -> None:
        async with harness(tmp_path, answer) as h:
            h.engine.max_children = 5
            (root,) = await h.dispatch(call("wide"))
            done = await h.done(root, timeout=BOUND)
            assert done.status == Status.INVALID_RESPONSE
            assert error_of(done.result) == (
                "TreeLimitExceeded",
                "a Poll of 6 calls would leave the call 6 unfinished children (0 already): "
                "at most 5 (--max-children)",
            )
            # Refused whole: none of its calls was stored.
            assert [c.dispatch_id for c in await h.store.list(root_id=root)] == [root]

    asyncio.run(scenario())


async def stored_tree(store: Store, widths: list[int], now: float) -> tuple[str, list[str]]:
    """A root and its descendants, ``widths`` wide at each level, stored as of ``now``."""

    def new(parent: str | None, root: str | None) -> NewCall:
        return NewCall("node", ENDPOINT, b"", now + 3600, parent_id=parent, root_id=root)

    (root,) = await store.dispatch([new(None, None)], now=now)
    level, below = [root], []
    for width in widths:
        made: list[str] = []
        for parent in level:
            made += await store.dispatch([new(parent, root)] * width, now=now)
        below += made
        level = made
    return root, below


def test_get_answers_while_a_cancelled_tree_is_still_ending(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            # Ready an hour from now: the engine runs none of them meanwhile.
            root, below = await stored_tree(h.store, [4, 500], time.time() + 3600)
            cancelled = await h.rpc(
                CALLS + "Cancel",
                calls_pb2.CancelRequest(dispatch_id=root),
                calls_pb2.CancelResponse,
            )
            # The call and the first batch; the rest is still to end.
            assert cancelled.cancelled == 1 + END_BATCH
            got = await h.rpc(
                CALLS + "Get", calls_pb2.GetRequest(dispatch_id=below[-1]), calls_pb2.GetResponse
            )
            assert not got.call.done
            # An engine ends the rest, a batch at a time (this one never saw the cancel:
            # as a process started after the one that answered it stopped).
            engine = asyncio.create_task(h.engine.run())
            try:
                deadline = time.monotonic() + BOUND
                while any(not c.done for c in await h.store.list(root_id=root, limit=3000)):
                    assert time.monotonic() < deadline, "the cancelled tree never all ended"
                    await asyncio.sleep(0.05)
            finally:
                h.engine.stop()
                await asyncio.wait_for(engine, BOUND)
            for dispatch_id in below:
                found = await h.store.get(dispatch_id)
                assert found is not None
                assert found.status == Status.PERMANENT_ERROR
                assert error_of(found.result) == ("Cancelled", "the call was cancelled")

    asyncio.run(scenario())


class _Endpoint(http.server.BaseHTTPRequestHandler):
    """Answers every first run with a Poll: 4 calls for ``wide``, 2 for ``bomb`` (each
    of its calls a ``bomb`` again); a resume returns."""

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        request = function_pb2.RunRequest.FromString(self.rfile.read(size))
        if request.HasField("poll_result"):
            response = returned("resumed").response
            assert response is not None
        else:
            response = polling(4 if request.function == "wide" else 2)
        body = response.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post(url: str, body: dict[str, object]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=BOUND) as answer:
        found: dict[str, Any] = json.loads(answer.read())
        return found


@pytest.mark.slow
def test_the_scheduler_command_bounds_call_trees_as_its_flags_say(tmp_path: Path) -> None:
    endpoint = EndpointServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "dispatchlet"),
        *("scheduler", "--insecure", "--db", str(tmp_path / "s.db"), "--port", str(port)),
        *("--max-children", "3", "--max-descendants", "5", "--log-level", "warning"),
    ]
    scheduler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + BOUND
        while True:
            try:
                urllib.request.urlopen(api + "/healthz", timeout=5).close()
                break
            except OSError:
                assert scheduler.poll() is None, "the scheduler exited"
                assert time.monotonic() < deadline, "the scheduler did not start"
                time.sleep(0.1)
        target = f"http://127.0.0.1:{endpoint.server_address[1]}"
        dispatched = _post(
            api + "/dispatch.sdk.v1.DispatchService/Dispatch",
            {"calls": [{"function": f, "endpoint": target} for f in ("wide", "bomb")]},
        )
        wide, bomb = dispatched["dispatchIds"]
        infos = {}
        for dispatch_id in (wide, bomb):
            while True:
                info = _post(api + CALLS + "Wait", {"dispatchId": dispatch_id, "timeout": "5s"})
                if info["call"].get("done"):
                    infos[dispatch_id] = info["call"]
                    break
                assert time.monotonic() < deadline + BOUND, f"{dispatch_id} never ended"
        assert infos[wide]["status"] == "STATUS_INVALID_RESPONSE"
        assert infos[wide]["error"]["message"].endswith("at most 3 (--max-children)")
        # 2 below the root, then one of their Polls (4 of 5); the other (6), and those
        # of the 2 calls the first made, are refused.
        assert infos[bomb]["status"] == "STATUS_OK"
        listed = _post(api + CALLS + "List", {"rootDispatchId": bomb, "pageSize": 100})
        assert len(listed["calls"]) == 1 + 4
        refused = [c for c in listed["calls"] if c.get("status") == "STATUS_INVALID_RESPONSE"]
        assert len(refused) == 3
        for info in refused:
            assert info["error"]["message"].endswith("at most 5 (--max-descendants)")
    finally:
        scheduler.terminate()
        scheduler.wait(BOUND)
        endpoint.shutdown()
