"""A Wait is woken by the outcome of its call, never by reading the store on a timer:
an end or a retry recorded by this process (an attempt, a cancel through the API, the
end of an ancestor), or, on PostgreSQL, by another process (LISTEN/NOTIFY); a Wait
whose client went away stops."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler import server
from dispatchlet.scheduler.api import Api
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.settings import Settings
from dispatchlet.scheduler.store import END_BATCH, Call, NewCall
from dispatchlet.scheduler.store.memory import MemoryStore
from support import EndpointServer

BOUND = 60.0  # how long anything may take before the test fails, whatever the load
WAIT = "/dispatchlet.scheduler.v1.CallService/Wait"
WAIT_MANY = "/dispatchlet.scheduler.v1.CallService/WaitMany"


class CountingStore(MemoryStore):
    """The memory store, counting the reads of one call."""

    reads = 0

    async def get(self, dispatch_id: str) -> Call | None:
        self.reads += 1
        return await super().get(dispatch_id)


class Gated:
    """Endpoints whose functions answer once ``opened`` is set; ``parent`` polls a
    ``stuck`` child for at most a second and then returns."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.started: set[str] = set()

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        self.started.add(request.dispatch_id)
        response = function_pb2.RunResponse(status=Status.OK.value)
        if request.function == "parent" and not request.HasField("poll_result"):
            poll = response.poll
            poll.calls.add(function="stuck", endpoint=endpoint)
            poll.min_results = 1
            poll.max_results = 1
            poll.max_wait.FromSeconds(1)
            return Outcome(Status.OK, response)
        if request.function != "parent":
            await self.opened.wait()
        response.exit.result.output.type_url = "test/ok"
        return Outcome(Status.OK, response)

    async def close(self) -> None:
        pass


async def until(condition: Any, what: str, bound: float = BOUND) -> None:
    """Wait (bounded) for ``condition()`` to hold."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {bound} s"
        await asyncio.sleep(0.01)


def waiting(engine: Engine) -> int:
    return sum(len(events) for events in engine._watchers.values())


def wait_request(dispatch_id: str, seconds: int = 60) -> calls_pb2.WaitRequest:
    request = calls_pb2.WaitRequest(dispatch_id=dispatch_id)
    request.timeout.FromSeconds(seconds)
    return request


@contextlib.asynccontextmanager
async def scheduler(store: MemoryStore) -> Any:
    caller = Gated()
    engine = Engine(store, caller, idle_interval=0.01)
    task = asyncio.create_task(engine.run())
    try:
        yield engine, caller, Api(store, engine, insecure=True)
    finally:
        caller.opened.set()
        engine.stop()
        await asyncio.wait_for(task, BOUND)
        await store.close()


@pytest.mark.slow
def test_many_waiters_do_not_read_the_store_until_their_calls_end() -> None:
    waiters = 2000

    async def scenario() -> None:
        store = await CountingStore.open()
        async with scheduler(store) as (engine, caller, api):
            now = time.time()
            ids = await store.dispatch(
                [NewCall("gated", "http://endpoint.test", b"", now + 3600)] * waiters, now=now
            )
            waits = [asyncio.create_task(api.wait(wait_request(i))) for i in ids]
            await until(lambda: waiting(engine) == waiters, "every Wait watching")
            store.reads = 0
            await asyncio.sleep(2.5)  # long enough for a poll every second to show
            assert store.reads == 0, f"{store.reads} reads of the store by idle waiters"
            caller.opened.set()
            answers = await asyncio.wait_for(asyncio.gather(*waits), BOUND)
            assert all(answer.message().call.done for answer in answers)
            assert all(answer.message().call.status == Status.OK.value for answer in answers)
            # One read at the start, one when woken (a retry would add one).
            assert store.reads <= 2 * waiters

    asyncio.run(scenario())


async def tree(store: MemoryStore, children: int) -> tuple[str, list[str]]:
    """A root call and ``children`` children of it, none run yet (``gated``)."""
    now = time.time()
    (root,) = await store.dispatch(
        [NewCall("gated", "http://endpoint.test", b"", now + 3600)], now=now
    )
    below = NewCall("gated", "http://endpoint.test", b"", now + 3600, parent_id=root, root_id=root)
    return root, await store.dispatch([below] * children, now=now)


def test_a_cancel_through_the_api_wakes_the_waiters_of_the_call_and_its_children() -> None:
    async def scenario() -> None:
        store = await CountingStore.open()
        async with scheduler(store) as (engine, _, api):
            root, (child,) = await tree(store, 1)
            waits = [asyncio.create_task(api.wait(wait_request(i))) for i in (root, child)]
            await until(lambda: waiting(engine) == 2, "both Waits watching")
            await api.cancel(calls_pb2.CancelRequest(dispatch_id=root))
            answers = await asyncio.wait_for(asyncio.gather(*waits), BOUND)
            for answer in answers:
                assert answer.message().call.done, answer
                assert answer.message().call.error.type == "Cancelled"

    asyncio.run(scenario())


def test_a_cancel_wakes_a_wait_many_of_a_call_and_its_child_for_both() -> None:
    async def scenario() -> None:
        store = await CountingStore.open()
        async with scheduler(store) as (engine, _, api):
            root, (child_id,) = await tree(store, 1)
            # Both asked for at once, answered once both are final: the root's end,
            # which ends its child in the same stroke, must have the child read again.
            request = calls_pb2.WaitManyRequest(dispatch_ids=[root, child_id], min_done=2)
            request.timeout.FromSeconds(55)
            many = asyncio.create_task(api.wait_many(request))
            await until(lambda: waiting(engine) == 2, "the WaitMany watching both")
            await api.cancel(calls_pb2.CancelRequest(dispatch_id=root))
            # Woken by the cancel, not answered by its own timeout (55 s, when it reads
            # every call again), however loaded the machine.
            answer = await asyncio.wait_for(many, 30.0)
            assert [(c.dispatch_id, c.done) for c in answer.calls] == [
                (root, True),
                (child_id, True),
            ]

    asyncio.run(scenario())


def test_descendants_ended_in_later_batches_wake_their_waiters() -> None:
    children = END_BATCH + 100  # more than a cancel ends at once

    async def scenario() -> None:
        store = await CountingStore.open()
        async with scheduler(store) as (engine, _, api):
            root, ids = await tree(store, children)
            waits = [asyncio.create_task(api.wait(wait_request(i))) for i in ids]
            await until(lambda: waiting(engine) == children, "every Wait watching")
            cancelled = await api.cancel(calls_pb2.CancelRequest(dispatch_id=root))
            assert cancelled.cancelled < children + 1  # the rest end after the answer
            answers = await asyncio.wait_for(asyncio.gather(*waits), BOUND)
            assert all(answer.message().call.done for answer in answers)
            assert {answer.message().call.error.type for answer in answers} == {"Cancelled"}

    asyncio.run(scenario())


def test_the_end_of_a_parent_wakes_the_waiter_of_the_child_it_ends() -> None:
    async def scenario() -> None:
        store = await CountingStore.open()
        async with scheduler(store) as (_, caller, api):
            now = time.time()
            (parent,) = await store.dispatch(
                [NewCall("parent", "http://endpoint.test", b"", now + 3600)], now=now
            )
            children: list[Call] = []

            async def child_started() -> None:
                deadline = time.monotonic() + BOUND
                while not (children and children[0].dispatch_id in caller.started):
                    assert time.monotonic() < deadline, f"no child running within {BOUND} s"
                    await asyncio.sleep(0.01)
                    children[:] = await store.list(root_id=parent, function="stuck")

            await child_started()
            child = children[0].dispatch_id
            many = calls_pb2.WaitManyRequest(dispatch_ids=[child])
            many.timeout.FromSeconds(60)
            answer, answers = await asyncio.wait_for(
                asyncio.gather(api.wait(wait_request(child)), api.wait_many(many)), BOUND
            )
            # The parent resumed after its max_wait and returned: its child was ended.
            assert answer.message().call.done, answer
            assert answer.message().call.status != Status.OK.value
            # A WaitMany of it too (each waiter is woken by its calls' trees).
            assert [(info.dispatch_id, info.done) for info in answers.calls] == [(child, True)]

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_wait_whose_client_goes_away_stops(tmp_path: Path, monkeypatch: Any) -> None:
    engines: list[Engine] = []

    class Recorded(Engine):
        def __post_init__(self) -> None:
            super().__post_init__()
            engines.append(self)

    monkeypatch.setattr(server, "Engine", Recorded)

    async def scenario() -> None:
        # An endpoint that accepts connections and never answers: the call stays running.
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)
            writer.close()

        endpoint = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = endpoint.sockets[0].getsockname()[1]
        listening: asyncio.Future[list[tuple[str, int]]] = asyncio.Future()
        stop = asyncio.Event()
        settings = Settings(
            database=str(tmp_path / "s.db"), port=0, insecure=True, grace_period=0.1
        )
        serving = asyncio.create_task(
            server.serve(settings, ready=listening.set_result, stop=stop, handle_signals=False)
        )
        try:
            host, api_port = (await asyncio.wait_for(listening, BOUND))[0]
            (engine,) = engines
            base = f"http://{host}:{api_port}"
            async with aiohttp.ClientSession() as session:
                call = {"calls": [{"function": "f", "endpoint": f"http://127.0.0.1:{port}"}]}
                async with session.post(
                    base + "/dispatch.sdk.v1.DispatchService/Dispatch", json=call
                ) as answer:
                    assert answer.status == 200, await answer.text()
                    (dispatch_id,) = (await answer.json())["dispatchIds"]
                body = wait_request(dispatch_id).SerializeToString()
                waiter = asyncio.create_task(
                    session.post(
                        base + WAIT, data=body, headers={"Content-Type": "application/proto"}
                    )
                )
                await until(lambda: dispatch_id in engine._watchers, "the Wait watching")
            # The client went away (its session closed): the Wait stops, long before
            # the 60 s it asked for (bounded by half of that).
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await waiter
            await until(lambda: not engine._watchers, "the Wait stopped", bound=30.0)
        finally:
            stop.set()
            await asyncio.wait_for(serving, BOUND)
            endpoint.close()

    asyncio.run(scenario())


# --- several processes on PostgreSQL ------------------------------------------------------


class HeldEndpoint(http.server.BaseHTTPRequestHandler):
    """An endpoint that answers OK once ``release`` is set; ``arrived`` when asked."""

    arrived = threading.Event()
    release = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).arrived.set()
        type(self).release.wait(BOUND)
        response = function_pb2.RunResponse(status=Status.OK.value)
        response.exit.result.output.type_url = "test/ok"
        body = response.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def scheduler_process(url: str, folder: Path) -> Iterator[str]:
    from test_scheduler_processes import Process, environment

    process = Process(
        [sys.executable, "-m", "dispatchlet", "scheduler", "--insecure", "--port", "0"],
        environment(DISPATCHLET_DATABASE_URL=url),
        folder,
    )
    try:
        yield process.wait_for(r"listening at (http://\S+)", timeout=BOUND).group(1)
    finally:
        assert process.stop() == 0, "".join(process.drained())


@pytest.mark.slow
def test_a_wait_is_woken_when_another_process_ends_the_call(
    postgres_server: str, tmp_path: Path
) -> None:
    from postgres_server import fresh_database
    from test_scheduler_processes import post

    url = fresh_database(postgres_server)
    endpoint = EndpointServer(("127.0.0.1", 0), HeldEndpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    endpoint_url = f"http://127.0.0.1:{endpoint.server_address[1]}"
    try:
        with scheduler_process(url, tmp_path) as runner:
            import json

            call = {"calls": [{"function": "f", "endpoint": endpoint_url}]}
            status, body = post(
                runner + "/dispatch.sdk.v1.DispatchService/Dispatch",
                json.dumps(call).encode(),
                None,
                content_type="application/json",
            )
            assert status == 200, body
            (dispatch_id,) = json.loads(body)["dispatchIds"]
            # The first process runs the call; another one answers the Wait.
            assert HeldEndpoint.arrived.wait(BOUND), "the call never reached its endpoint"
            with scheduler_process(url, tmp_path) as waiter:
                answers: dict[str, tuple[int, bytes]] = {}
                many = calls_pb2.WaitManyRequest(dispatch_ids=[dispatch_id])
                many.timeout.FromSeconds(25)
                requests = {
                    WAIT: wait_request(dispatch_id, seconds=25).SerializeToString(),
                    WAIT_MANY: many.SerializeToString(),
                }
                asking = [
                    threading.Thread(
                        target=lambda path=path, body=body: answers.update(
                            {path: post(waiter + path, body, None)}
                        )
                    )
                    for path, body in requests.items()
                ]
                for thread in asking:
                    thread.start()
                time.sleep(0.5)  # let the Waits begin; they would be answered anyway
                HeldEndpoint.release.set()
                for thread in asking:
                    thread.join(BOUND)
                assert len(answers) == 2, f"answered: {list(answers)}"
        for status, body in answers.values():
            assert status == 200, body
        info = calls_pb2.WaitResponse.FromString(answers[WAIT][1]).call
        (many_info,) = calls_pb2.WaitManyResponse.FromString(answers[WAIT_MANY][1]).calls
        assert (many_info.done, many_info.status) == (True, Status.OK.value), many_info
        # Its timeout (25 s) is shorter than the safety re-read (30 s): only the
        # notification of the other process's outcome can have answered them done.
        assert info.done, info
        assert info.status == Status.OK.value, info
    finally:
        HeldEndpoint.release.set()
        endpoint.shutdown()
