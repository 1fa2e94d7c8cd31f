"""An in-process scheduler for tests: the API served by aiohttp on a loopback port and
an engine whose endpoints are Python functions (no HTTP between them)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from dispatchlet.core import values
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, function_pb2
from dispatchlet.scheduler.api import Api
from dispatchlet.scheduler.connections import BoundedSite
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.settings import DEFAULT_MAX_INPUT_SIZE
from dispatchlet.scheduler.store import Call, Store
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from google.protobuf import message
from yarl import URL

API_KEY = "harness-key"
ENDPOINT = "http://endpoint.test"
Answer = Callable[[str, function_pb2.RunRequest], Outcome]


class Scripted:
    """A caller whose answers come from ``answer(endpoint, request)``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[function_pb2.RunRequest] = []

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        self.requests.append(request)
        return self.answer(endpoint, request)

    async def close(self) -> None:
        pass


def returned(value: Any, status: Status = Status.OK) -> Outcome:
    """An endpoint's RunResponse with ``value`` as its output."""
    response = function_pb2.RunResponse(status=status.value)
    response.exit.result.output.CopyFrom(values.to_any(value))
    return Outcome(Status.OK, response)


def raised(kind: str, text: str, status: Status) -> Outcome:
    """An endpoint's RunResponse for a function that raised."""
    response = function_pb2.RunResponse(status=status.value)
    response.exit.result.error.type = kind
    response.exit.result.error.message = text
    return Outcome(Status.OK, response)


@dataclass
class Harness:
    store: Store
    engine: Engine
    api: Api
    url: str
    session: aiohttp.ClientSession
    caller: Scripted

    async def post(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = "application/proto",
        key: str | None = API_KEY,
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        # Sent as written: a path with repeated slashes stays so.
        async with self.session.post(
            URL(self.url + path, encoded=True), data=body, headers=headers
        ) as answer:
            return answer.status, await answer.read()

    async def rpc(self, path: str, request: message.Message, reply: type[Any]) -> Any:
        status, body = await self.post(path, request.SerializeToString())
        assert status == 200, (status, body)
        return reply.FromString(body)

    async def dispatch(self, *calls: call_pb2.Call) -> list[str]:
        answer = await self.rpc(
            "/dispatch.sdk.v1.DispatchService/Dispatch",
            dispatch_pb2.DispatchRequest(calls=calls),
            dispatch_pb2.DispatchResponse,
        )
        return list(answer.dispatch_ids)

    async def done(self, dispatch_id: str, timeout: float = 30.0) -> Call:
        """The call once it is final (read from the store), failing after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.engine.watching(dispatch_id) as until:
            while True:
                found = await self.store.get(dispatch_id)
                assert found is not None, dispatch_id
                if found.done:
                    return found
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{dispatch_id} not done within {timeout} s: {found}"
                await until(min(remaining, 0.2))


def call(function: str, value: Any = None, endpoint: str = ENDPOINT, **fields: Any) -> Any:
    built = call_pb2.Call(function=function, endpoint=endpoint, **fields)
    if value is not None:
        built.input.CopyFrom(values.to_any(value))
    return built


@contextlib.asynccontextmanager
async def harness(
    folder: Path,
    answer: Answer = lambda endpoint, request: returned(None),
    *,
    store: Store | None = None,
    running: bool = True,
    policy: RetryPolicy | None = None,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    **api_options: Any,
) -> AsyncIterator[Harness]:
    """The API on a free loopback port over a SQLite store in ``folder`` (or ``store``),
    its engine running (unless ``running=False``) on ``answer``."""
    opened = store or await SQLiteStore.open(folder / "scheduler.db")
    caller = Scripted(answer)
    engine = Engine(
        opened,
        caller,
        policy=policy or RetryPolicy(base=0.01, cap=0.05),
        idle_interval=0.05,
        max_input_size=max_input_size,
    )
    api_options.setdefault("api_keys", [API_KEY])
    api = Api(opened, engine, max_input_size=max_input_size, **api_options)
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    # As the scheduler serves it: whole requests answered directly, the rest by aiohttp.
    site = BoundedSite(runner, "127.0.0.1", 0, max_connections=1000, direct=api.direct())
    await site.start()
    host, port = runner.addresses[0][:2]
    task = asyncio.create_task(engine.run()) if running else None
    try:
        async with aiohttp.ClientSession() as session:
            yield Harness(opened, engine, api, f"http://{host}:{port}", session, caller)
    finally:
        engine.stop()
        if task is not None:
            await asyncio.wait_for(task, 30)
        await runner.cleanup()
        await opened.close()
