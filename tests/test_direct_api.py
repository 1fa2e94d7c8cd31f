"""The API's requests that arrive whole in one read are answered without aiohttp
(``direct_api.py``), and answered as aiohttp answers them: the same status and body for
the same request, in order on a connection, with its keep-alive and its bounds. Anything
else hands the connection to aiohttp (told apart here by aiohttp's ``Server`` field)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from dispatchlet.core.http import Response
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.api import CALLS_PATH, DISPATCH_PATH, Api
from dispatchlet.scheduler.connections import BoundedSite
from dispatchlet.scheduler.direct_api import DirectApi, Streamed, WholeRequest, whole_request
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.store.memory import MemoryStore
from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler_harness import API_KEY, ENDPOINT, Scripted, returned

BOUND = 30.0
PATHS = frozenset({DISPATCH_PATH})


def dispatch_body(*functions: str) -> bytes:
    calls = [call_pb2.Call(function=f, endpoint=ENDPOINT) for f in functions]
    return dispatch_pb2.DispatchRequest(calls=calls).SerializeToString()


def post(
    path: str,
    body: bytes,
    *,
    key: str | None = API_KEY,
    content_type: str = "application/proto",
    extra: str = "",
) -> bytes:
    fields = f"Host: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    if key is not None:
        fields += f"Authorization: Bearer {key}\r\n"
    head = f"POST {path} HTTP/1.1\r\n{fields}{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


# --- what is read whole ----------------------------------------------------------------


def test_a_whole_post_is_read_with_its_path_fields_and_body() -> None:
    body = dispatch_body("f")
    request = whole_request(post("//" + DISPATCH_PATH.lstrip("/"), body), PATHS)
    assert request is not None
    assert request.path == DISPATCH_PATH  # repeated slashes before it, as aiohttp routes it
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body == body
    assert request.keep_alive
    closing = whole_request(post(DISPATCH_PATH, body, extra="Connection: close\r\n"), PATHS)
    assert closing is not None
    assert not closing.keep_alive


def test_a_whole_chunked_body_is_read() -> None:
    head = f"POST {DISPATCH_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    request = whole_request(head.encode() + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", PATHS)
    assert request is not None
    assert request.body == b"abcde"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(post(DISPATCH_PATH, b"abcdef")[:-2], id="body cut short"),
        pytest.param(post(DISPATCH_PATH, b"")[:-4], id="head cut short"),
        pytest.param(post(DISPATCH_PATH, b"ab") * 2, id="two requests"),
        pytest.param(post(DISPATCH_PATH, b"ab") + b"POST", id="the start of another"),
        pytest.param(post(DISPATCH_PATH, b"", extra="Expect: 100-continue\r\n"), id="expect"),
        pytest.param(post(DISPATCH_PATH, b"", extra="Upgrade: h2c\r\n"), id="upgrade"),
        pytest.param(post(CALLS_PATH + "Get", b""), id="another path"),
        pytest.param(post(DISPATCH_PATH, b"").replace(b"POST", b"PUT ", 1), id="another method"),
        pytest.param(post(DISPATCH_PATH, b"").replace(b"HTTP/1.1", b"HTTP/1.0"), id="HTTP/1.0"),
        pytest.param(post("http://x" + DISPATCH_PATH, b""), id="absolute target"),
        pytest.param(post(DISPATCH_PATH, b"").replace(b"Host:", b"Ho st:"), id="malformed"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", id="a page"),
        pytest.param(post(DISPATCH_PATH, b"", extra="Content-Encoding: gzip\r\n"), id="gzip"),
        pytest.param(
            post(DISPATCH_PATH, b"", extra="Transfer-Encoding: gzip, chunked\r\n").replace(
                b"Content-Length: 0\r\n", b""
            )
            + b"0\r\n\r\n",
            id="another transfer coding",
        ),
        pytest.param(post(DISPATCH_PATH, b"", extra=f"X-Long: {'a' * 8200}\r\n"), id="long field"),
        pytest.param(post(DISPATCH_PATH + "?" + "a" * 8200, b""), id="long target"),
    ],
)
def test_anything_else_is_left_to_aiohttp(data: bytes) -> None:
    assert whole_request(data, PATHS) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_after_a_request_line_are_read_or_left_without_an_error(rest: bytes) -> None:
    request = whole_request(f"POST {DISPATCH_PATH} HTTP/1.1\r\n".encode() + rest, PATHS)
    assert request is None or request.path == DISPATCH_PATH


# --- served -------------------------------------------------------------------------------


@asynccontextmanager
async def serving(
    tmp_path: Path, *, keepalive: float = 75.0, **api_options: object
) -> AsyncIterator[tuple[int, Api, BoundedSite]]:
    """The API on a free loopback port as the scheduler serves it, its engine not
    running (calls stay ready), over an in-memory store."""
    store = MemoryStore()
    engine = Engine(store, Scripted(lambda endpoint, request: returned(None)))
    api_options.setdefault("api_keys", [API_KEY])
    api = Api(store, engine, **api_options)  # type: ignore[arg-type]
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    site = BoundedSite(
        runner,
        "127.0.0.1",
        0,
        max_connections=100,
        direct=api.direct(),
        keepalive_timeout=keepalive,
    )
    await site.start()
    try:
        yield runner.addresses[0][1], api, site
    finally:
        await site.stop()
        await runner.cleanup()


class Answer:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.fields = {n.lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])}
        self.body = body

    @property
    def by_aiohttp(self) -> bool:
        return "aiohttp" in self.fields.get("server", "")


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    answer = Answer(head[:-4], b"")
    length = int(answer.fields["content-length"])
    answer.body = await asyncio.wait_for(reader.readexactly(length), BOUND)
    return answer


@asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to the API on ``port``, closed after the block."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def exchange(port: int, *sends: bytes, pause: float = 0.0) -> Answer:
    """The answer to ``sends``, sent one after another on a new connection (``pause``
    between them, so that each is read apart)."""
    async with connected(port) as (reader, writer):
        for index, data in enumerate(sends):
            if index:
                await asyncio.sleep(pause)
            writer.write(data)
            await writer.drain()
        return await read_answer(reader)


REFUSED = [
    pytest.param({"key": "wrong"}, dispatch_body("f"), 401, id="wrong key"),
    pytest.param({"key": None}, dispatch_body("f"), 401, id="no key"),
    pytest.param({"content_type": "text/plain"}, dispatch_body("f"), 415, id="media type"),
    pytest.param({}, b"\xff\xff\xff", 400, id="undecodable"),
    pytest.param({}, dispatch_body(""), 400, id="invalid call"),
    pytest.param({"content_type": "application/json"}, b"{}", 200, id="json"),
]


@pytest.mark.parametrize(("options", "body", "status"), REFUSED)
def test_a_request_is_answered_directly_as_aiohttp_answers_it(
    tmp_path: Path, options: dict[str, str | None], body: bytes, status: int
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (port, _, _):
            data = post(DISPATCH_PATH, body, **options)  # type: ignore[arg-type]
            direct = await exchange(port, data)
            # The head and then the body, read apart: aiohttp's.
            split = data.index(b"\r\n\r\n") + 4
            aiohttp = await exchange(port, data[:split], data[split:], pause=0.2)
            assert not direct.by_aiohttp
            assert aiohttp.by_aiohttp or not body  # an empty body comes with its head
            assert direct.status == aiohttp.status == status, (direct.body, aiohttp.body)
            assert direct.fields["content-type"] == aiohttp.fields["content-type"]
            if status != 200:
                assert json.loads(direct.body) == json.loads(aiohttp.body)
            else:
                assert json.loads(direct.body) == json.loads(aiohttp.body) == {}
            assert "date" in direct.fields

    asyncio.run(scenario())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_dispatch_answered_directly_stores_its_calls(tmp_path: Path, loop: str) -> None:
    # An app may run the scheduler on uvloop, whose transports are its own.
    async def scenario() -> None:
        async with serving(tmp_path) as (port, api, _):
            answer = await exchange(port, post(DISPATCH_PATH, dispatch_body("f", "g")))
            assert answer.status == 200
            assert not answer.by_aiohttp
            ids = dispatch_pb2.DispatchResponse.FromString(answer.body).dispatch_ids
            stored = [await api.store.get(i) for i in ids]
            assert [c.function for c in stored if c is not None] == ["f", "g"]

    if loop == "uvloop":
        import uvloop

        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


def test_a_request_sent_while_one_is_answered_is_answered_after_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (port, _, _), connected(port) as (reader, writer):
            writer.write(post(DISPATCH_PATH, dispatch_body("f")))
            first = await read_answer(reader)
            (dispatch_id,) = dispatch_pb2.DispatchResponse.FromString(first.body).dispatch_ids
            # The call never runs (no engine): the WaitMany waits its whole second.
            wait = calls_pb2.WaitManyRequest(dispatch_ids=[dispatch_id])
            wait.timeout.seconds = 1
            writer.write(post(CALLS_PATH + "WaitMany", wait.SerializeToString()))
            await writer.drain()
            await asyncio.sleep(0.2)  # read apart, while the WaitMany waits
            writer.write(post(DISPATCH_PATH, dispatch_body("g")))
            waited = await read_answer(reader)
            second = await read_answer(reader)
            assert not first.by_aiohttp
            assert not waited.by_aiohttp
            assert not second.by_aiohttp
            answer = calls_pb2.WaitManyResponse.FromString(waited.body)
            assert [c.dispatch_id for c in answer.calls] == [dispatch_id]
            assert len(dispatch_pb2.DispatchResponse.FromString(second.body).dispatch_ids) == 1

    asyncio.run(scenario())


def test_pipelined_requests_go_to_aiohttp_and_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (port, _, _), connected(port) as (reader, writer):
            writer.write(post(DISPATCH_PATH, dispatch_body("f")) + post(DISPATCH_PATH, b"\xff"))
            first, second = await read_answer(reader), await read_answer(reader)
            assert first.by_aiohttp
            assert (first.status, second.status) == (200, 400)

    asyncio.run(scenario())


def test_a_connection_handed_to_aiohttp_stays_with_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (port, _, _), connected(port) as (reader, writer):
            answers = []
            for data in (
                post(DISPATCH_PATH, dispatch_body("f")),
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                post(DISPATCH_PATH, dispatch_body("g")),
            ):
                writer.write(data)
                answers.append(await read_answer(reader))
            assert [a.status for a in answers] == [200, 200, 200]
            assert [a.by_aiohttp for a in answers] == [False, True, True]

    asyncio.run(scenario())


def test_connection_close_is_answered_and_the_connection_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (port, _, _), connected(port) as (reader, writer):
            writer.write(post(DISPATCH_PATH, dispatch_body("f"), extra="Connection: close\r\n"))
            answer = await read_answer(reader)
            assert answer.status == 200
            assert answer.fields["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), BOUND) == b""

    asyncio.run(scenario())


def test_a_quiet_connection_is_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            serving(tmp_path, keepalive=1.0) as (port, _, _),
            connected(port) as (reader, writer),
        ):
            # In use: kept past the timeout, each request answered directly.
            loop = asyncio.get_running_loop()
            until = loop.time() + 2.5
            while loop.time() < until:
                writer.write(post(DISPATCH_PATH, dispatch_body("f")))
                answer = await read_answer(reader)
                assert answer.status == 200
                assert not answer.by_aiohttp
                await asyncio.sleep(0.05)
            # Then quiet: closed, with nothing sent.
            assert await asyncio.wait_for(reader.read(), BOUND) == b""

    asyncio.run(scenario())


def test_a_stop_closes_quiet_connections(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (port, _, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(DISPATCH_PATH, dispatch_body("f")))
            assert (await read_answer(reader)).status == 200
        try:
            assert await asyncio.wait_for(reader.read(), BOUND) == b""
        finally:
            writer.close()

    asyncio.run(scenario())


def test_an_insecure_scheduler_refuses_another_sites_host_directly(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, insecure=True) as (port, _, _):
            data = post(DISPATCH_PATH, dispatch_body("f"), key=None)
            rebound = data.replace(b"Host: 127.0.0.1", b"Host: attacker.example")
            refused = await exchange(port, rebound)
            assert refused.status == 403
            assert not refused.by_aiohttp
            assert (await exchange(port, data)).status == 200

    asyncio.run(scenario())


def test_a_client_that_reads_no_answers_has_them_held_within_a_bound(tmp_path: Path) -> None:
    """Requests sent one at a time, each read whole, without their answers being read:
    once the answers waiting for the client pass the transport's high-water mark, the
    next request waits (as aiohttp's do), so they do not pile up in the server."""

    async def scenario() -> None:
        async with serving(tmp_path) as (port, _, site):
            assert site.direct is not None
            answered: list[None] = []
            answer = site.direct.answer

            async def counted(request: WholeRequest) -> Response | Streamed:
                answered.append(None)
                return await answer(request)

            site.direct = DirectApi(site.direct.paths, counted)
            refused = post(DISPATCH_PATH, dispatch_body("f"), key="wrong")  # a 401 each
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            try:
                while not (connections := [*site.idle, *site.busy]):
                    await asyncio.sleep(0.01)
                (connection,) = connections
                transport = connection.transport
                assert transport is not None
                # The kernel holds little of the answers: the server's own buffer fills.
                transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
                )
                held_back = False
                for sent in range(1, 5001):
                    sock.send(refused)
                    # Each request alone: the next sent once this one has been handled.
                    for _ in range(400):
                        await asyncio.sleep(0.005)
                        if len(answered) == sent:
                            break
                    else:
                        held_back = True  # not read: an answer waits for the client
                        break
                assert connection.inner is None  # each was read whole, and answered here
                assert held_back, "every request was answered into the buffer"
                assert transport.get_write_buffer_size() < 256 * 1024
            finally:
                sock.close()

    asyncio.run(scenario())
