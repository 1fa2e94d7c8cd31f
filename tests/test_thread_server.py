"""``dispatchlet serve``'s HTTP server (``ThreadServer``), in this process on loopback:
HTTP/1.1 framing, the bounds a client cannot pass, and stopping. Its conformance with the
endpoint (paths, bodies, limits, stalls) is tested beside gunicorn and waitress in
test_wsgi_servers.py, and under slow clients in test_wsgi_slow_clients.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from dispatchlet.serving.thread_server import ThreadServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WAIT = 20.0  # generous: a bound on waits, never a measured time


class EchoApp:
    """Answers each request with what it saw, as JSON; ``gate`` holds calls until set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Semaphore(0)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.entered.release()
        try:
            assert self.gate.wait(WAIT)
            if environ["PATH_INFO"] == "/fail":
                raise RuntimeError("the app failed")
            body = environ["wsgi.input"].read()
            seen = {k: v for k, v in environ.items() if isinstance(v, str)}
            seen["body"] = body.decode("latin-1")
            seen["thread"] = threading.current_thread().name
            seen["thread_id"] = str(threading.get_ident())
            data = json.dumps(seen).encode()
            start_response(
                "200 OK", [("Content-Type", "application/json"), ("Connection", "bogus")]
            )
            return [data]
        finally:
            with self.lock:
                self.inside -= 1


@contextlib.contextmanager
def running(app: Any, **options: Any) -> Iterator[ThreadServer]:
    settings_ = {"threads": 4, "max_body": 1024, **options}
    server = ThreadServer(app, "127.0.0.1", 0, **settings_)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close(grace=WAIT)
        thread.join(WAIT)
        assert not thread.is_alive()


def connect(server: ThreadServer) -> socket.socket:
    return socket.create_connection(server.addresses[0], timeout=WAIT)


def request(path: str = "/", body: bytes = b"", *, extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: example\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


class Reader:
    """Answers read off one connection, framed by Content-Length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def answer(self, *, to_head: bool = False) -> tuple[int, dict[str, str], bytes] | None:
        """The next answer (None: closed first); ``to_head``: one to a HEAD, no body."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        line, *fields = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        length = 0 if to_head else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._more():
                raise AssertionError("answer cut short")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(line.split()[1]), headers, body

    def closed(self) -> bool:
        return not self.buffer and not self._more()

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self.buffer += data
        return bool(data)


def seen(answer: tuple[int, dict[str, str], bytes] | None) -> dict[str, str]:
    assert answer is not None
    assert answer[0] == 200, answer
    return dict(json.loads(answer[2]))


def test_a_connection_serves_requests_one_after_another_on_its_own_thread() -> None:
    with running(EchoApp()) as server, connect(server) as sock:
        reader = Reader(sock)
        threads = []
        for n in range(3):
            sock.sendall(request(f"/r{n}", f"body {n}".encode()))
            answer = reader.answer()
            echoed = seen(answer)
            assert (echoed["PATH_INFO"], echoed["body"]) == (f"/r{n}", f"body {n}")
            assert answer is not None
            assert "connection" not in answer[1]  # kept alive
            threads.append((echoed["thread"], echoed["thread_id"]))
        # The thread reading the connection ran the app each time: no hand-over.
        assert len(set(threads)) == 1
        assert threads[0][0] == "dispatchlet-connection"


def test_pipelined_requests_are_answered_in_order() -> None:
    with running(EchoApp()) as server, connect(server) as sock:
        sock.sendall(b"".join(request(f"/p{n}", b"x" * n) for n in range(5)))
        reader = Reader(sock)
        assert [seen(reader.answer())["PATH_INFO"] for _ in range(5)] == [
            f"/p{n}" for n in range(5)
        ]


def test_chunked_body_and_expect_continue() -> None:
    with running(EchoApp()) as server, connect(server) as sock:
        head = (
            "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Expect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        reader = Reader(sock)
        interim = reader.answer()
        assert interim is not None
        assert interim[0] == 100  # asked for the body
        sock.sendall(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        echoed = seen(reader.answer())
        assert echoed["body"] == "abcde"
        assert echoed["HTTP_TRANSFER_ENCODING"] == "chunked"
        assert "CONTENT_LENGTH" not in echoed


def test_environ_fields() -> None:
    with running(EchoApp()) as server, connect(server) as sock:
        extra = (
            "Content-Type: text/plain\r\nX-Twice: a\r\nX-Twice: b\r\nX_Spoof: no\r\n"
            "Transfer-Encoding-Not: kept\r\n"
        )
        sock.sendall(request("/a%2Fb/c%20d?q=1&r", b"hi", extra=extra))
        echoed = seen(Reader(sock).answer())
    assert echoed["REQUEST_URI"] == "/a%2Fb/c%20d?q=1&r"  # as sent, for the signature
    assert echoed["PATH_INFO"] == "/a/b/c d"
    assert echoed["QUERY_STRING"] == "q=1&r"
    assert echoed["CONTENT_TYPE"] == "text/plain"
    assert echoed["CONTENT_LENGTH"] == "2"
    assert echoed["HTTP_X_TWICE"] == "a, b"
    assert "HTTP_X_SPOOF" not in echoed  # would pass for X-Spoof
    assert echoed["HTTP_TRANSFER_ENCODING_NOT"] == "kept"
    assert echoed["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert echoed["REMOTE_ADDR"] == "127.0.0.1"


def test_answer_framing_is_the_servers() -> None:
    with running(EchoApp()) as server, connect(server) as sock:
        sock.sendall(request())
        reader = Reader(sock)
        answer = reader.answer()
        assert answer is not None
        # The app's hop-by-hop field is dropped; the length is the body's.
        assert answer[1].get("connection") is None
        assert int(answer[1]["content-length"]) == len(answer[2])
        assert "date" in answer[1]
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = reader.answer(to_head=True)
        assert head is not None
        assert head[0] == 200
        assert int(head[1]["content-length"]) > 0
        sock.sendall(request(extra="Connection: close\r\n"))
        last = reader.answer()
        assert last is not None
        assert last[1]["connection"] == "close"
        assert reader.closed()


@pytest.mark.parametrize("keep_alive", [False, True])
def test_http_1_0_keeps_the_connection_only_when_asked(keep_alive: bool) -> None:
    with running(EchoApp()) as server, connect(server) as sock:
        extra = "Connection: keep-alive\r\n" if keep_alive else ""
        sock.sendall(request(version="1.0", extra=extra))
        reader = Reader(sock)
        answer = reader.answer()
        assert seen(answer)["SERVER_PROTOCOL"] == "HTTP/1.0"
        assert answer is not None
        if keep_alive:
            assert answer[1]["connection"] == "keep-alive"
            sock.sendall(request(version="1.0"))
            assert reader.answer() is not None
        else:
            assert answer[1]["connection"] == "close"
        assert reader.closed()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 300_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"y" * 300_000, 431),
    ],
    ids=["garbage", "length-and-chunked", "two-lengths", "upgrade", "huge-head", "endless-head"],
)
def test_bad_requests_are_refused_and_the_connection_closed(data: bytes, status: int) -> None:
    app = EchoApp()
    with running(app) as server:
        with connect(server) as sock:
            with contextlib.suppress(OSError):  # the server may close before it all went
                sock.sendall(data)
            reader = Reader(sock)
            answer = reader.answer()
            assert answer is not None
            assert answer[0] == status, answer
            assert reader.closed()
        with connect(server) as sock:
            sock.sendall(request())
            assert seen(Reader(sock).answer())
    assert app.most_inside <= 1  # the refused one never reached the app


def test_body_limits_hand_the_app_what_it_refuses() -> None:
    with running(EchoApp(), max_body=10) as server:
        with connect(server) as sock:
            # Announced too large: not read, the app sees the length (and refuses it).
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            reader = Reader(sock)
            echoed = seen(reader.answer())
            assert (echoed["CONTENT_LENGTH"], echoed["body"]) == ("1000000", "")
            assert reader.closed()
        with connect(server) as sock:
            # Chunked past the limit: read to one byte past it, no further.
            head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head + b"8\r\n12345678\r\n8\r\n12345678\r\n")
            reader = Reader(sock)
            assert seen(reader.answer())["body"] == "12345678123"
            assert reader.closed()


def test_a_body_cut_short_is_never_passed_on_as_whole() -> None:
    class Reading(EchoApp):
        def __call__(
            self, environ: dict[str, Any], start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            try:
                environ["wsgi.input"].read()
                environ["wsgi.input"].read()
            except OSError as exc:
                start_response("400 Bad Request", [])
                return [type(exc).__name__.encode()]
            start_response("200 OK", [])
            return [b"whole"]

    with running(Reading(), channel_timeout=0.5) as server:
        for tail, expected in [(b"", b"ConnectionResetError"), (None, b"TimeoutError")]:
            with connect(server) as sock:
                head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                sock.sendall(head + b"5\r\nabcde\r\n")
                if tail is not None:
                    sock.shutdown(socket.SHUT_WR)  # closed mid-body
                answer = Reader(sock).answer()
                assert answer is not None
                assert answer[2] == expected


def test_turns_bound_the_app_and_a_slow_client_holds_none() -> None:
    app = EchoApp()
    with running(app, threads=1) as server:
        app.gate.clear()
        with connect(server) as slow, connect(server) as first, connect(server) as second:
            slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")  # and nothing more
            first.sendall(request("/first"))
            assert app.entered.acquire(timeout=WAIT)  # the first has the one turn
            second.sendall(request("/second"))
            app.gate.set()
            assert seen(Reader(first).answer())["PATH_INFO"] == "/first"
            assert seen(Reader(second).answer())["PATH_INFO"] == "/second"
    assert app.most_inside == 1


def test_the_connection_limit_holds_new_connections_until_one_ends() -> None:
    with running(EchoApp(), connection_limit=2) as server:
        first, second = connect(server), connect(server)
        try:
            for sock in (first, second):  # both accepted and served
                sock.sendall(request())
                assert seen(Reader(sock).answer())
            third = connect(server)  # the kernel's backlog takes it
            third.sendall(request("/third"))
            third.settimeout(0.5)
            with pytest.raises(TimeoutError):
                third.recv(1)  # not accepted while two are open
            third.settimeout(WAIT)
            first.close()
            assert seen(Reader(third).answer())["PATH_INFO"] == "/third"
            third.close()
        finally:
            first.close()
            second.close()


def test_an_app_error_is_500_and_the_server_goes_on() -> None:
    with running(EchoApp()) as server, connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(request("/fail"))
        failed = reader.answer()
        assert failed is not None
        assert failed[0] == 500
        sock.sendall(request("/after"))
        assert seen(reader.answer())["PATH_INFO"] == "/after"


def test_stopping_closes_idle_connections_and_finishes_running_requests() -> None:
    app = EchoApp()
    server = ThreadServer(app, "127.0.0.1", 0, threads=2, max_body=1024)
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    idle, busy = connect(server), connect(server)
    try:
        idle.sendall(request())
        assert seen(Reader(idle).answer())
        app.gate.clear()
        busy.sendall(request("/busy"))
        assert app.entered.acquire(timeout=WAIT)
        assert app.entered.acquire(timeout=WAIT)  # (the idle one's, then the busy one's)
        stopping = threading.Thread(target=server.close, kwargs={"grace": WAIT})
        stopping.start()
        assert Reader(idle).closed()  # the idle connection is closed at once
        app.gate.set()
        reader = Reader(busy)
        answer = reader.answer()
        assert seen(answer)["PATH_INFO"] == "/busy"  # the running one is answered
        assert answer is not None
        assert answer[1]["connection"] == "close"
        stopping.join(WAIT)
        assert not stopping.is_alive()
        serving.join(WAIT)
        assert not serving.is_alive()
        with pytest.raises(ConnectionRefusedError):
            connect(server).close()  # no longer listening
    finally:
        idle.close()
        busy.close()
        app.gate.set()
        server.close(grace=0)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[ThreadServer]:
    with running(EchoApp(), channel_timeout=2.0) as server:
        yield server


HEADS = st.sampled_from(
    [
        b"",
        b"POST / HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"GET http://h/p?q HTTP/1.0\r\n",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(head=HEADS, tail=st.binary(max_size=300))
def test_any_bytes_get_an_answer_or_a_close_and_the_server_goes_on(
    fuzzed: ThreadServer, head: bytes, tail: bytes
) -> None:
    with connect(fuzzed) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(head + tail)
            sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        with contextlib.suppress(OSError):
            while (answer := reader.answer()) is not None:
                assert 100 <= answer[0] < 600
    with connect(fuzzed) as sock:
        sock.sendall(request("/still"))
        assert seen(Reader(sock).answer())["PATH_INFO"] == "/still"
