"""Unary API requests answered straight from a connection's bytes, without aiohttp.

Before aiohttp runs a handler it builds a request object and its body stream, and goes
through two turns of the event loop (a waiter, then a task): about 0.1 ms of a
Dispatch's way to its calls' start, and as much CPU per request. The common request
needs none of it: a client's POST, sent whole and read whole in one read of the socket.
Such a request to a unary method whose answer is one message (``DirectApi.paths``) is
answered here (``connections.py`` reads it), through the same checks and handler
(``Api.answer``). Anything else (a request split over several reads, pipelined ones,
another path or method, HTTP/1.0, ``Expect``, an upgrade, a malformed one) is left to
aiohttp, which then serves the connection for good.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Iterator, Sequence
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict

from ..core.http import Response, date_field, status_line


@dataclass(frozen=True, slots=True)
class WholeRequest:
    """A request read whole: its method, path (its leading slashes made one), fields
    and body."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Streamed:
    """A 200 answer written in pieces (a large output: no copy of it is made whole),
    ``length`` bytes of ``content_type``."""

    content_type: str
    length: int
    pieces: Iterator[bytes | memoryview]


@dataclass(frozen=True, slots=True)
class DirectApi:
    """The paths answered directly, and how: ``answer`` gives the HTTP answer (never
    raises but when cancelled)."""

    paths: Container[str]
    answer: Callable[[WholeRequest], Awaitable[Response | Streamed]]


class _Reader:
    """httptools' callbacks: the parts of what was read."""

    __slots__ = ("body", "complete", "fields", "messages", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.messages = 0
        self.complete = False

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


_LEFT_TO_AIOHTTP = frozenset((b"expect", b"upgrade", b"content-encoding"))
"""Fields of requests that aiohttp answers: a 100 Continue, an upgrade, a body to
decompress."""
MAX_LINE = 8190
"""aiohttp's longest request line and field: a longer one is left to it to refuse."""


def whole_request(data: bytes, paths: Container[str]) -> WholeRequest | None:
    """The one request ``data`` holds whole, if it is a POST over HTTP/1.1 to one of
    ``paths`` that needs nothing of aiohttp; else None."""
    if not data.startswith(b"POST /"):
        return None  # cheaply: the dashboard's pages, health checks, absolute targets
    reader = _Reader()
    parser = httptools.HttpRequestParser(reader)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:  # malformed, or an upgrade: aiohttp answers it
        return None
    if not reader.complete or reader.messages != 1 or parser.get_http_version() != "1.1":
        return None
    if len(reader.url) > MAX_LINE:
        return None
    target = reader.url.decode("latin-1")
    path, _, _ = target.partition("?")
    # As the aiohttp routes take it (``api._lenient``): repeated slashes before it.
    path = "/" + path.lstrip("/")
    if path not in paths:
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    keep_alive = True  # HTTP/1.1's default
    for name, value in reader.fields:
        lowered = name.lower()
        if lowered in _LEFT_TO_AIOHTTP or len(name) + len(value) + 2 > MAX_LINE:
            return None
        if lowered == b"transfer-encoding" and value.strip().lower() != b"chunked":
            return None
        if lowered == b"connection" and b"close" in value.lower().replace(b" ", b"").split(b","):
            keep_alive = False
        headers.add(name.decode("latin-1"), value.decode("latin-1"))
    return WholeRequest("POST", path, headers, b"".join(reader.body), keep_alive)


def answer_head(
    status: int, fields: Sequence[tuple[str, str]], length: int, *, keep_alive: bool
) -> bytes:
    """An answer's head: ``Connection: close`` unless ``keep_alive``."""
    lines = [f"HTTP/1.1 {status_line(status)}"]
    lines += [f"{name}: {value}" for name, value in fields if name.lower() != "connection"]
    lines.append(f"Content-Length: {length}")
    lines.append(f"Date: {date_field()}")
    if not keep_alive:
        lines.append("Connection: close")
    lines += ["", ""]
    return "\r\n".join(lines).encode("latin-1")


def answer_bytes(response: Response, *, keep_alive: bool) -> bytes:
    """``response`` as sent on the wire."""
    head = answer_head(response.status, response.headers, len(response.body), keep_alive=keep_alive)
    return head + response.body
