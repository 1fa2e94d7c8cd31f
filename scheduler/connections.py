"""Bounding what clients without a key can hold of the API server: its open connections
(``BoundedSite``), the file descriptors they use (``raise_fd_limit``, ``connection_cap``)
and the log when accept() still runs out of them (``quiet_accept_errors``).

aiohttp has no cap on connections: past the file descriptor limit accept() fails, the
listener stops answering anyone, and asyncio logs a traceback per failed accept. Here a
connection past the cap first takes the place of the oldest idle one: one that has sent
nothing since it opened or since its last answer was written (a client about to send a
request does so at once, so an idle one waits in keep-alive or is an attacker's). A
connection with a request in progress is never closed for another; when every one has
one, the newcomer is answered 503 and closed, as PostgreSQL answers "too many clients"
with a healthy listener. (nginx likewise reuses its connections waiting for a first
request or in keep-alive when it runs out.) One address (loopback aside) may hold at
most ``max_per_client`` of them, so that it cannot take every slot with requests it
trickles in. Each connection's requests that arrive whole are answered here, without
aiohttp (``direct_api.py``), until one does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import struct
import sys
import time
import typing
from collections.abc import Callable, Coroutine
from typing import Any

try:  # POSIX only
    import fcntl
    import resource
    import termios
except ImportError:  # pragma: no cover - Windows: no open files limit to raise
    fcntl = resource = termios = None  # type: ignore[assignment]

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..core.http import Response
from .direct_api import DirectApi, WholeRequest, answer_bytes, answer_head, whole_request

logger = logging.getLogger(__name__)

FD_RESERVE = 512
"""File descriptors kept for everything but the API's open connections, out of the
process's limit (at most half of it): the database, attempts to endpoints, and sockets
accepted but not yet counted or closed but not yet released (asyncio accepts up to a
backlog's worth at once and closes a transport on its next turn)."""
LINGER = 2.0
"""Seconds a refused connection stays open to read what its client still sends, so that
the client reads the 503 rather than a reset."""
MAX_LINGERING = 64
"""Refused connections kept lingering at once; past it one is closed at once."""
WAITING_BYTES = 1024 * 1024
"""Bytes read past a request being answered directly before reading pauses until its
answer is written."""

_UNAVAILABLE = json.dumps(
    {
        "code": "unavailable",
        "message": "the scheduler has too many connections open (--max-connections); try again",
    }
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_UNAVAILABLE)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _UNAVAILABLE
)
_CLIENT_UNAVAILABLE = json.dumps(
    {
        "code": "unavailable",
        "message": "this address has too many connections open to the scheduler "
        "(--max-connections-per-client); try again",
    }
).encode()
CLIENT_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_CLIENT_UNAVAILABLE)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _CLIENT_UNAVAILABLE
)


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit where allowed;
    the soft limit now in force."""
    if resource is None:  # pragma: no cover
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def connection_cap(wanted: int, fd_limit: int) -> int:
    """``wanted``, lowered so that the API's connections leave room under ``fd_limit``
    for the rest of the process (``FD_RESERVE``, or half of a small limit)."""
    if fd_limit <= 0 or (resource is not None and fd_limit == resource.RLIM_INFINITY):
        return wanted
    room = fd_limit - min(FD_RESERVE, fd_limit // 2)
    return max(1, min(wanted, room))


class _Tracked(asyncio.Protocol):
    """One connection, seen by the site: whether it is idle (has sent nothing since it
    opened or since its last answer), and when it ends. Admitted or refused once
    connected (asyncio makes the protocols of a batch of accepted sockets before
    connecting any): then the count is exact, and the older connections' sockets can be
    looked at. Its requests are answered directly (``direct_api.py``) while each comes
    whole in one read; the first that does not hands the connection to aiohttp's
    protocol (``inner``) for good."""

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], site: BoundedSite) -> None:
        self.make_inner = make_inner
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.idle = True
        self.client: str | None = None
        """The address counted against the cap per client; None: not counted."""
        self.inner: asyncio.Protocol | None = None
        self.answering: asyncio.Future[None] | None = None
        """The request being answered directly, if any."""
        self.waiting: list[bytes] = []
        """What came while it was: read once it is answered."""
        self.waiting_size = 0
        self.quiet_until = 0.0
        self.quiet_timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without deriving from asyncio.Transport).
        transport = typing.cast(asyncio.Transport, transport)
        self.transport = transport
        self.client = capped_client(transport.get_extra_info("peername"))
        refusal = self.site.admit(self)
        if refusal is not None:
            refused = _Refused(self.site, refusal)
            transport.set_protocol(refused)
            refused.connection_made(transport)
            return
        if self.site.direct is None:
            self._hand_over()
        else:
            self._quiet_for(self.site.keepalive_timeout)

    def _hand_over(self) -> asyncio.Protocol:
        """aiohttp's protocol, serving the connection from here on."""
        if self.quiet_timer is not None:
            self.quiet_timer.cancel()
            self.quiet_timer = None
        self.inner = self.make_inner()
        self.inner.connection_made(typing.cast(asyncio.Transport, self.transport))
        return self.inner

    def data_received(self, data: bytes) -> None:
        if self.idle:
            self.site.became_busy(self)
        if self.inner is not None:
            self.inner.data_received(data)
        elif self.answering is not None:
            # Answers go out in order: the next request waits for this one's.
            self.waiting.append(data)
            self.waiting_size += len(data)
            if self.waiting_size > WAITING_BYTES and self.transport is not None:
                self.transport.pause_reading()
        else:
            self._read(data)

    def _read(self, data: bytes) -> None:
        direct = self.site.direct
        assert direct is not None
        request = whole_request(data, direct.paths)
        if request is None:
            self._hand_over().data_received(data)
            return
        self.answering = _started(self._answer(direct, request))
        self.answering.add_done_callback(self._answered)

    async def _answer(self, direct: DirectApi, request: WholeRequest) -> None:
        answer = await direct.answer(request)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        closes = isinstance(answer, Response) and answer.header("Connection") is not None
        keep_alive = request.keep_alive and not closes and not self.site.stopping
        if isinstance(answer, Response):
            transport.write(answer_bytes(answer, keep_alive=keep_alive))
        else:
            fields = [("Content-Type", answer.content_type)]
            transport.write(answer_head(200, fields, answer.length, keep_alive=keep_alive))
            for piece in answer.pieces:
                # Each piece once the client has taken most of the one before.
                await self.writable.wait()
                if transport.is_closing():
                    return
                transport.write(piece)
        if not keep_alive:
            transport.close()  # once the answer is written
            return
        # The next request is read once the client has taken most of this answer: one
        # that sends requests without reading the answers cannot pile them up here.
        await self.writable.wait()
        if transport.is_closing():
            return
        self.answering = None
        waiting, self.waiting, self.waiting_size = self.waiting, [], 0
        if waiting:
            transport.resume_reading()
            self._read(b"".join(waiting))
            return
        self.answered()
        self._quiet_for(self.site.keepalive_timeout)

    def _answered(self, answering: asyncio.Future[None]) -> None:
        if self.answering is answering:
            self.answering = None
        transport = self.transport
        if answering.cancelled():
            if transport is not None:
                transport.close()
        elif answering.exception() is not None:
            logger.error("answering a request failed", exc_info=answering.exception())
            if transport is not None:
                transport.abort()

    def _quiet_for(self, seconds: float) -> None:
        """Close the connection if it sends nothing for ``seconds`` (as aiohttp's
        keep-alive timeout does for the connections it serves)."""
        loop = asyncio.get_running_loop()
        self.quiet_until = loop.time() + seconds
        if self.quiet_timer is None:
            self.quiet_timer = loop.call_at(self.quiet_until, self._quiet)

    def _quiet(self) -> None:
        self.quiet_timer = None
        transport = self.transport
        if self.inner is not None or transport is None or self.answering is not None:
            return  # aiohttp's to time now, or a request's answer sets it again
        loop = asyncio.get_running_loop()
        if loop.time() < self.quiet_until:
            self.quiet_timer = loop.call_at(self.quiet_until, self._quiet)
        elif self.idle:
            transport.close()

    def stop(self) -> None:
        """The server stops: closed now if idle, else once its answer is written
        (aiohttp closes those it serves)."""
        if self.inner is None and self.answering is None and self.transport is not None:
            self.transport.close()

    def answered(self) -> None:
        """An answer was written: the connection is idle again unless more of a request
        is waiting, in the socket or queued by aiohttp (a pipelined one)."""
        if self.idle or self.transport is None or self.transport.is_closing():
            return
        # aiohttp keeps the requests it has read but not handled yet in ``_messages``
        # (no public way to ask); were it renamed, a pipelined request's connection
        # could be closed as idle, as if the client had not sent it yet.
        if unread(self.transport) or getattr(self.inner, "_messages", None):
            return
        self.site.became_idle(self)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None  # closed, a request being answered cancelled (as aiohttp does)

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.forget(self)
        if self.quiet_timer is not None:
            self.quiet_timer.cancel()
        if self.answering is not None:
            self.answering.cancel()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()
        else:
            self.writable.clear()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
        else:
            self.writable.set()


def _started(answering: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task of ``answering``, run at once up to its first wait where Python can (as
    aiohttp runs its handlers): a request's handling begins in this turn of the loop."""
    if sys.version_info >= (3, 12):
        return asyncio.Task(answering, loop=asyncio.get_running_loop(), eager_start=True)
    return asyncio.ensure_future(answering)


class AnswersSeen(AbstractAccessLogger):
    """Not a log: aiohttp tells its access logger of each answer once it is written,
    which is when a connection's request has ended (``AppRunner(access_log_class=...)``)."""

    @property
    def enabled(self) -> bool:
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        transport = request.transport
        protocol = None if transport is None else transport.get_protocol()
        if isinstance(protocol, _Tracked):
            protocol.answered()


def capped_client(peer: object) -> str | None:
    """The address of a connection's client, to count against the cap per client; None
    for loopback (a proxy on the same machine or a local development setup is one
    address for all its clients) and for what is no IP address."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        address = ipaddress.ip_address(peer[0].partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return None if address.is_loopback else str(address)


class _Refused(asyncio.Protocol):
    """A connection past a cap: answered 503 at once, whatever it sends, and closed."""

    def __init__(self, site: BoundedSite, refusal: bytes) -> None:
        self.site = site
        self.refusal = refusal
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)
        self.transport = transport
        transport.write(self.refusal)
        if len(self.site.lingering) >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        # Closing with unread bytes would reset the connection, and the client might
        # lose the answer: the write side is closed, what comes is read for a moment.
        transport.write_eof()
        self.site.lingering.add(self)
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        if self.transport is not None:
            self.transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.lingering.discard(self)
        if self.timer is not None:
            self.timer.cancel()


def per_client_cap(max_connections: int) -> int:
    """The default cap per client address: a quarter of ``max_connections``, so that
    one address cannot hold every connection while three quarters stay for the rest."""
    return max(1, max_connections // 4)


class BoundedSite(web.TCPSite):
    """A TCP site that keeps at most ``max_connections`` connections open, at most
    ``max_per_client`` of them from one address other than loopback."""

    def __init__(
        self,
        runner: web.BaseRunner,
        *args: Any,
        max_connections: int,
        max_per_client: int | None = None,
        direct: DirectApi | None = None,
        keepalive_timeout: float = 75.0,
        **kw: Any,
    ):
        super().__init__(runner, *args, **kw)
        self.direct = direct
        """The requests answered without aiohttp (None: all go to aiohttp)."""
        self.keepalive_timeout = keepalive_timeout
        """Seconds a connection may stay quiet (aiohttp's own, for those it serves)."""
        self.stopping = False
        self.max_connections = max_connections
        self.max_per_client = (
            per_client_cap(max_connections) if max_per_client is None else max_per_client
        )
        # Open connections: the idle ones in the order they became idle (the first has
        # been idle longest), and those with a request in progress.
        self.idle: dict[_Tracked, None] = {}
        self.busy: set[_Tracked] = set()
        self.per_client: dict[str, int] = {}
        self.lingering: set[_Refused] = set()
        self.refusals = 0
        self.evictions = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    def _protocol(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        return lambda: _Tracked(server, self)

    async def stop(self) -> None:
        await super().stop()
        self.stopping = True
        for connection in [*self.idle, *self.busy]:
            connection.stop()

    @property
    def connections(self) -> int:
        return len(self.idle) + len(self.busy)

    def admit(self, connection: _Tracked) -> bytes | None:
        """Count ``connection`` in, making room if needed; else the answer that refuses
        it."""
        client = connection.client
        if (
            client is not None
            and self.per_client.get(client, 0) >= self.max_per_client
            and not self._evict(client)
        ):
            self.refusals += 1
            return CLIENT_REFUSAL
        if self.connections >= self.max_connections and not self._evict():
            self.refusals += 1
            return REFUSAL
        self.idle[connection] = None
        if client is not None:
            self.per_client[client] = self.per_client.get(client, 0) + 1
        return None

    def became_busy(self, connection: _Tracked) -> None:
        connection.idle = False
        if self.idle.pop(connection, False) is None:
            self.busy.add(connection)

    def became_idle(self, connection: _Tracked) -> None:
        if connection in self.busy:
            self.busy.discard(connection)
            connection.idle = True
            self.idle[connection] = None  # at the end of the line

    def forget(self, connection: _Tracked) -> None:
        """``connection`` has ended (or is being closed): no longer counted."""
        counted = self.idle.pop(connection, False) is None
        if connection in self.busy:
            self.busy.discard(connection)
            counted = True
        client = connection.client
        if counted and client is not None:
            left = self.per_client[client] - 1
            if left:
                self.per_client[client] = left
            else:
                del self.per_client[client]

    def _evict(self, client: str | None = None) -> bool:
        """Close the connection idle for longest (of ``client``, if given), if any."""
        while True:
            # The first in line, or the client's first (rarer: a scan).
            oldest = next((c for c in self.idle if client is None or c.client == client), None)
            if oldest is None:
                return False
            if unread(oldest.transport):
                # Bytes of a request are there, not yet read: it is no idle one.
                self.became_busy(oldest)
                continue
            self.forget(oldest)
            self.evictions += 1
            transport = oldest.transport
            if transport is not None:
                # An answer still unsent is one its client does not read: dropped.
                if transport.get_write_buffer_size():
                    transport.abort()
                else:
                    transport.close()
            return True


def unread(transport: asyncio.Transport | None) -> bool:
    """Whether bytes have arrived on ``transport``'s socket that were not read yet."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None or fcntl is None:
        return False
    try:
        count = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4)
    except OSError:
        return False
    return bool(struct.unpack("i", count)[0])


ACCEPT_FAILED = "socket.accept() out of system resource"
LOG_EVERY = 10.0
"""Seconds between two log lines of accept() failures."""


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def quiet_accept_errors(
    loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic
) -> ExceptionHandler | None:
    """Log failed accepts (out of file descriptors) once per ``LOG_EVERY`` seconds with
    their count, not with a traceback each: asyncio retries them in a tight loop, and the
    log would grow by thousands of lines a second. Other errors go to the handler that
    was there before, which is returned (to put back when the server stops)."""
    previous = loop.get_exception_handler()
    state = {"next": 0.0, "count": 0}

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        state["count"] += 1
        now = clock()
        if now < state["next"]:
            return
        state["next"] = now + LOG_EVERY
        logger.error(
            "cannot accept connections: %s (%d time(s) since the last report); raise the "
            "open files limit (LimitNOFILE) or lower --max-connections",
            context.get("exception"),
            state["count"],
        )
        state["count"] = 0

    loop.set_exception_handler(handle)
    return previous
