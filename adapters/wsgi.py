"""PEP 3333 adapter: ``app = wsgi_app(endpoint)`` for gunicorn, waitress and others.

It only translates; the endpoint decides. What it takes from the environ:

- Path: from the raw request line when the server keeps it (``RAW_URI`` in gunicorn,
  ``REQUEST_URI`` in waitress and others), because a signature covers the path exactly
  as the client sent it (``%2F``, ``//``, ``;params`` included); otherwise rebuilt from
  ``SCRIPT_NAME`` and ``PATH_INFO``, which cannot tell ``%2F`` from ``/``.
- Authority: the ``Host`` header, or the authority of an absolute-form request target
  (RFC 9112 3.2.2). Never ``SERVER_NAME``: that is the server's name, not what the
  client signed. No Host gives an empty authority, which the endpoint refuses (400).
- Body: exactly ``CONTENT_LENGTH`` bytes. A length over the endpoint's limit is refused
  without reading a byte. A body without a length (chunked) is read only when the
  server sets ``wsgi.input_terminated``, and never more than the limit plus one byte.
  A body that ends before its announced length, fails to read, or stalls for
  ``body_timeout`` seconds is answered 400: a truncated body is never passed on as if
  complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

from ..core.body import BodyReader
from ..core.endpoint import Endpoint
from ..core.errors import DispatchletError
from ..core.http import Request, request_from_target, status_line

StartResponse = Callable[..., Any]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

DEFAULT_BODY_TIMEOUT = 10.0
"""Seconds a body may pause before it is given up as incomplete (gunicorn only)."""

_READ_CHUNK = 64 * 1024
# Characters that stay literal in a path when it has to be re-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def wsgi_app(
    endpoint: Endpoint, *, body_timeout: float | None = DEFAULT_BODY_TIMEOUT
) -> WSGIApplication:
    """A WSGI application serving ``endpoint``.

    ``body_timeout``: the longest pause, in seconds, while a request body arrives,
    after which the request is answered 400. It applies where the server hands the
    application its client socket (gunicorn's ``gunicorn.socket``): gunicorn's
    threaded workers would otherwise wait forever on a client that stops sending.
    Servers that read the whole body before calling the application (waitress) bound
    this themselves (waitress: ``channel_timeout``). None leaves the socket alone.
    """
    endpoint.warn_if_no_key()

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            body = _environ_body(environ, endpoint, body_timeout)
        except DispatchletError as exc:
            response = endpoint.reject(exc)
        else:
            response = endpoint.handle(request_from_environ(environ, body))
        # The core never sets Content-Length; the server needs it to keep connections.
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        start_response(status_line(response.status), headers)
        return [response.body]

    return application


def request_from_environ(environ: dict[str, Any], body: bytes) -> Request:
    """The core's view of a WSGI request whose body has been read."""
    method: str = environ.get("REQUEST_METHOD", "GET")
    headers = request_headers(environ)
    scheme: str = environ.get("wsgi.url_scheme", "http")
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:  # what servers hand over: the target as sent
        return request_from_target(method, raw, environ.get("HTTP_HOST", ""), headers, body, scheme)
    path, query = request_target(environ)
    return Request(method, path, request_authority(environ), headers, body, query, scheme)


def request_target(environ: dict[str, Any]) -> tuple[str, str]:
    """The path as sent and the query string."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        if not raw.startswith("/"):
            # An absolute-form target (a request through a proxy): keep its path.
            parts = urlsplit(raw)
            return parts.path or "/", parts.query
        path, _, query = raw.partition("?")
        return path, query
    # PEP 3333 gives the decoded path as latin-1 text; re-encode it as a client would.
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)
    return path or "/", environ.get("QUERY_STRING", "")


def request_authority(environ: dict[str, Any]) -> str:
    """The authority the client addressed: an absolute-form target's, else Host, else ""."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if raw and not raw.startswith("/"):
        # RFC 9112 3.2.2: the target's authority wins over the Host header.
        netloc = urlsplit(raw).netloc.rpartition("@")[2]
        if netloc:
            return netloc
    host: str = environ.get("HTTP_HOST", "")
    return host


# Header names by environ key: the same few arrive on every request.
_HEADER_NAMES: dict[str, str] = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}
_MAX_HEADER_NAMES = 512


def request_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """Header fields from the environ's CONTENT_* and HTTP_* keys."""
    names = _HEADER_NAMES
    headers = []
    for key, value in environ.items():
        name = names.get(key)
        if name is None:
            if key[:5] != "HTTP_":
                continue
            name = key[5:].replace("_", "-").lower()
            if len(names) < _MAX_HEADER_NAMES:
                names[key] = name
        elif not value and key[0] == "C":
            continue  # an empty CONTENT_TYPE or CONTENT_LENGTH: no such header
        headers.append((name, value))
    return headers


def read_body(
    environ: dict[str, Any], stream: Any, reader: BodyReader, timeout: float | None
) -> bytes:
    """The whole request body as ``reader`` decides it, read from ``stream``; the
    core's ``InvalidArgument`` when it cannot be had."""
    if reader.size == 0 or stream is None:
        return reader.complete(b"")
    return reader.complete(read_bounded(environ, stream, reader.size, timeout))


def _environ_body(environ: dict[str, Any], endpoint: Endpoint, timeout: float | None) -> bytes:
    reader = endpoint.body_reader(
        environ.get("CONTENT_LENGTH"),
        ends_without_length=bool(environ.get("wsgi.input_terminated")),
        chunked=bool(environ.get("HTTP_TRANSFER_ENCODING")),
    )
    return read_body(environ, environ.get("wsgi.input"), reader, timeout)


def read_bounded(environ: dict[str, Any], stream: Any, size: int, timeout: float | None) -> bytes:
    """At most ``size`` bytes, fewer only at the end of the stream."""
    sock = _client_socket(environ) if timeout is not None else None
    previous = None
    if sock is not None and timeout is not None:
        previous = sock.gettimeout()
        sock.settimeout(timeout if previous is None else min(previous, timeout))
    chunks = []
    remaining = size
    try:
        while remaining > 0:
            chunk = stream.read(min(remaining, _READ_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except TimeoutError:
        raise BodyReader.stalled() from None
    except Exception as exc:
        # A reset connection or a malformed chunk (each server has its own exception
        # types): the body cannot be had, and the client is the one to tell.
        raise BodyReader.broken(exc) from None
    finally:
        if sock is not None:
            with suppress(OSError):  # the server may have closed it meanwhile
                sock.settimeout(previous)
    return b"".join(chunks)


@runtime_checkable
class _Socket(Protocol):
    def gettimeout(self) -> float | None: ...
    def settimeout(self, value: float | None, /) -> None: ...


def _client_socket(environ: dict[str, Any]) -> _Socket | None:
    """gunicorn's client socket, when reading the body reads from it (HTTP/1.x)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    # An HTTP/2 connection's socket carries other streams too: never touch it.
    http1 = str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/1.")
    return sock if http1 and isinstance(sock, _Socket) else None
