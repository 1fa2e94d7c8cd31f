"""Calling a function endpoint over HTTP: a signed Run request, and what its answer
means as a run status.

The request goes over the scheduler's own keep-alive connections (``endpoint_connections``:
one write of bytes, the answer parsed by httptools). It is signed (RFC 9421, the Dispatch
profile) for exactly the authority and path it is sent to, and sent with the path and
Host as signed. Every answer or failure becomes an ``Outcome``:

- a 200 whose body is a RunResponse: that response, taken as is;
- 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND:
  final, with the endpoint's Connect error as the message; 413 (the request is larger
  than the endpoint takes) INVALID_ARGUMENT, final, naming the request's size and the
  endpoint's limit when its error tells it;
- 408 TIMEOUT, 429 THROTTLED, 5xx TEMPORARY_ERROR, any other status HTTP_ERROR: retried,
  ``Retry-After`` honoured;
- refused, reset or closed connections (and no connection within ``CONNECT_TIMEOUT``)
  TCP_ERROR, DNS failures DNS_ERROR, TLS failures TLS_ERROR, no answer in time TIMEOUT:
  retried;
- a 200 that is no RunResponse, an answer that is not HTTP/1.1, or one larger than the
  limit (the output limit, ``--max-output-size``, and ``ANSWER_MARGIN``; twice the
  output limit in JSON, whose base64 is larger): INVALID_RESPONSE, final.

An answer is read into one buffer, no further than the limit (one announced as longer
is not read at all); an error answer's body no further than ``ERROR_BODY_BYTES``, all
its message needs. So a large answer costs its size once, then its decoded form.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import typing
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..core import tracing
from ..core.connect import JSON, PROTO
from ..core.connect_client import ConnectError, InvalidAnswer, decode_response, parse_error
from ..core.ed25519 import backend, signer_for
from ..core.endpoint_url import EndpointURL, parse_endpoint_url
from ..core.http import Request, media_type, retry_after
from ..core.signatures import sign_request
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import function_pb2
from .endpoint_connections import Connections, EndpointClosed, InvalidHttp, Target
from .outcome import ANSWER_MARGIN, MAX_ANSWER_BYTES, Outcome
from .settings import DEFAULT_MAX_OUTPUT_SIZE
from .within import within

USER_AGENT = "dispatchlet-scheduler"

# Where they were first defined; their home is the callers' contract (outcome.py).
__all__ = ["MAX_ANSWER_BYTES", "USER_AGENT", "HttpCaller", "Outcome", "retry_after"]

MAX_TARGETS = 1024
"""The most endpoints whose parsed URL is kept (all are forgotten when more come)."""

CONNECT_TIMEOUT = 30.0
"""Seconds to open a connection to an endpoint (TLS included), within the attempt's."""

ERROR_BODY_BYTES = 64 * 1024
"""How much of an error answer's body is read: its Connect error, or the start of a page."""

_FINAL_HTTP = {
    400: Status.INVALID_ARGUMENT,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.NOT_FOUND,
}


class HttpCaller:
    """Sends signed Run requests; one connection pool for the scheduler's lifetime."""

    def __init__(
        self,
        signing_key: Ed25519PrivateKey | None,
        *,
        insecure: bool = False,
        max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE,
    ) -> None:
        if signing_key is None and not insecure:
            raise ValueError("a signing key is needed (or insecure=True, for development)")
        self.signing_key = signing_key
        # PyNaCl's signing when it is installed: about half of cryptography's time.
        self._sign = None if signing_key is None else signer_for(signing_key, backend())
        self.max_output_size = max_output_size
        self._connections = Connections(connect_timeout=CONNECT_TIMEOUT)
        # Each endpoint's parts and where to connect, parsed once (a bounded number).
        self._targets: dict[str, tuple[EndpointURL, Target]] = {}

    async def __aenter__(self) -> HttpCaller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._connections.close()

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        """Send ``request`` to the endpoint whose base URL is ``endpoint``."""
        known = self._targets.get(endpoint)
        if known is None:
            try:
                known = _target(endpoint)
            except ValueError as exc:
                return Outcome(Status.INVALID_ARGUMENT, error_type="ValueError", message=str(exc))
            if len(self._targets) >= MAX_TARGETS:
                self._targets.clear()
            self._targets[endpoint] = known
        parts, target = known
        headers = [("Content-Type", PROTO)]
        # The attempt's span context (traceparent): not signed, for tracing only.
        tracing.inject(headers)
        http_request = Request(
            "POST",
            parts.run_path,
            parts.authority,
            headers,
            request.SerializeToString(),
            scheme=parts.scheme,
        )
        if self.signing_key is not None:
            http_request = sign_request(http_request, self.signing_key, signer=self._sign)
        try:
            wire = _wire(http_request)
        except ValueError as exc:
            return Outcome(Status.INVALID_ARGUMENT, error_type="ValueError", message=str(exc))
        try:
            return await within(self._send(target, wire, len(http_request.body)), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return Outcome(Status.TIMEOUT, error_type="TimeoutError", message=_no_answer(timeout))

    async def _send(self, target: Target, wire: bytes, sent: int) -> Outcome:
        try:
            answer = await self._connections.exchange(target, wire, self._answer_limit)
        except socket.gaierror as exc:
            return _failure(Status.DNS_ERROR, exc, f"cannot resolve {target.host}")
        except (ssl.SSLError, ssl.CertificateError) as exc:
            return _failure(Status.TLS_ERROR, exc)
        except InvalidHttp as exc:
            return _failure(Status.INVALID_RESPONSE, exc)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # only connecting has its own
            message = f"no connection to {target.host}:{target.port} within {CONNECT_TIMEOUT:g} s"
            return _failure(Status.TCP_ERROR, exc, message)
        except EndpointClosed as exc:
            return _failure(Status.TCP_ERROR, exc)
        except OSError as exc:  # all else that fails on the way is an EndpointClosed
            return _failure(Status.TCP_ERROR, exc, f"cannot connect to {target.host}:{target.port}")
        if answer.status != 200:
            return _outcome(answer.status, answer.headers, bytes(answer.body), sent=sent)
        if answer.cut:
            limit = self._answer_limit(answer.status, answer.headers)
            return _too_long(answer.length, limit, self.max_output_size)
        # Decoded from the buffer as it is (protobuf and json read a bytearray as they
        # read bytes): no copy of it.
        return _outcome(200, answer.headers, typing.cast(bytes, answer.body), sent=sent)

    def _answer_limit(self, status: int, headers: dict[str, str]) -> int:
        if status != 200:
            return ERROR_BODY_BYTES
        return answer_limit(self.max_output_size, headers.get("content-type"))


def _target(endpoint: str) -> tuple[EndpointURL, Target]:
    """An endpoint's parts, and the host and port to connect to."""
    parts = parse_endpoint_url(endpoint)
    split = urlsplit(parts.run_url)
    try:
        port = split.port
    except ValueError as exc:  # not a number, or out of range
        raise ValueError(f"invalid endpoint URL {endpoint!r}: {exc}") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    host = split.hostname
    assert host is not None  # parse_endpoint_url has checked
    return parts, Target(parts.scheme, host, port)


def _wire(request: Request) -> bytes:
    """``request`` as the bytes sent: head and body. A header that would end the line
    early is refused (it can come only from a bug, never from a call)."""
    lines = [
        f"{request.method} {request.path} HTTP/1.1",
        f"Host: {request.authority}",
        f"User-Agent: {USER_AGENT}",
        f"Content-Length: {len(request.body)}",
        *(f"{name}: {value}" for name, value in request.headers),
    ]
    if any("\n" in line or "\r" in line for line in lines):
        raise ValueError("a header of the Run request holds a line break")
    head = "\r\n".join(lines)
    try:
        encoded = head.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(
            f"the endpoint's URL is not ASCII ({request.authority!r}, {request.path!r}): "
            "give its host in its IDNA form (xn--...) and its path percent-encoded"
        ) from None
    return b"".join((encoded, b"\r\n\r\n", request.body))


def answer_limit(max_output_size: int, content_type: str | None) -> int:
    """The most of a 200 answer that is read: room for an output of ``max_output_size``
    and what surrounds it, in the answer's codec (JSON carries bytes in base64)."""
    if media_type(content_type) == JSON:
        return 2 * max_output_size + ANSWER_MARGIN
    return max_output_size + ANSWER_MARGIN


def _too_long(length: int | None, limit: int, max_output_size: int) -> Outcome:
    size = f"{length} bytes" if length is not None else f"more than {limit} bytes"
    return Outcome(
        Status.INVALID_RESPONSE,
        error_type="InvalidResponse",
        message=(
            f"the endpoint answered {size}, more than the scheduler reads: an output of at "
            f"most {max_output_size} bytes (--max-output-size) and {limit - max_output_size} "
            "bytes around it"
        ),
    )


def _outcome(status: int, headers: Any, body: bytes, *, sent: int = 0) -> Outcome:
    """An answer's outcome; ``headers`` by lower-case name."""
    content_type = headers.get("content-type")
    if status == 200:
        try:
            return Outcome(Status.OK, decode_response(content_type, body))
        except InvalidAnswer as exc:
            return Outcome(Status.INVALID_RESPONSE, error_type="InvalidResponse", message=str(exc))
    error = parse_error(status, content_type, body)
    if status == 413:
        return Outcome(
            Status.INVALID_ARGUMENT, error_type="HTTPError", message=_too_large(error, sent)
        )
    final = _FINAL_HTTP.get(status)
    if final is not None:
        return Outcome(final, error_type="HTTPError", message=f"HTTP {status} {error}")
    if status == 408:
        kind = Status.TIMEOUT
    elif status == 429:
        kind = Status.THROTTLED
    elif 500 <= status <= 599:
        kind = Status.TEMPORARY_ERROR
    else:
        kind = Status.HTTP_ERROR
    return Outcome(
        kind,
        error_type="HTTPError",
        message=f"HTTP {status} {error}",
        retry_after=retry_after(headers.get("retry-after")),
    )


def _too_large(error: ConnectError, sent: int) -> str:
    """What a 413 answer means: the request, its size, and the endpoint's limit when its
    error names one: the largest number of four digits or more in it that is under the
    size sent (as in "request body exceeds 16777216 bytes", waitress's "exceeds max_body
    of 1048576", or "a body of 20000000 bytes is over 16777216")."""
    numbers = [int(number) for number in _LIMIT.findall(error.message)]
    below = [number for number in numbers if number < sent]
    limit = f", over the endpoint's limit of {max(below)} bytes" if below else ""
    return (
        f"HTTP 413 {error}: the endpoint refused the Run request of {sent} bytes as too "
        f"large{limit}; retrying cannot help (a smaller input, or a larger limit on the "
        "endpoint, can)"
    )


_LIMIT = re.compile(r"\d{4,}")


def _failure(status: Status, exc: BaseException, message: str = "") -> Outcome:
    said = str(exc)
    if message:
        said = f"{message}: {said}" if said else message
    return Outcome(status, error_type=type(exc).__name__, message=said or type(exc).__name__)


def _no_answer(timeout: float) -> str:
    return f"no answer within {timeout:g} s"
