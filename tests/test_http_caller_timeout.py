"""An endpoint that does not answer within the attempt's timeout: the Run request ends
TIMEOUT ("no answer within ..."), and the task that sent it is left as it was, free to
await anything after (the time limit leaves no cancellation pending on it)."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet.core.connect import PROTO
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler import endpoint_connections
from dispatchlet.scheduler.http_caller import HttpCaller


async def _silent_endpoint() -> tuple[asyncio.Server, asyncio.Event, int]:
    """A server that reads requests and never answers; the event is set once a request
    arrived."""
    arrived = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        arrived.set()
        await reader.read()  # until the caller gives up and closes the connection
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, arrived, port


def test_an_endpoint_that_does_not_answer_in_time_is_a_timeout() -> None:
    async def scenario() -> None:
        server, arrived, port = await _silent_endpoint()
        try:
            async with HttpCaller(Ed25519PrivateKey.generate()) as caller:
                request = function_pb2.RunRequest(function="f", dispatch_id="d")
                sent = caller.run(f"http://127.0.0.1:{port}", request, timeout=0.5)
                outcome = await asyncio.wait_for(sent, 60)
                assert arrived.is_set(), "the request never reached the endpoint"
                assert outcome.status is Status.TIMEOUT
                assert outcome.message == "no answer within 0.5 s"
                task = asyncio.current_task()
                assert task is not None
                cancelling = getattr(task, "cancelling", None)  # Python 3.11 and later
                if cancelling is not None:
                    assert cancelling() == 0
                await asyncio.sleep(0)  # not cancelled by the time limit that passed
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_an_answer_in_time_is_not_cut_short() -> None:
    """The time limit ends with the request: a caller that awaits on after it is not
    cancelled when that limit would have passed."""

    async def scenario() -> None:
        server, _, port = await _silent_endpoint()
        server.close()
        await server.wait_closed()  # nothing listens: refused at once
        async with HttpCaller(Ed25519PrivateKey.generate()) as caller:
            request = function_pb2.RunRequest(function="f", dispatch_id="d")
            outcome = await caller.run(f"http://127.0.0.1:{port}", request, timeout=0.2)
            assert outcome.status is Status.TCP_ERROR
            slept = asyncio.create_task(asyncio.sleep(0.5))
            # Past the request's limit: the awaiting task is not cancelled by it.
            await asyncio.wait_for(asyncio.shield(slept), 60)
            assert slept.done()
            assert not slept.cancelled()

    asyncio.run(scenario())


def test_an_answer_slower_than_the_idle_connections_limit_is_not_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attempt's own timeout bounds its request, and nothing else: a connection in use
    is never closed as idle (made 0.2 s here), however long its answer takes within the
    attempt's timeout (a Lambda may run for 15 minutes)."""
    monkeypatch.setattr(endpoint_connections, "IDLE_SECONDS", 0.2)

    async def scenario() -> None:
        answered = function_pb2.RunResponse(status=Status.OK.value)
        body = answered.SerializeToString()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The first answer at once (the connection is then kept, and idle ones are
            # swept), the second, on the same connection, past the idle limit.
            for delay in (0, 0.6):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                await asyncio.sleep(delay)
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: {PROTO}\r\nContent-Length: {len(body)}\r\n"
                )
                writer.write(head.encode() + b"\r\n" + body)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with HttpCaller(Ed25519PrivateKey.generate()) as caller:
                request = function_pb2.RunRequest(function="f", dispatch_id="d")
                for _ in range(2):
                    sent = caller.run(f"http://127.0.0.1:{port}", request, timeout=60)
                    outcome = await asyncio.wait_for(sent, 60)
                    assert (outcome.status, outcome.message) == (Status.OK, "")
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
