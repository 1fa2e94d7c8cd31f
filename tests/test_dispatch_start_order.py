"""A Dispatch whose calls are handed to the engine sends their Run requests before its
own answer: the calls start without waiting for the answer to be written (and for the
client it wakes to take the machine first). Driven in process, over loopback HTTP, with
the scheduler's own HTTP caller; the order is that of the writes to the sockets."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from dispatchlet.core.connect import RUN_PATH
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, function_pb2
from dispatchlet.scheduler.api import Api
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import HttpCaller
from dispatchlet.scheduler.store.sqlite import SQLiteStore

API_KEY = "order-key"
DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"
BOUND = 60.0


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The start of every write to a socket of this process's event loop, in order."""
    from asyncio import selector_events

    seen: list[bytes] = []
    transport = selector_events._SelectorSocketTransport
    write = transport.write

    def recorded(self: Any, data: Any) -> None:
        seen.append(bytes(data[:64]))
        write(self, data)

    monkeypatch.setattr(transport, "write", recorded)
    return seen


async def started(runner: web.AppRunner) -> str:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="before 3.11 a Run request's time limit runs the request in a task of its own "
    "(asyncio.wait_for): it is written a turn of the loop later, after the answer",
)
def test_the_run_requests_of_handed_calls_go_before_the_dispatch_answer(
    tmp_path: Path, writes: list[bytes]
) -> None:
    ran = asyncio.Event()

    async def run(request: web.Request) -> web.Response:
        await request.read()
        ran.set()
        answer = function_pb2.RunResponse(status=1)
        answer.exit.SetInParent()
        return web.Response(body=answer.SerializeToString(), content_type="application/proto")

    async def scenario() -> None:
        endpoint_app = web.Application()
        endpoint_app.router.add_post(RUN_PATH, run)
        endpoint_runner = web.AppRunner(endpoint_app, access_log=None)
        endpoint = await started(endpoint_runner)
        store = await SQLiteStore.open(tmp_path / "scheduler.db")
        caller = HttpCaller(None, insecure=True)
        engine = Engine(store, caller)
        api_runner = web.AppRunner(Api(store, engine, api_keys=[API_KEY]).app(), access_log=None)
        url = await started(api_runner)
        engine_task = asyncio.create_task(engine.run())
        try:
            # Warmed up: a connection to each side already open.
            async with aiohttp.ClientSession() as session:
                for _ in range(2):
                    request = dispatch_pb2.DispatchRequest(
                        calls=[call_pb2.Call(function="f", endpoint=endpoint)]
                    )
                    first = len(writes)
                    async with session.post(
                        url + DISPATCH,
                        data=request.SerializeToString(),
                        headers={
                            "Content-Type": "application/proto",
                            "Authorization": f"Bearer {API_KEY}",
                        },
                    ) as answer:
                        assert answer.status == 200, await answer.text()
                        await answer.read()
                    await asyncio.wait_for(ran.wait(), BOUND)
                    ran.clear()
            # The client's Dispatch, then the Run request, then the Dispatch's answer.
            sent = [w for w in writes[first:] if w.startswith((b"POST ", b"HTTP/1.1 200"))]
            assert sent[0].startswith(b"POST " + DISPATCH.encode()), sent
            assert sent[1].startswith(b"POST " + RUN_PATH.encode()), sent
            assert sent[2].startswith(b"HTTP/1.1 200"), sent
        finally:
            engine.stop()
            await asyncio.wait_for(engine_task, BOUND)
            await caller.close()
            await api_runner.cleanup()
            await endpoint_runner.cleanup()
            await store.close()

    asyncio.run(scenario())
