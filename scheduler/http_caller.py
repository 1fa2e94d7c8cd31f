"""Calling a function endpoint over HTTP: a signed Run request, and what its answer
means as a run status.

aiohttp is the client: asyncio-native, with connection pooling per host and a server
in the same package (the scheduler's API). The request is signed (RFC 9421, the
Dispatch profile) for exactly the authority and path it is sent to, and sent with the
path as signed (no re-encoding). Every answer or failure becomes an ``Outcome``:

- a 200 whose body is a RunResponse: that response, taken as is;
- 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND:
  final, with the endpoint's Connect error as the message; 413 (the request is larger
  than the endpoint takes) INVALID_ARGUMENT, final, naming the request's size and the
  endpoint's limit when its error tells it;
- 408 TIMEOUT, 429 THROTTLED, 5xx TEMPORARY_ERROR, any other status HTTP_ERROR: retried,
  ``Retry-After`` honoured;
- refused or reset connections TCP_ERROR, DNS failures DNS_ERROR, TLS failures
  TLS_ERROR, no answer in time TIMEOUT: retried;
- a 200 that is no RunResponse, or an answer larger than the limit (the output limit,
  ``--max-output-size``, and ``ANSWER_MARGIN``; twice the output limit in JSON, whose
  base64 is larger): INVALID_RESPONSE, final.

An answer is read into one buffer, of its announced length when it has one, and no
further than the limit; an error answer's body no further than ``ERROR_BODY_BYTES``,
all its message needs. So a large answer costs its size once, then its decoded form.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import typing
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

from ..core import tracing
from ..core.connect import JSON, PROTO
from ..core.connect_client import ConnectError, InvalidAnswer, decode_response, parse_error
from ..core.ed25519 import backend, signer_for
from ..core.endpoint_url import EndpointURL, parse_endpoint_url
from ..core.http import Request, media_type, retry_after
from ..core.signatures import sign_request
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import function_pb2
from .outcome import ANSWER_MARGIN, MAX_ANSWER_BYTES, Outcome
from .settings import DEFAULT_MAX_OUTPUT_SIZE
from .within import within

USER_AGENT = "dispatchlet-scheduler"

# Where they were first defined; their home is the callers' contract (outcome.py).
__all__ = ["MAX_ANSWER_BYTES", "USER_AGENT", "HttpCaller", "Outcome", "retry_after"]

MAX_TARGETS = 1024
"""The most endpoints whose parsed URL is kept (all are forgotten when more come)."""

CONNECT_TIMEOUT = 30.0
"""Seconds to open a connection to an endpoint (aiohttp's default), within the attempt's."""

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
        self._session: aiohttp.ClientSession | None = None
        # Each endpoint's parts and Run URL, parsed once (a bounded number of them).
        self._targets: dict[str, tuple[EndpointURL, URL]] = {}

    async def __aenter__(self) -> HttpCaller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                # The attempt's own timeout bounds each request (``run``), not
                # aiohttp's default total of 5 minutes: a Lambda may run for 15.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                # Redirects are not followed: a signature covers the authority and path.
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        """Send ``request`` to the endpoint whose base URL is ``endpoint``."""
        known = self._targets.get(endpoint)
        if known is None:
            try:
                target = parse_endpoint_url(endpoint)
            except ValueError as exc:
                return Outcome(Status.INVALID_ARGUMENT, error_type="ValueError", message=str(exc))
            if len(self._targets) >= MAX_TARGETS:
                self._targets.clear()
            known = self._targets[endpoint] = target, URL(target.run_url, encoded=True)
        target, url = known
        headers = [("Content-Type", PROTO)]
        # The attempt's span context (traceparent): not signed, for tracing only.
        tracing.inject(headers)
        http_request = Request(
            "POST",
            target.run_path,
            target.authority,
            headers,
            request.SerializeToString(),
            scheme=target.scheme,
        )
        if self.signing_key is not None:
            http_request = sign_request(http_request, self.signing_key, signer=self._sign)
        try:
            return await within(self._send(url, http_request), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return Outcome(Status.TIMEOUT, error_type="TimeoutError", message=_no_answer(timeout))

    async def _send(self, url: URL, request: Request) -> Outcome:
        try:
            async with self._client().post(
                url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
            ) as answer:
                if answer.status != 200:
                    error = await _read_start(answer, ERROR_BODY_BYTES)
                    return _outcome(answer.status, answer.headers, error, sent=len(request.body))
                limit = answer_limit(self.max_output_size, answer.headers.get("Content-Type"))
                body = await _read_bounded(answer, limit)
                if body is None:
                    return _too_long(answer.content_length, limit, self.max_output_size)
                # Decoded from the buffer as it is (protobuf and json read a bytearray as
                # they read bytes): no copy of it.
                read = typing.cast(bytes, body)
                return _outcome(answer.status, answer.headers, read, sent=len(request.body))
        except aiohttp.ClientConnectorDNSError as exc:
            return _failure(Status.DNS_ERROR, exc)
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            return _failure(Status.TLS_ERROR, exc)
        except ssl.SSLError as exc:
            return _failure(Status.TLS_ERROR, exc)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            return _failure(Status.TCP_ERROR, exc)
        except aiohttp.ClientResponseError as exc:  # a malformed answer
            return _failure(Status.INVALID_RESPONSE, exc)


def answer_limit(max_output_size: int, content_type: str | None) -> int:
    """The most of a 200 answer that is read: room for an output of ``max_output_size``
    and what surrounds it, in the answer's codec (JSON carries bytes in base64)."""
    if media_type(content_type) == JSON:
        return 2 * max_output_size + ANSWER_MARGIN
    return max_output_size + ANSWER_MARGIN


async def _read_bounded(answer: aiohttp.ClientResponse, limit: int) -> bytearray | None:
    """The whole body, in one buffer, or None when it is longer than ``limit`` (found
    out from its announced length, or by reading no more than ``limit`` and one chunk).
    The chunks are copied into the buffer as they come, and not kept: one copy."""
    length = answer.content_length
    if length is not None and length > limit:
        return None
    if length is not None:
        # As long as announced: aiohttp stops there, and fails a body cut short.
        body = bytearray(length)
        view, size = memoryview(body), 0
        async for chunk in answer.content.iter_any():
            if size + len(chunk) > length:
                return None
            view[size : size + len(chunk)] = chunk
            size += len(chunk)
        view.release()
        return body if size == length else body[:size]
    grown = bytearray()
    async for chunk in answer.content.iter_any():
        if len(grown) + len(chunk) > limit:
            return None
        grown += chunk
    return grown


async def _read_start(answer: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first ``limit`` bytes of the body at most; the rest is left unread (the
    connection is then closed, not reused)."""
    start = bytearray()
    async for chunk in answer.content.iter_any():
        start += chunk[: limit - len(start)]
        if len(start) >= limit:
            break
    return bytes(start)


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
    content_type = headers.get("Content-Type")
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
        retry_after=retry_after(headers.get("Retry-After")),
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


def _failure(status: Status, exc: BaseException) -> Outcome:
    return Outcome(status, error_type=type(exc).__name__, message=str(exc) or type(exc).__name__)


def _no_answer(timeout: float) -> str:
    return f"no answer within {timeout:g} s"
