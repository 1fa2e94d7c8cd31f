"""``dispatchlet serve``'s HTTP server (``ThreadServer``), in this process on loopback:
HTTP/1.1 framing, the bounds a client cannot pass, and stopping. Its conformance with the
endpoint (paths, bodies, limits, stalls) is tested beside gunicorn and waitress in
test_wsgi_servers.py, and under slow clients in test_wsgi_slow_clients.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dispatchlet.core.body import BodyReader
from dispatchlet.core.errors import DispatchletError
from dispatchlet.core.http import Request, Response
from dispatchlet.serving.thread_server import ThreadServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WAIT = 20.0  # generous: a bound on waits, never a measured time


class Echo:
    """Served: answers each request with what the server made of it, as JSON (``gate``
    holds requests until set); refuses a body as an Endpoint does, by ``BodyReader``."""

    def __init__(self, max_body_size: int = 1024) -> None:
        self.max_body_size = max_body_size
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Semaphore(0)

    def body_reader(
        self, content_length: str | int | None, *, ends_without_length: bool, chunked: bool = False
    ) -> BodyReader:
        return BodyReader(
            self.max_body_size,
            content_length,
            ends_without_length=ends_without_length,
            chunked=chunked,
        )

    def reject(self, error: DispatchletError) -> Response:
        return Response(400, [("Content-Type", "text/plain")], str(error).encode())

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.entered.release()
        try:
            assert self.gate.wait(WAIT)
            if request.path == "/fail":
                raise RuntimeError("the handler failed")
            seen = {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "authority": request.authority,
                "headers": [list(field) for field in request.headers],
                "body": request.body.decode("latin-1"),
                "thread": threading.current_thread().name,
                "thread_id": threading.get_ident(),
            }
            headers = [("Content-Type", "application/json"), ("Connection", "bogus")]
            return Response(200, headers, json.dumps(seen).encode())
        finally:
            with self.lock:
                self.inside -= 1


@contextlib.contextmanager
def running(served: Echo, **options: Any) -> Iterator[ThreadServer]:
    server = ThreadServer(served, "127.0.0.1", 0, **{"threads": 4, **options})
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


def seen(answer: tuple[int, dict[str, str], bytes] | None) -> dict[str, Any]:
    assert answer is not None
    assert answer[0] == 200, answer
    return dict(json.loads(answer[2]))


def test_a_connection_serves_requests_one_after_another_on_its_own_thread() -> None:
    with running(Echo()) as server, connect(server) as sock:
        reader = Reader(sock)
        threads = []
        for n in range(3):
            sock.sendall(request(f"/r{n}", f"body {n}".encode()))
            answer = reader.answer()
            echoed = seen(answer)
            assert (echoed["path"], echoed["body"]) == (f"/r{n}", f"body {n}")
            assert answer is not None
            assert "connection" not in answer[1]  # kept alive
            threads.append((echoed["thread"], echoed["thread_id"]))
        # The thread reading the connection handled each request: no hand-over.
        assert len(set(threads)) == 1
        assert threads[0][0] == "dispatchlet-connection"


def test_pipelined_requests_are_answered_in_order() -> None:
    with running(Echo()) as server, connect(server) as sock:
        sock.sendall(b"".join(request(f"/p{n}", b"x" * n) for n in range(5)))
        reader = Reader(sock)
        assert [seen(reader.answer())["path"] for _ in range(5)] == [f"/p{n}" for n in range(5)]


def test_chunked_body_and_expect_continue() -> None:
    with running(Echo()) as server, connect(server) as sock:
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
        assert ["Transfer-Encoding", "chunked"] in echoed["headers"]


def test_the_request_as_sent() -> None:
    with running(Echo()) as server, connect(server) as sock:
        extra = "Content-Type: text/plain\r\nX-Twice: a\r\nx-twice: b\r\nX_Under: kept\r\n"
        sock.sendall(request("/a%2Fb//c%20d;p?q=1&r", b"hi", extra=extra))
        reader = Reader(sock)
        echoed = seen(reader.answer())
        # Through a proxy: the target's authority wins over Host (RFC 9112 3.2.2).
        sock.sendall(request("http://other:8080/p%2F?x", b""))
        proxied = seen(reader.answer())
    # The path exactly as sent (what a signature covers), and the query apart.
    assert (echoed["path"], echoed["query"]) == ("/a%2Fb//c%20d;p", "q=1&r")
    assert (echoed["method"], echoed["authority"], echoed["body"]) == ("POST", "example", "hi")
    # Each field as sent, in order: names in their case, a repeated one twice.
    assert echoed["headers"] == [
        ["Host", "example"],
        ["Content-Length", "2"],
        ["Content-Type", "text/plain"],
        ["X-Twice", "a"],
        ["x-twice", "b"],
        ["X_Under", "kept"],
    ]
    assert (proxied["authority"], proxied["path"], proxied["query"]) == ("other:8080", "/p%2F", "x")


def test_answer_framing_is_the_servers() -> None:
    with running(Echo()) as server, connect(server) as sock:
        sock.sendall(request())
        reader = Reader(sock)
        answer = reader.answer()
        assert answer is not None
        # The handler's hop-by-hop field is dropped; the length is the body's.
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
    with running(Echo()) as server, connect(server) as sock:
        extra = "Connection: keep-alive\r\n" if keep_alive else ""
        sock.sendall(request(version="1.0", extra=extra))
        reader = Reader(sock)
        answer = reader.answer()
        assert seen(answer)["path"] == "/"
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
        (b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 300_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"y" * 300_000, 431),
    ],
    ids=[
        "garbage",
        "length-and-chunked",
        "two-lengths",
        "upgrade",
        "two-hosts",
        "huge-head",
        "endless-head",
    ],
)
def test_bad_requests_are_refused_and_the_connection_closed(data: bytes, status: int) -> None:
    served = Echo()
    with running(served) as server:
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
    assert served.most_inside <= 1  # the refused one never reached the handler


def refusal(sock: socket.socket) -> str:
    """The text of the 400 answered on ``sock``, once the connection is closed after it."""
    reader = Reader(sock)
    answer = reader.answer()
    assert answer is not None
    assert answer[0] == 400, answer
    assert answer[1]["connection"] == "close"
    assert reader.closed()
    return answer[2].decode()


def test_a_body_past_the_limit_is_refused_unread() -> None:
    with running(Echo(max_body_size=10)) as server:
        with connect(server) as sock:
            # Announced too large: refused before a byte of it is read.
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            assert refusal(sock) == "request body exceeds 10 bytes"
        with connect(server) as sock:
            # Chunked past the limit: read to one byte past it, no further.
            head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head + b"8\r\n12345678\r\n8\r\n12345678\r\n")
            assert refusal(sock) == "request body exceeds 10 bytes"
        with connect(server) as sock:
            # Exactly at the limit: served.
            sock.sendall(request(body=b"x" * 10))
            assert seen(Reader(sock).answer())["body"] == "x" * 10


@pytest.mark.parametrize(
    ("framing", "ending", "expected"),
    [
        ("length", "closed", "incomplete request body: 5 of 10 bytes arrived"),
        ("chunked", "closed", "incomplete request body (ConnectionResetError)"),
        ("length", "stalled", "incomplete request body: it stopped arriving (timed out)"),
        ("chunked", "stalled", "incomplete request body: it stopped arriving (timed out)"),
    ],
)
def test_a_body_cut_short_is_refused_never_passed_on_as_whole(
    framing: str, ending: str, expected: str
) -> None:
    served = Echo()
    with running(served, channel_timeout=0.5) as server, connect(server) as sock:
        if framing == "length":
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde")
        else:
            head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head + b"5\r\nabcde\r\n")
        if ending == "closed":
            sock.shutdown(socket.SHUT_WR)
        assert refusal(sock) == expected
    assert served.most_inside == 0


def test_turns_bound_the_handler_and_a_slow_client_holds_none() -> None:
    served = Echo()
    with running(served, threads=1) as server:
        served.gate.clear()
        with connect(server) as slow, connect(server) as first, connect(server) as second:
            slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")  # and nothing more
            first.sendall(request("/first"))
            assert served.entered.acquire(timeout=WAIT)  # the first has the one turn
            second.sendall(request("/second"))
            served.gate.set()
            assert seen(Reader(first).answer())["path"] == "/first"
            assert seen(Reader(second).answer())["path"] == "/second"
    assert served.most_inside == 1


def test_past_the_connection_limit_the_connection_idle_longest_makes_room() -> None:
    with (
        running(Echo(), connection_limit=2) as server,
        connect(server) as first,
        connect(server) as second,
    ):
        readers = {}
        for sock in (first, second):  # both accepted and served, then idle
            sock.sendall(request())
            readers[sock] = Reader(sock)
            assert seen(readers[sock].answer())
        with connect(server) as third:  # a third, past the limit
            third.sendall(request("/third"))
            assert seen(Reader(third).answer())["path"] == "/third"
            assert readers[first].answer() is None  # idle longest: closed for it
            second.sendall(request("/second"))  # the other one goes on
            assert seen(readers[second].answer())["path"] == "/second"


def test_past_the_connection_limit_with_every_connection_busy_a_newcomer_is_refused() -> None:
    served = Echo()
    with running(served, connection_limit=2, threads=2) as server:
        served.gate.clear()
        with connect(server) as first, connect(server) as second:
            for sock in (first, second):
                sock.sendall(request("/busy"))
            for _ in (first, second):
                assert served.entered.acquire(timeout=WAIT)
            with connect(server) as third:
                third.sendall(request("/third"))
                refused = Reader(third).answer()
                assert refused is not None
                status, headers, body = refused
                assert (status, headers["retry-after"], headers["connection"]) == (
                    503,
                    "1",
                    "close",
                )
                assert body == b"every connection has a request going\r\n"
                assert Reader(third).answer() is None  # and closed
            served.gate.set()
            for sock in (first, second):  # neither was touched
                assert seen(Reader(sock).answer())["path"] == "/busy"


def test_a_handler_error_is_500_and_the_server_goes_on() -> None:
    with running(Echo()) as server, connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(request("/fail"))
        failed = reader.answer()
        assert failed is not None
        assert failed[0] == 500
        sock.sendall(request("/after"))
        assert seen(reader.answer())["path"] == "/after"


def test_stopping_closes_idle_connections_and_finishes_running_requests() -> None:
    served = Echo()
    server = ThreadServer(served, "127.0.0.1", 0, threads=2)
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    idle, busy = connect(server), connect(server)
    try:
        idle.sendall(request())
        assert seen(Reader(idle).answer())
        served.gate.clear()
        busy.sendall(request("/busy"))
        assert served.entered.acquire(timeout=WAIT)
        assert served.entered.acquire(timeout=WAIT)  # (the idle one's, then the busy one's)
        stopping = threading.Thread(target=server.close, kwargs={"grace": WAIT})
        stopping.start()
        assert Reader(idle).closed()  # the idle connection is closed at once
        served.gate.set()
        reader = Reader(busy)
        answer = reader.answer()
        assert seen(answer)["path"] == "/busy"  # the running one is answered
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
        served.gate.set()
        server.close(grace=0)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[ThreadServer]:
    with running(Echo(), channel_timeout=2.0) as server:
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
        assert seen(Reader(sock).answer())["path"] == "/still"
