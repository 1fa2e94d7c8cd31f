"""A scheduler (``scheduler_harness``) calling a real endpoint over signed HTTP, in one
process: what the tracing tests run with and without opentelemetry. It imports no
opentelemetry itself."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Endpoint
from dispatchlet.adapters.wsgi import wsgi_app
from dispatchlet.scheduler.http_caller import HttpCaller
from dispatchlet.scheduler.store import Call
from scheduler_harness import Harness, harness


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Threaded(WSGIServer):
    daemon_threads = True


@contextlib.contextmanager
def served(make: Callable[[str], Endpoint]) -> Iterator[str]:
    """The endpoint ``make(url)`` served at ``url``, a free loopback port; that URL."""
    app: list[Any] = []
    server = make_server(
        "127.0.0.1",
        0,
        lambda environ, start_response: app[0](environ, start_response),
        server_class=_Threaded,
        handler_class=_Quiet,
    )
    url = f"http://127.0.0.1:{server.server_port}"
    app.append(wsgi_app(make(url)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)


def endpoint_with_functions(key: Ed25519PrivateKey, url: str | None = None) -> Endpoint:
    """An endpoint at ``url`` verifying ``key``'s signatures, with ``greet``, ``flaky``
    (which times out on its first attempt) and the workflow ``welcome`` (which awaits
    ``greet``)."""
    endpoint = Endpoint(verification_key=key.public_key(), endpoint_url=url)
    tries: list[str] = []

    @endpoint.function
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    @endpoint.function
    def flaky(name: str) -> str:
        tries.append(name)
        if len(tries) == 1:
            raise TimeoutError("the first try times out")
        return f"Hello again, {name}!"

    @endpoint.function
    async def welcome(name: str) -> str:
        return "Welcome! " + await greet(name)

    return endpoint


@dataclass
class Scheduled:
    harness: Harness
    endpoint_url: str

    async def done(self, dispatch_id: str) -> Call:
        return await self.harness.done(dispatch_id, timeout=60)


@contextlib.asynccontextmanager
async def scheduler_and_endpoint(folder: Path) -> AsyncIterator[Scheduled]:
    """The harness's scheduler whose engine calls a real endpoint over signed HTTP."""
    key = Ed25519PrivateKey.generate()
    with served(lambda url: endpoint_with_functions(key, url)) as url:
        async with harness(folder, running=False) as h:
            caller = HttpCaller(key)
            h.engine.caller = caller
            task = asyncio.create_task(h.engine.run())
            try:
                yield Scheduled(h, url)
            finally:
                h.engine.stop()
                await asyncio.wait_for(task, 30)
                await caller.close()


__all__ = ["Scheduled", "endpoint_with_functions", "scheduler_and_endpoint", "served"]
