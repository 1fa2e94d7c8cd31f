"""Bounding what clients without a key can hold of the API server: its open connections
(``BoundedSite``), the file descriptors they use (``raise_fd_limit``, ``connection_cap``)
and the log when accept() still runs out of them (``quiet_accept_errors``).

aiohttp has no cap on connections: past the file descriptor limit accept() fails, the
listener stops answering anyone, and asyncio logs a traceback per failed accept. Here a
connection past the cap first takes the place of the oldest one that has sent nothing
yet (a client about to send its request does so at once, so one that has sent nothing
is idle or an attacker's), and when every connection is busy it is answered 503 and
closed, as PostgreSQL answers "too many clients" with a healthy listener. (nginx also
reuses the connections that wait for their first request when it runs out.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

try:  # POSIX only
    import fcntl
    import resource
    import termios
except ImportError:  # pragma: no cover - Windows: no open files limit to raise
    fcntl = resource = termios = None  # type: ignore[assignment]

from aiohttp import web

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
    """aiohttp's protocol for one connection, seen by the site: whether the client has
    sent anything yet, and when the connection ends. Admitted or refused once connected
    (asyncio makes the protocols of a batch of accepted sockets before connecting any):
    then the count is exact, and the older connections' sockets can be looked at."""

    inner: asyncio.Protocol

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], site: BoundedSite) -> None:
        self.make_inner = make_inner
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.silent = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.site.admit(self):
            refused = _Refused(self.site)
            transport.set_protocol(refused)
            refused.connection_made(transport)
            return
        self.inner = self.make_inner()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.silent:
            self.silent = False
            if self.site.silent.pop(self, False) is None:
                self.site.busy.add(self)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.silent.pop(self, None)
        self.site.busy.discard(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Refused(asyncio.Protocol):
    """A connection past the cap: answered 503 at once, whatever it sends, and closed."""

    def __init__(self, site: BoundedSite) -> None:
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(REFUSAL)
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


class BoundedSite(web.TCPSite):
    """A TCP site that keeps at most ``max_connections`` connections open."""

    def __init__(self, runner: web.BaseRunner, *args: Any, max_connections: int, **kw: Any):
        super().__init__(runner, *args, **kw)
        self.max_connections = max_connections
        # Open connections: those that have sent nothing yet in order of arrival (the
        # first is the oldest), and the others.
        self.silent: dict[_Tracked, None] = {}
        self.busy: set[_Tracked] = set()
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

    @property
    def connections(self) -> int:
        return len(self.silent) + len(self.busy)

    def admit(self, connection: _Tracked) -> bool:
        """Count ``connection`` in, making room if needed; False: it is refused."""
        if self.connections >= self.max_connections and not self._evict():
            self.refusals += 1
            return False
        self.silent[connection] = None
        return True

    def _evict(self) -> bool:
        """Close the oldest connection that has sent nothing, if any."""
        while self.silent:
            oldest = next(iter(self.silent))
            del self.silent[oldest]
            if unread(oldest.transport):
                # Its first bytes are there, not yet read: it is no idle one.
                oldest.silent = False
                self.busy.add(oldest)
                continue
            self.evictions += 1
            if oldest.transport is not None:
                oldest.transport.close()
            return True
        return False


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
