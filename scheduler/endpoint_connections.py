"""HTTP/1.1 connections to function endpoints, kept open between Run requests.

The scheduler sends one kind of request, a POST of a known length, and reads one kind of
answer, bounded; a general client's machinery (cookies, redirects, proxies, multipart,
its request and response objects) cost ~0.1-0.2 ms of its event loop per call
(aiohttp's, profiled), on the path of every call's start. Here a request is one write of
bytes built by the caller, and the answer is parsed by httptools (llhttp, Node.js's
parser, in C): 1xx answers skipped, bodies of a length, chunked, or until the
connection closes, headers bounded (``MAX_HEAD_BYTES``), the body no further than the
caller's limit.

At most ``MAX_CONNECTIONS`` are open to one endpoint at once; a request past them waits
for one, in turn. A connection is reused while both ends keep it alive, forgotten when
the endpoint closes it, and closed after ``IDLE_SECONDS`` unused. Before one is reused,
its socket is asked whether anything came while it was idle: an endpoint's close (its
keep-alive timeout) that the event loop has not read yet, which would fail the request
written on it. A request is never sent twice: one whose connection the endpoint closed
in the instant it was written (a close still on the network) fails as TCP_ERROR, and the
call is retried as any other.

A connection whose peer falls silent is given up after ``SILENT_SECONDS`` (TCP keep-alive
probes and TCP_USER_TIMEOUT, where the platform has them): a host that crashed or was cut
off while its function ran, or a connection the endpoint's kernel dropped after the
handshake (its accept queue full), which this side would otherwise believe open until
the attempt's timeout (5 minutes by default, hours for long functions). A slow function
is not silence: its host acknowledges the request and the probes while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import httptools

from ..core.errors import DispatchletError

MAX_HEAD_BYTES = 64 * 1024
"""The most bytes of an answer read before its headers end (1xx answers' included)."""
IDLE_SECONDS = 15.0
"""How long an unused connection is kept open (aiohttp's default)."""
MAX_CONNECTIONS = 100
"""Connections open at once to one endpoint (host and port), as aiohttp's client
allowed. Servers take about as many (waitress's and ``dispatchlet serve``'s limit is
100) and leave one past theirs unaccepted, its request unread until another of theirs
closes: seconds, in a long burst; here such a request waits for a connection instead,
and goes as soon as one is free."""
MAX_IDLE = 512
"""The most unused connections kept open to one endpoint (host and port)."""
SPARE_IDLE = 4
"""Unused connections kept for ``IDLE_SECONDS`` to each endpoint: those used last. The
others, left by a burst of calls, are closed once unused for ``SURPLUS_SECONDS`` (up to
twice that: a sweep is timed by the connection returned last): an endpoint's server
pays for every connection it holds (waitress looks at each one at every turn of its
loop)."""
SURPLUS_SECONDS = 1.0
SILENT_SECONDS = 30.0
"""How long an endpoint's host may leave what was sent unacknowledged, or keep-alive
probes unanswered, before its connection is given up (its attempt a TCP_ERROR, retried):
as long as a connection may take to open."""
_POLL = hasattr(select, "poll")  # not on Windows
_SWEEP_SLACK = 0.05
"""Seconds a sweep may come late rather than be scheduled again."""


class Answer(NamedTuple):
    """An endpoint's answer: its status, its headers (names in lower case, a repeated
    one's values joined by ", "), and its body, or the start of it (``cut``) when it was
    longer than the limit."""

    status: int
    headers: dict[str, str]
    body: bytearray
    length: int | None
    """The announced length of the body (Content-Length), if any."""
    cut: bool


class EndpointClosed(DispatchletError, ConnectionError):
    """The endpoint closed the connection (or reset it) before its answer was whole."""


class InvalidHttp(DispatchletError):
    """What the endpoint sent is not an HTTP/1.1 answer this client reads."""


Limit = Callable[[int, dict[str, str]], int]
"""The most of an answer's body to read, from its status and headers."""


class Target(NamedTuple):
    """Where to connect: ``scheme`` (http or https), host and port."""

    scheme: str
    host: str
    port: int


class Connections:
    """Open connections to endpoints, each reused by one request at a time."""

    def __init__(self, *, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[Target, list[_Connection]] = {}
        self._busy: Counter[Target] = Counter()
        """Connections in use per endpoint, and being opened (``MAX_CONNECTIONS``)."""
        self._waiting: dict[Target, deque[asyncio.Future[None]]] = {}
        """The requests waiting for a connection, per endpoint, in turn."""
        self._tls: ssl.SSLContext | None = None
        self._sweeping: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0
        """When the sweep ``_sweeping`` is due (``time.monotonic``)."""
        self._closed = False

    async def exchange(self, target: Target, request: bytes, limit: Limit) -> Answer:
        """Send ``request`` (all its bytes, head and body) to ``target``; its answer."""
        await self._turn(target)
        try:
            connection = self._reused(target) or await self._open(target)
            return await self._exchange(target, connection, request, limit)
        finally:
            self._pass_turn(target)

    async def _turn(self, target: Target) -> None:
        """Wait until a connection to ``target`` may be used (``MAX_CONNECTIONS``)."""
        waiting = self._waiting.get(target)
        if self._busy[target] < MAX_CONNECTIONS and not waiting:
            self._busy[target] += 1
            return
        if waiting is None:
            waiting = self._waiting[target] = deque()
        turn = asyncio.get_running_loop().create_future()
        waiting.append(turn)
        try:
            await turn  # ``_pass_turn`` hands over a connection's place, still counted
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._pass_turn(target)  # given a turn, then cancelled: the next one's
            else:
                with contextlib.suppress(ValueError):
                    waiting.remove(turn)
            raise

    def _pass_turn(self, target: Target) -> None:
        """A request to ``target`` is done with its connection: the next one waiting has
        its place."""
        waiting = self._waiting.get(target)
        while waiting:
            turn = waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._waiting.pop(target, None)
        self._busy[target] -= 1
        if self._busy[target] <= 0:
            del self._busy[target]

    async def close(self) -> None:
        """Close every unused connection, and each one in use as its answer ends."""
        self._closed = True
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    async def _exchange(
        self, target: Target, connection: _Connection, request: bytes, limit: Limit
    ) -> Answer:
        try:
            answer, keep = await connection.exchange(request, limit)
        except BaseException:  # cut short (cancelled, timed out): its state is unknown
            connection.close()
            raise
        if keep and not self._closed and connection.usable():
            self._keep(target, connection)
        else:
            connection.close()
        return answer

    def _reused(self, target: Target) -> _Connection | None:
        idle = self._idle.get(target)
        while idle:
            connection = idle.pop()
            if connection.usable() and not connection.spoke():
                return connection
            connection.close()
        return None

    def _keep(self, target: Target, connection: _Connection) -> None:
        idle = self._idle.setdefault(target, [])
        if len(idle) >= MAX_IDLE:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)
        kept_for = SURPLUS_SECONDS if len(idle) > SPARE_IDLE else IDLE_SECONDS
        self._sweep_by(connection.idle_since + kept_for)

    def _sweep_by(self, when: float) -> None:
        """Sweep at ``when`` (``time.monotonic``) at the latest."""
        if self._sweeping is not None:
            if self._sweep_at <= when + _SWEEP_SLACK:
                return
            self._sweeping.cancel()
        self._sweep_at = when
        delay = max(0.0, when - time.monotonic())
        self._sweeping = asyncio.get_running_loop().call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Close the connections unused for longer than they are kept (the ``SPARE_IDLE``
        used last: ``IDLE_SECONDS``; the others: ``SURPLUS_SECONDS``); again when the
        next of those left is due."""
        self._sweeping = None
        now = time.monotonic()
        due = float("inf")
        for target, idle in list(self._idle.items()):
            spares_from = len(idle) - SPARE_IDLE  # the list ends with those used last
            kept = []
            for index, connection in enumerate(idle):
                until = connection.idle_since + (
                    IDLE_SECONDS if index >= spares_from else SURPLUS_SECONDS
                )
                if connection.usable() and until > now:
                    kept.append(connection)
                    due = min(due, until)
                else:
                    connection.close()
            if kept:
                self._idle[target] = kept
            else:
                del self._idle[target]
        if self._idle:
            self._sweep_by(due)

    async def _open(self, target: Target) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if target.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                _Connection,
                target.host,
                target.port,
                ssl=tls,
                server_hostname=target.host if tls is not None else None,
            ),
            self.connect_timeout,
        )
        return connection


@dataclass(eq=False)
class _Reading:
    """One answer being read."""

    limit: Limit
    done: asyncio.Future[None]
    """Set once the answer is whole: ``answer`` and ``keep`` then hold it. (Not the
    future's result: asyncio holds the future it woke a task with until the task's next
    wait, and a large body with it.)"""
    answer: Answer | None = None
    keep: bool = False
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    head_bytes: int = 0
    """Bytes received while the head was not whole."""
    header_bytes: int = 0
    """Bytes of the headers parsed."""
    body: bytearray = field(default_factory=bytearray)
    filled: int | None = None
    """How much of ``body`` is read, when it was made at the announced length."""
    most: int = 0
    length: int | None = None
    cut: bool = False
    until_close: bool = False


class _Connection(asyncio.Protocol):
    """One connection: a request written, its answer parsed as it comes."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reading: _Reading | None = None
        self._lost = False
        self._socket = -1
        self.idle_since = 0.0

    # --- the client's side

    def usable(self) -> bool:
        """Whether the connection is open, as far as the event loop knows."""
        return not self._lost and self._transport is not None and not self._transport.is_closing()

    def spoke(self) -> bool:
        """Whether the endpoint sent something (its close, most likely) that the event loop
        has not read yet: an idle connection's socket that is readable. (Over TLS, it
        may be a message of TLS's own: a new connection then, needlessly but safely.)"""
        try:
            if _POLL:  # no limit on the descriptor's number, as select's 1024
                watch = select.poll()
                watch.register(self._socket, select.POLLIN)
                return bool(watch.poll(0))
            readable, _, _ = select.select([self._socket], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    async def exchange(self, request: bytes, limit: Limit) -> tuple[Answer, bool]:
        """The answer to ``request``, and whether the connection may be used again."""
        if self._transport is None or not self.usable():
            raise EndpointClosed("the connection was closed")
        loop = asyncio.get_running_loop()
        reading = self._reading = _Reading(limit, loop.create_future())
        self._transport.write(request)
        await reading.done
        answer, reading.answer = reading.answer, None
        assert answer is not None
        return answer, reading.keep

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._lost = True

    # --- asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._socket = sock.fileno()
        _watch_for_silence(sock)

    def data_received(self, data: bytes) -> None:
        reading = self._reading
        if reading is None or reading.done.done():
            self.close()  # nothing was asked: a confused endpoint
            return
        heading = reading.status == 0
        if heading:
            reading.head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidHttp("the endpoint answered with a protocol upgrade"))
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ or InvalidHttp(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(InvalidHttp(f"the endpoint's answer is not valid HTTP/1.1: {exc}"))
        if heading and reading.status == 0 and reading.head_bytes > MAX_HEAD_BYTES:
            too_long = f"the endpoint's answer has a head over {MAX_HEAD_BYTES} bytes"
            self._fail(InvalidHttp(too_long))
        if reading.cut and not reading.done.done():
            self._finish(keep=False)  # read as far as the limit: the rest is not wanted

    def eof_received(self) -> bool:
        reading = self._reading
        if reading is not None and reading.until_close and not reading.done.done():
            self._finish(keep=False)  # a body that ends with the connection
        self._lost = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        reading = self._reading
        if reading is not None and not reading.done.done():
            if reading.until_close and exc is None:
                self._finish(keep=False)
            else:
                self._fail(EndpointClosed(_lost(exc)))

    # --- httptools' callbacks

    def on_message_begin(self) -> None:
        self._current().headers.clear()

    def on_header(self, name: bytes, value: bytes) -> None:
        reading = self._current()
        reading.header_bytes += len(name) + len(value) + 4
        if reading.header_bytes > MAX_HEAD_BYTES:
            raise InvalidHttp(f"the endpoint's answer has a head over {MAX_HEAD_BYTES} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        before = reading.headers.get(key)
        reading.headers[key] = text if before is None else f"{before}, {text}"

    def on_headers_complete(self) -> None:
        reading = self._current()
        reading.status = self._parser.get_status_code()
        if 100 <= reading.status < 200:
            return  # an interim answer: the final one follows
        length = reading.headers.get("content-length")
        reading.length = int(length) if length is not None and length.isdigit() else None
        reading.most = reading.limit(reading.status, reading.headers)
        chunked = "chunked" in reading.headers.get("transfer-encoding", "").lower()
        reading.until_close = reading.length is None and not chunked
        if reading.length is not None and reading.length > reading.most and reading.status < 300:
            reading.cut = True  # too long to use: not read (an error's start tells the error)
        elif reading.length is not None:
            # Made once at its size and filled: a body grown as it comes would be copied
            # at each growth, and for a while held twice.
            reading.body = bytearray(min(reading.length, reading.most))
            reading.filled = 0

    def on_body(self, body: bytes) -> None:
        reading = self._current()
        if reading.cut:
            return
        if reading.filled is not None:
            start = reading.filled
            room = len(reading.body) - start
            # Copied into place as it is, not sliced first (a slice is a copy too).
            part = body if len(body) <= room else memoryview(body)[:room]
            reading.body[start : start + len(part)] = part
            reading.filled = start + len(part)
            reading.cut = len(body) > room
            return
        room = reading.most - len(reading.body)
        if len(body) > room:
            reading.body += body[:room]
            reading.cut = True
        else:
            reading.body += body

    def on_message_complete(self) -> None:
        reading = self._current()
        if 100 <= reading.status < 200:
            reading.status = 0
            return
        if not reading.cut:
            self._finish(keep=self._parser.should_keep_alive())

    # ---

    def _current(self) -> _Reading:
        if self._reading is None:
            raise InvalidHttp("the endpoint sent more than its answer")
        return self._reading

    def _finish(self, *, keep: bool) -> None:
        reading = self._reading
        assert reading is not None
        if reading.filled is not None and reading.filled < len(reading.body):
            del reading.body[reading.filled :]  # cut short by the connection's end
        answer = Answer(reading.status, reading.headers, reading.body, reading.length, reading.cut)
        if reading.status == 0:
            self._fail(EndpointClosed("the endpoint closed the connection before answering"))
            return
        reading.answer, reading.keep = answer, keep and not self._lost
        reading.done.set_result(None)
        self._reading = None

    def _fail(self, exc: BaseException) -> None:
        reading = self._reading
        if reading is not None and not reading.done.done():
            reading.done.set_exception(exc)
        self._reading = None
        self.close()


def _lost(exc: Exception | None) -> str:
    """Why a connection ended before its answer was whole."""
    if exc is None:
        return "the endpoint closed the connection before its answer was whole"
    if isinstance(exc, ConnectionError):  # a reset, mostly
        return f"the endpoint closed the connection before its answer was whole ({exc})"
    if isinstance(exc, TimeoutError):
        return (
            f"nothing heard from the endpoint's host for {SILENT_SECONDS:g} s:"
            f" the connection was given up ({exc})"
        )
    return f"the connection to the endpoint failed before its answer was whole ({exc})"


def _watch_for_silence(sock: socket.socket) -> None:
    """Keep-alive probes from a third of ``SILENT_SECONDS`` of silence on, and the
    connection given up once the host has acknowledged nothing for ``SILENT_SECONDS``
    (TCP_USER_TIMEOUT bounds the probes too). Options a platform lacks are left out."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    every = max(1, round(SILENT_SECONDS / 3))
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", every),
        ("TCP_KEEPINTVL", every),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", round(SILENT_SECONDS * 1000)),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)
