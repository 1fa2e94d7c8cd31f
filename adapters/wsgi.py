"""PEP 3333 adapter: ``app = wsgi_app(endpoint)`` for gunicorn, waitress and others.

It only translates. The path is taken from the raw request line when the server keeps
it (``RAW_URI`` in gunicorn, ``REQUEST_URI`` in waitress and others), because a
signature covers the path exactly as the client sent it; otherwise it is rebuilt from
``SCRIPT_NAME`` and ``PATH_INFO``. The body is read up to the endpoint's limit and
never further.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

from ..core.endpoint import Endpoint
from ..core.http import Request

StartResponse = Callable[..., Any]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_READ_CHUNK = 64 * 1024
# Characters that stay literal in a path when it has to be re-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def wsgi_app(endpoint: Endpoint) -> WSGIApplication:
    """A WSGI application serving ``endpoint``."""

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = _read_body(environ, endpoint.max_body_size)
        if body is None:
            response = endpoint.body_too_large()
        else:
            path, query = request_target(environ)
            response = endpoint.handle(
                Request(
                    method=environ.get("REQUEST_METHOD", "GET"),
                    path=path,
                    authority=environ.get("HTTP_HOST", ""),
                    headers=request_headers(environ),
                    body=body,
                    query=query,
                    scheme=environ.get("wsgi.url_scheme", "http"),
                )
            )
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {_reason(response.status)}", headers)
        return [response.body]

    return application


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


def request_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """Header fields from the environ's CONTENT_* and HTTP_* keys."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").lower(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((key.replace("_", "-").lower(), value))
    return headers


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body, or None when it exceeds ``limit`` (then it is not read)."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length_text = environ.get("CONTENT_LENGTH") or ""
    if length_text.strip():
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            return b""  # nonsense length: the core answers an empty body with 400
        if length > limit:
            return None
        return _read(stream, length)
    # No length: a chunked body, readable to its end only if the server says so.
    if not environ.get("wsgi.input_terminated"):
        return b""
    data = _read(stream, limit + 1)
    return None if len(data) > limit else data


def _read(stream: Any, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
