"""Plain HTTP request and response values exchanged between adapters and the core."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import urlsplit


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (lower case) in ``headers``, any case, or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type value, lower case and without parameters
    (``""`` when there is none)."""
    if content_type is None:
        return ""
    return content_type.partition(";")[0].strip().lower()


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the client sent it.

    ``path`` is the request path exactly as it appeared on the wire (percent-encoding
    kept, no query); ``authority`` is the Host the client addressed, as sent.
    Header names may use any case; a name may repeat.
    """

    method: str
    path: str
    authority: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    query: str = ""
    scheme: str = "https"


def request_from_target(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    scheme: str = "https",
) -> Request:
    """A request as a server read it: ``target`` is its request line's target as sent,
    ``host`` its Host header ("" without one).

    An origin-form target (``/path?query``) is kept exactly as sent, for the signature.
    An absolute-form one (a request through a proxy) gives its path and query, and its
    authority wins over Host (RFC 9112 3.2.2). A malformed one raises ``ValueError``."""
    if target[:1] == "/":
        path, _, query = target.partition("?")
        return Request(method, path, host, headers, body, query, scheme)
    parts = urlsplit(target)
    authority = parts.netloc.rpartition("@")[2] or host
    return Request(method, parts.path or "/", authority, headers, body, parts.query, scheme)


@dataclass(slots=True)
class Response:
    """An HTTP response for an adapter to send back unchanged."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name.lower())


_last_date = (0, "")


def date_field() -> str:
    """The value of an answer's ``Date`` field, formatted once a second."""
    global _last_date
    now = int(time.time())
    if _last_date[0] != now:
        _last_date = (now, formatdate(now, usegmt=True))
    return _last_date[1]


@functools.lru_cache(maxsize=64)
def status_line(status: int) -> str:
    """``"200 OK"``: a status with its reason phrase, as in an answer's first line."""
    from http import HTTPStatus  # not at import: the Lambda adapter has no use for it

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
