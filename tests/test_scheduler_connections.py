"""What a client without a key can hold of the scheduler's API server: idle and slow
connections are bounded in number and in time, a slow body is cut off, accept() errors
cannot flood the log, and /metrics needs a key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from dispatchlet.scheduler.connections import (
    ACCEPT_FAILED,
    FD_RESERVE,
    BoundedSite,
    _Tracked,
    connection_cap,
    quiet_accept_errors,
)
from dispatchlet.scheduler.settings import Settings
from scheduler_harness import API_KEY, harness
from test_scheduler_processes import Process, environment

WAIT = 30.0


def start_scheduler(tmp_path: Path, *flags: str, fd_limit: int | None = None) -> Process:
    limit = ""
    if fd_limit is not None:
        # The process's open files limit, as a unit without LimitNOFILE gives it.
        limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({fd_limit}, {fd_limit})); "
    code = f"import resource, sys; {limit}from dispatchlet.cli.main import main; sys.exit(main())"
    command = [sys.executable, "-c", code, "scheduler", "--insecure", "--port", "0"]
    command += ["--db", str(tmp_path / "calls.db"), *flags]
    return Process(command, environment(), tmp_path)


def address(process: Process) -> tuple[str, int]:
    found = process.wait_for(r"listening at http://127\.0\.0\.1:(\d+)")
    return "127.0.0.1", int(found.group(1))


def connect(where: tuple[str, int]) -> socket.socket:
    return socket.create_connection(where, timeout=WAIT)


def get(where: tuple[str, int], path: str = "/healthz", headers: str = "") -> bytes:
    """The whole answer to a GET on a new connection (closed after it)."""
    with connect(where) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
        sock.sendall(request.encode())
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length, the connection kept."""
    sock.settimeout(WAIT)
    data = b""
    while b"\r\n\r\n" not in data:
        data += received(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    (length,) = [
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        body += received(sock)
    return head + b"\r\n\r\n" + body


def received(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the connection was closed before the whole answer"
    return chunk


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(timeout)


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(autouse=True)
def enough_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard or (soft < hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


@pytest.mark.slow
def test_idle_connections_past_the_open_files_limit_leave_the_api_answering(
    tmp_path: Path,
) -> None:
    # A process with 256 open files, and 400 connections that send nothing: without a
    # cap under the limit, accept() fails, the API stops answering and asyncio logs a
    # traceback per failed accept.
    process = start_scheduler(tmp_path, fd_limit=256)
    try:
        where = address(process)
        with sockets() as idle:
            for _ in range(400):
                idle.append(connect(where))
            answer = get(where)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            # The oldest silent connections were closed to make room, cleanly.
            deadline = time.monotonic() + WAIT
            while sum(map(closed_by_server, idle)) < 400 - 256:
                assert time.monotonic() < deadline, "idle connections were not closed"
                time.sleep(0.1)
    finally:
        process.stop()
    output = "".join(process.drained())
    assert "Traceback" not in output, output[-3000:]
    assert "out of system resource" not in output, output[-3000:]


@pytest.mark.slow
def test_a_head_sent_slowly_is_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    process = start_scheduler(tmp_path, "--keepalive-timeout", "1")
    try:
        where = address(process)
        with connect(where) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\n")
            deadline = time.monotonic() + WAIT
            # A header byte every 0.2 s, never the end of the head.
            while not closed_by_server(slow):
                assert time.monotonic() < deadline, "a trickling head was never cut off"
                with contextlib.suppress(OSError):
                    slow.sendall(b"X")
                time.sleep(0.2)
        with connect(where) as idle:
            assert read_all(idle) == b""  # an idle one too, and nothing was answered
    finally:
        process.stop()


@pytest.mark.slow
def test_past_the_cap_with_every_connection_busy_a_client_gets_503(tmp_path: Path) -> None:
    process = start_scheduler(tmp_path, "--max-connections", "20")
    try:
        where = address(process)
        with sockets() as slow:
            for _ in range(20):
                sock = connect(where)
                slow.append(sock)
                # One request answered (the server has read from it), then half a head.
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(sock).startswith(b"HTTP/1.1 200")
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            # None has been silent: none may be closed for the newcomer.
            refused = get(where)
            head, _, body = refused.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), refused
            assert b"Connection: close" in head
            assert json.loads(body)["code"] == "unavailable"
            assert not any(map(closed_by_server, slow))
        # Freed: answered again.
        deadline = time.monotonic() + WAIT
        while not (answer := get(where)).startswith(b"HTTP/1.1 200"):
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
    finally:
        process.stop()


@pytest.mark.slow
def test_idle_keepalive_connections_are_closed_to_admit_new_clients(tmp_path: Path) -> None:
    # Connections that got their answer and wait in keep-alive hold no request: past
    # the cap they make room, as those that never sent anything do.
    process = start_scheduler(tmp_path, "--max-connections", "20", "--keepalive-timeout", "600")
    try:
        where = address(process)
        with sockets() as kept, sockets() as newcomers:
            for held, count in ((kept, 20), (newcomers, 5)):
                for _ in range(count):
                    sock = connect(where)
                    held.append(sock)
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    answer = read_answer(sock)
                    assert answer.startswith(b"HTTP/1.1 200"), answer
            # Each newcomer took the place of the connection idle for longest.
            deadline = time.monotonic() + WAIT
            while not all(map(closed_by_server, kept[:5])):
                assert time.monotonic() < deadline, "the idle connections were not closed"
                time.sleep(0.1)
            assert not any(map(closed_by_server, kept[5:] + newcomers))
    finally:
        process.stop()


class FakeTransport(asyncio.Transport):
    """A connection's transport as the site sees it, from ``peer``."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written = b""
        self.closed = False
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_one_address_holds_at_most_its_share_of_connections() -> None:
    asyncio.run(one_address_holds_at_most_its_share())


async def one_address_holds_at_most_its_share() -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        site = BoundedSite(runner, "127.0.0.1", 0, max_connections=100, max_per_client=3)

        def connection(host: str) -> tuple[_Tracked, FakeTransport]:
            tracked = _Tracked(asyncio.Protocol, site)
            transport = FakeTransport((host, 40000))
            tracked.connection_made(transport)
            return tracked, transport

        attacker = [connection("203.0.113.7") for _ in range(3)]
        for tracked, _ in attacker:
            tracked.data_received(b"POST / HTTP/1.1\r\n")  # a request in progress
        _, refused = connection("203.0.113.7")
        assert refused.written.startswith(b"HTTP/1.1 503"), refused.written
        assert b"--max-connections-per-client" in refused.written
        assert not any(transport.closed for _, transport in attacker)
        # Other addresses are let in, and loopback (a local proxy, a development
        # setup) is not counted per client.
        _, other = connection("198.51.100.1")
        local = [connection(host)[1] for host in ["127.0.0.1"] * 10 + ["::1"] * 10]
        assert not other.written
        assert not other.closed
        assert not any(transport.written for transport in local)
        # Once one of its requests is answered, that connection makes room for its next.
        attacker[1][0].answered()
        _, admitted = connection("203.0.113.7")
        assert not admitted.written
        assert [transport.closed for _, transport in attacker] == [False, True, False]
        assert site.connections == 3 + 1 + 20
    finally:
        await runner.cleanup()


def test_a_body_sent_slowly_is_answered_504_and_its_connection_closed(
    tmp_path: Path,
) -> None:
    async def scenario() -> bytes:
        async with harness(tmp_path, body_timeout=0.5) as h:
            host, port = h.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /dispatchlet.scheduler.v1.CallService/Get HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                b"Authorization: Bearer " + API_KEY.encode() + b"\r\n\r\n{"
            )
            answer = await asyncio.wait_for(reader.read(), WAIT)  # to the end: closed
            writer.close()
            return answer

    answer = asyncio.run(scenario())
    head, _, body = answer.partition(b"\r\n\r\n")
    # Connect's deadline_exceeded is HTTP 504; the rest of the body may still come.
    assert head.startswith(b"HTTP/1.1 504"), answer
    assert b"Connection: close" in head, answer
    assert json.loads(body)["code"] == "deadline_exceeded"


def test_metrics_need_a_key(tmp_path: Path) -> None:
    asyncio.run(metrics_need_a_key(tmp_path))


async def metrics_need_a_key(tmp_path: Path) -> None:
    async with harness(tmp_path, metrics_keys=["scrape"]) as h:
        for key, status in ((None, 401), ("wrong", 401), (API_KEY, 200), ("scrape", 200)):
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            async with h.session.get(h.url + "/metrics", headers=headers) as answer:
                text = await answer.text()
                assert answer.status == status, (key, text)
            if status == 200:
                assert "dispatchlet_attempts_in_flight" in text
            else:
                assert json.loads(text)["code"] == "unauthenticated"
                assert "--metrics-public" in json.loads(text)["message"]
        # A metrics key is no API key.
        status, _ = await h.post("/dispatchlet.scheduler.v1.CallService/Get", b"", key="scrape")
        assert status == 401


def test_metrics_public_serves_them_without_a_key(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str]:
        async with (
            harness(tmp_path, metrics_public=True) as h,
            h.session.get(h.url + "/metrics") as answer,
        ):
            return answer.status, await answer.text()

    status, text = asyncio.run(scenario())
    assert status == 200
    assert "dispatchlet_attempts_in_flight" in text


def test_failed_accepts_are_logged_once_in_a_while(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    now = [0.0]
    try:
        quiet_accept_errors(loop, clock=lambda: now[0])
        with caplog.at_level(logging.ERROR):
            for _ in range(8000):  # what one second of EMFILE used to log, each a traceback
                loop.call_exception_handler(
                    {"message": ACCEPT_FAILED, "exception": OSError(24, "Too many open files")}
                )
            now[0] += 11
            loop.call_exception_handler({"message": ACCEPT_FAILED, "exception": OSError(24)})
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "(1 time(s)" in lines[0]
    assert "(8000 time(s)" in lines[1]  # the 7,999 held back, and this one
    assert lines[2] == "something else"
    assert not caplog.records[0].exc_info


def test_the_connection_cap_leaves_room_under_the_open_files_limit() -> None:
    assert connection_cap(1000, 65536) == 1000
    assert connection_cap(1000, 1024) == 512
    assert connection_cap(1000, 256) == 128
    assert connection_cap(5000, 4096) == 4096 - FD_RESERVE


def test_metrics_keys_come_from_the_environment() -> None:
    found = Settings.from_env({"DISPATCHLET_METRICS_KEY": "scrape, old"}, database="x.db")
    assert found.metrics_keys == ("scrape", "old")


def test_the_bounded_site_serves_on_uvloop() -> None:
    """An app that runs the scheduler on uvloop's event loop (its transports are not
    asyncio.Transport subclasses) gets its requests answered, not its connections
    dropped."""
    import uvloop

    async def scenario() -> bytes:
        app = web.Application()

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello")

        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = BoundedSite(runner, "127.0.0.1", 0, max_connections=10)
            await site.start()
            server = site._server
            assert server is not None
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    answer = uvloop.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.endswith(b"hello")
