"""The HTTP/1.1 server of ``dispatchlet serve`` (and of ``call --app`` and ``dev``): a
thread per connection, which reads each request and has the Endpoint handle it itself.

waitress reads requests on one thread and hands each to a worker thread; on the start
of a call that hand-over and waitress's parsing in Python were about 0.17 ms of ~1.45
(measured in bench/scheduler.py's one-at-a-time calls). Here the request is parsed by
httptools (llhttp, in C) on the thread that then runs the function: no hand-over. It is
an adapter of its own: the core's ``Request`` is made from what was parsed, with no
WSGI environ in between.

What a client can hold stays bounded as with waitress:

- at most ``connection_limit`` connections (a thread each); past it, a newcomer takes
  the place of the connection idle longest (waiting for a next request, nothing of it
  received), which is closed, as nginx reuses its keep-alive connections; with a
  request in progress on every one, the newcomer is answered 503 (``Retry-After: 1``)
  and closed. Left in the kernel's backlog instead (waitress's way), a newcomer's
  request would wait unread until some connection ended: seconds, for a client that
  keeps its connections alive and busy, as the scheduler does;
- at most ``threads`` requests are handled at once: a request takes its turn only once
  it has arrived whole, so a slow client holds its connection's thread, never a turn;
- a head of at most ``max_head`` bytes (431), a body read no further than the
  Endpoint's limit plus one byte (a larger one gets its 400; one announced larger is not
  read at all);
- a connection that sends nothing for ``channel_timeout`` seconds is closed, or, in
  the middle of a body, the request is refused as stalled (400); an answer the client
  does not read for that long is given up.

An answer is written once the turn is over, so that a client slow to read holds none.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import httptools

from ..core.body import BodyReader
from ..core.errors import DispatchletError
from ..core.http import Request, Response, date_field, request_from_target, status_line

logger = logging.getLogger(__name__)

CONNECTION_LIMIT = 100
"""Connections open at once (waitress's default)."""
MAX_HEAD = 256 * 1024
"""Bytes of a request's line and header fields (waitress's default)."""
CHANNEL_TIMEOUT = 10.0
"""Seconds a connection may send nothing (or not read its answer) before it is given up."""
LINGER = 2.0
"""Seconds a connection closed by the server reads what its client still sends."""
LINGER_BYTES = 1 << 20
"""Bytes read so at most."""
MAX_REFUSED = 64
"""Newcomers refused past the connection limit and read so at once."""
STOP_GRACE = 5.0
"""Seconds a stop waits for the requests being handled to finish."""
LOCAL_THREADS = 2
"""Requests handled at once by the loopback server of ``call --app`` and ``dev``."""
_READ = 64 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class Served(Protocol):
    """What the server serves: an ``Endpoint`` (or one standing for the current one)."""

    @property
    def max_body_size(self) -> int: ...

    def handle(self, request: Request) -> Response: ...

    def reject(self, error: DispatchletError) -> Response: ...

    def body_reader(
        self, content_length: str | int | None, *, ends_without_length: bool, chunked: bool = False
    ) -> BodyReader: ...


class _Request:
    """One request as the parser reports it."""

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.length: int | None = None
        """The announced Content-Length (None: chunked, or no body)."""
        self.chunked = False
        self.limit = 0
        """The body's limit, the Endpoint's when the head arrived."""
        self.oversized_head = False
        self.headed = False
        self.complete = False
        self.keep_alive = False
        self.method = b"GET"
        self.version = "1.1"


class _Connection:
    """A connection's thread: reads requests, has each handled, writes the answers."""

    def __init__(self, server: ThreadServer, sock: socket.socket, peer: Any) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Request | None = None
        self.ready: list[_Request] = []
        self.head_bytes = 0
        self.waiting = True
        """Waiting for a new request, with nothing of it received (a stop may close it,
        and so may a newcomer past the connection limit)."""
        self.idle_since = time.monotonic()
        """Since when it has been waiting so (when ``waiting``)."""
        self.evicted = False
        """Closed to make room for a newcomer (under the server's lock)."""
        self.client_closed = False

    # --- the parser's callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        request.headed = True
        request.method = self.parser.get_method()
        request.version = self.parser.get_http_version()
        request.keep_alive = self.parser.should_keep_alive()
        self.head_bytes = 0
        head = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if head > self.server.max_head:
            request.oversized_head = True
            self._end_request()
            return
        expects = False
        for name, value in request.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                request.length = int(value)  # llhttp has checked it: digits, one value
            elif lowered == b"transfer-encoding":
                request.chunked = True
            elif lowered == b"expect":
                expects = True
        request.limit = self.server.served.max_body_size
        if request.length is not None and request.length > request.limit:
            self._end_request()  # refused unread: nothing more is parsed
            return
        if expects and request.version == "1.1" and (request.length or request.chunked):
            with contextlib.suppress(OSError):
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        room = request.limit + 1 - request.size
        if room > 0:
            request.body.append(body[:room])
            request.size += min(len(body), room)
        if request.size > request.limit:
            self._end_request()  # refused: the rest is not read

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.ready.append(self.current)
        self.current = None

    def _end_request(self) -> None:
        """Stop reading: the request is answered as it stands (refused), then the connection
        ends."""
        assert self.current is not None
        self.current.keep_alive = False
        self.ready.append(self.current)
        self.current = None
        raise _Cut

    # --- the connection's loop --------------------------------------------------------

    def run(self) -> None:
        try:
            self.sock.settimeout(self.server.channel_timeout)
            while self._serve_some():
                pass
        except Exception:  # never an uncaught exception in a thread: log it, drop it
            logger.exception("error on the connection from %s", self.peer)
        finally:
            self._close()
            self.server._ended(self)

    def _close(self) -> None:
        """Close, letting the client read the last answer: what it still sends is read
        and dropped for a moment first (closing on unread bytes resets the connection,
        and a reset can discard the answer before the client reads it)."""
        with contextlib.suppress(OSError):
            if not self.client_closed:
                self.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + LINGER
                drained = 0
                while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                    self.sock.settimeout(left)
                    data = self.sock.recv(_READ)
                    if not data:
                        break
                    drained += len(data)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _serve_some(self) -> bool:
        """Read what comes and answer the requests it completes; whether to go on."""
        if self.server.stopping and self.waiting:
            return False
        try:
            data = self.sock.recv(_READ)
        except TimeoutError:
            return self._incomplete(stalled=True)
        except OSError:
            self.client_closed = True
            return False
        if not data:
            self.client_closed = True
            return self._incomplete(stalled=False)
        self.waiting = False
        if self.current is None or not self.current.headed:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Cut):
                raise
        except httptools.HttpParserUpgrade:
            return self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.ready:
                return self._refuse(400, f"malformed request: {exc}")
            self.ready[-1].keep_alive = False  # answer those before it, then close
        if self.head_bytes > self.server.max_head and not self.ready:
            return self._refuse(431, "request head too large")
        while self.ready:
            request = self.ready.pop(0)
            if request.oversized_head:
                return self._refuse(431, "request head too large")
            if not self._answer(request):
                return False
        if self.current is None:
            self.idle_since = time.monotonic()
            self.waiting = True
        return True

    def _incomplete(self, *, stalled: bool) -> bool:
        """The client went quiet (``stalled``) or closed: a request it began with its
        head whole is answered that its body is incomplete."""
        request = self.current
        if request is None or not request.headed:
            return False
        request.keep_alive = False
        self._answer(request, stalled=stalled)
        return False

    def _refuse(self, status: int, message: str) -> bool:
        """Answer a request that cannot be read with ``status``; the connection ends."""
        text = f"{message}\n".encode()
        head = (
            f"HTTP/1.1 {status_line(status)}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            self.sock.sendall(head.encode("latin-1") + text)
        return False

    def _answer(self, request: _Request, *, stalled: bool = False) -> bool:
        """Handle ``request`` and write its answer; whether to keep reading."""
        response = self.server.respond(request, stalled=stalled)
        keep = request.keep_alive and request.complete and not self.server.stopping
        lines = [f"HTTP/1.1 {status_line(response.status)}"]
        lines += [f"{n}: {v}" for n, v in response.headers if n.lower() not in _HOP_BY_HOP]
        lines.append(f"Date: {date_field()}")
        body = response.body
        if response.status >= 200 and response.status not in (204, 304):
            lines.append(f"Content-Length: {len(body)}")
        else:
            body = b""
        if not keep:
            lines.append("Connection: close")
        elif request.version == "1.0":
            lines.append("Connection: keep-alive")
        if request.method == b"HEAD":
            body = b""
        data = "\r\n".join([*lines, "", ""]).encode("latin-1") + body
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return keep


class _Cut(Exception):
    """Raised in a parser callback to stop reading a request."""


class ThreadServer:
    """``served`` on ``host``:``port`` (every address the name has), a thread per
    connection; at most ``threads`` requests handled at once."""

    def __init__(
        self,
        served: Served,
        host: str,
        port: int,
        *,
        threads: int,
        max_head: int = MAX_HEAD,
        connection_limit: int = CONNECTION_LIMIT,
        channel_timeout: float = CHANNEL_TIMEOUT,
    ) -> None:
        self.served = served
        self.max_head = max_head
        self.connection_limit = connection_limit
        self.channel_timeout = channel_timeout
        self.stopping = False
        self._turns = threading.BoundedSemaphore(threads)
        self._lock = threading.Condition()
        self._connections: set[_Connection] = set()
        self._running = 0
        self.listeners = _listen(host, port)
        self.addresses = [_address(s) for s in self.listeners]
        # Written to by close(), to end serve()'s wait at once.
        self._wake, self._waker = socket.socketpair()
        self._serving = False

    def serve(self) -> None:
        """Accept connections until ``close()`` (or an exception here, as a signal's
        KeyboardInterrupt)."""
        with self._lock:
            if self.stopping:
                return
            self._serving = True
        try:
            self._accept_until_stopped()
        finally:
            self._wake.close()

    def _accept_until_stopped(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in self.listeners:
                selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            refusals = _Refusals(selector)
            try:
                while not self.stopping:
                    for key, _ in selector.select(refusals.wait(0.5)):
                        if key.data is refusals:
                            refusals.read(key.fileobj)
                        elif key.fileobj is not self._wake:
                            self._accept(key.fileobj, refusals)  # type: ignore[arg-type]
                    refusals.expire()
            finally:
                refusals.close()

    def _make_room(self) -> bool:
        """Whether a newcomer may have a connection: under the limit, or past it once the
        connection idle longest is closed for it (its thread ends on its own)."""
        with self._lock:
            staying = [c for c in self._connections if not c.evicted]
            if len(staying) < self.connection_limit:
                return True
            idle = [c for c in staying if c.waiting]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            oldest.evicted = True
        with contextlib.suppress(OSError):
            oldest.sock.shutdown(socket.SHUT_RDWR)
        return True

    def _accept(self, listener: socket.socket, refusals: _Refusals) -> None:
        try:
            sock, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors: wait for some to be freed
            if self.stopping:  # the listener was closed under it
                return
            logger.warning("cannot accept a connection: %s", exc)
            time.sleep(0.1)
            return
        if not self._make_room():
            refusals.refuse(sock)
            return
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, sock, peer)
        with self._lock:
            self._connections.add(connection)
        thread = threading.Thread(target=connection.run, name="dispatchlet-connection")
        thread.daemon = True
        try:
            thread.start()
        except RuntimeError:  # no thread can be started: the connection is dropped
            logger.warning("cannot start a thread for a connection")
            sock.close()
            self._ended(connection)

    def _ended(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._lock.notify_all()

    def respond(self, request: _Request, *, stalled: bool = False) -> Response:
        """The Endpoint's answer to ``request``, handled in its turn."""
        if self.stopping:
            return _text(503, "the server is stopping")
        served = self.served
        try:
            body = _body(served, request, stalled=stalled)
        except DispatchletError as exc:
            return served.reject(exc)
        target = request.target.decode("latin-1")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
        hosts = [v for n, v in headers if n.lower() == "host"]
        if len(hosts) > 1:  # which one was signed? (RFC 9112 3.2: 400)
            return _text(400, "more than one Host header")
        host = hosts[0] if hosts else ""
        method = request.method.decode("latin-1")
        try:
            core = request_from_target(method, target, host, headers, body, "http")
        except ValueError:
            return _text(400, "malformed request target")
        with self._turns:
            with self._lock:
                self._running += 1
            try:
                return served.handle(core)
            except Exception:  # handle() answers its own errors: this is a bug
                logger.exception("error while handling %s %s", method, target)
                return _text(500, "internal server error")
            finally:
                with self._lock:
                    self._running -= 1
                    self._lock.notify_all()

    def close(self, grace: float = STOP_GRACE, *, abandon: bool = False) -> None:
        """Stop: no new connection or request; idle connections closed; the requests
        being handled waited for up to ``grace`` seconds (``abandon``: not waited for,
        their connections shut down, their answers dropped)."""
        with self._lock:
            self.stopping = True
            self._lock.notify_all()
            if not self._serving:
                self._wake.close()
        with contextlib.suppress(OSError):
            self._waker.send(b"x")
        self._waker.close()
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            idle = [c for c in self._connections if c.waiting or abandon]
        for connection in idle:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + (0.0 if abandon else grace)
        with self._lock:
            while self._running and time.monotonic() < deadline:
                self._lock.wait(min(0.5, max(deadline - time.monotonic(), 0.0)))


def _body(served: Served, request: _Request, *, stalled: bool) -> bytes:
    """``request``'s body, or the Endpoint's error for what arrived of it."""
    reader = served.body_reader(
        None if request.chunked else request.length,
        ends_without_length=request.chunked,
        chunked=request.chunked,
    )
    if stalled:
        raise BodyReader.stalled()
    body = b"".join(request.body)
    if request.chunked and not request.complete and len(body) <= request.limit:
        # Without a length, a body cut short could pass for a whole one.
        raise BodyReader.broken(ConnectionResetError("closed in the middle of the body"))
    return reader.complete(body)


WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - recognised, not bound to


def local_url(host: str, port: int) -> str:
    """The URL to call a server listening on ``host``:``port`` from this machine."""
    if host in WILDCARDS:  # listening everywhere: call it on this machine
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\nContent-Length: 38\r\nConnection: close\r\n\r\n"
    b"every connection has a request going\r\n"
)


class _Refusals:
    """Newcomers past the connection limit, answered 503 on the accepting thread: each is
    then read, what it sends dropped, until it closes or for ``LINGER`` seconds (closing
    on unread bytes resets a connection, which can discard the answer before the client
    reads it), at most ``MAX_REFUSED`` at once (past them, one is closed at once)."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.deadlines: dict[socket.socket, float] = {}

    def refuse(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(_BUSY)
            sock.shutdown(socket.SHUT_WR)
            if len(self.deadlines) < MAX_REFUSED:
                self.selector.register(sock, selectors.EVENT_READ, self)
                self.deadlines[sock] = time.monotonic() + LINGER
                return
        sock.close()

    def read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)

    def wait(self, longest: float) -> float:
        """How long the accepting thread may wait for events: until the next deadline."""
        if not self.deadlines:
            return longest
        return max(0.0, min(longest, min(self.deadlines.values()) - time.monotonic()))

    def expire(self) -> None:
        now = time.monotonic()
        for sock in [s for s, deadline in self.deadlines.items() if deadline <= now]:
            self._drop(sock)

    def close(self) -> None:
        for sock in list(self.deadlines):
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.deadlines[sock]
        sock.close()


def _text(status: int, message: str) -> Response:
    text = f"{message}\n".encode()
    return Response(status, [("Content-Type", "text/plain; charset=utf-8")], text)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names (one each, as waitress)."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in dict.fromkeys((f, k, p, a) for f, k, p, _, a in found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _address(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


@contextmanager
def serving(served: Served, *, port: int = 0) -> Iterator[str]:
    """Serve ``served`` (an Endpoint) on loopback (``port``, or a free one) in background
    threads; yield its URL (``call --app`` and ``dev``).

    Leaving the block stops the server before it returns: its accepting thread has ended
    and its listening socket is closed. Functions still running (a call that timed out,
    Ctrl+C) are not waited for: their connections are shut down (the client sees the
    end) and their answers dropped."""
    server = ThreadServer(served, "127.0.0.1", port, threads=LOCAL_THREADS)
    thread = threading.Thread(target=server.serve, name="dispatchlet-server", daemon=True)
    thread.start()
    try:
        yield local_url(*server.addresses[0])
    finally:
        server.close(abandon=True)
        thread.join(STOP_GRACE)
        if thread.is_alive():
            # Said, not raised: this runs while the command ends, maybe on its own error.
            logger.warning("the local server did not stop within %g s", STOP_GRACE)
