"""AWS Lambda adapter: ``handler = lambda_handler(endpoint)``, a ``handler(event, context)``.

It only translates. Each invocation is one of:

- **Direct invocation** (the scheduler calls ``Invoke`` on an ``arn:aws:lambda:...``
  endpoint): the event is a JSON string holding the standard base64 of a serialized
  ``RunRequest``; the answer is the base64 of the serialized ``RunResponse``, run through
  ``Endpoint.run`` (no HTTP and no signature: IAM decides who may invoke). Any other
  payload that is not an HTTP event raises ``UnsupportedEvent``, a function error.
- **An HTTP event**, made into a ``Request`` for ``Endpoint.handle`` and answered in the
  shape its source requires. Sources are recognised in this order, the first match wins:

  1. VPC Lattice, event version 2: ``version`` "2.0" and a ``requestContext`` with
     ``targetGroupArn``;
  2. Lambda Function URL: ``version`` "2.0" and ``requestContext.domainName`` ending in
     ``.lambda-url.<region>.on.aws``;
  3. API Gateway HTTP API, payload 2.0: ``version`` "2.0", ``rawPath`` and
     ``requestContext.http``;
  4. Application Load Balancer: ``requestContext.elb`` (with or without multi-value
     headers);
  5. API Gateway payload 1.0 (REST APIs, and HTTP APIs set to payload 1.0):
     ``httpMethod`` and ``requestContext.apiId``;
  6. VPC Lattice, event version 1: ``raw_path`` and ``method``.

  Any other event raises ``UnsupportedEvent``. A recognised event that cannot be read
  (a header that is not text, a body that is not base64, ...) is answered 400.

Signatures cover the path and authority the caller used, so they are taken as sent: the
path from ``requestContext.path`` for REST APIs (the stage or base path included, which
``path`` drops), ``rawPath`` for HTTP APIs and Function URLs, ``path`` for ALB and
``raw_path``/``path`` for VPC Lattice; the authority from the Host header, else
``requestContext.domainName``. HTTP APIs hand over the path percent-decoded: characters
that cannot appear in a path as sent are encoded again, which restores what clients send
for spaces and non-ASCII text, but not an encoded ``/`` or any other character encoded
without need. Headers keep every
value; a source that joins repeated headers (HTTP API and Function URL with ",", VPC
Lattice v1) gives them joined. Request bodies are decoded from base64 when the event
says so; a missing, null or empty body is empty.

Set ``Endpoint(endpoint_url=...)`` (or ``DISPATCH_ENDPOINT_URL``) to the URL the
scheduler calls whenever what reaches the function differs from it: a custom domain
(with or without a base path mapping), CloudFront or another proxy in front, a Function
URL behind a CDN, or an HTTP API path with percent-encoded characters. Signatures are then
checked against that URL's authority and path.

API Gateway REST APIs pass binary bodies intact only for their binary media types: add
``*/*`` (written ``*~1*`` in SAM) to the API's ``binaryMediaTypes``.
``application/proto`` alone lets requests through, but API Gateway decodes a response
only when the caller's first ``Accept`` type matches. A protobuf request that arrived as
text is answered 400 with this advice. Responses carry protobuf bodies as base64
(``isBase64Encoded: true``) and JSON bodies as text, which every source passes unchanged.

Each served invocation is logged at INFO level (event source, status, duration,
``function_request_id`` from ``context.aws_request_id``, ``function_name``,
``cold_start``), through the ``logger`` given, else the standard logging logger
``dispatchlet.aws_lambda``, with the fields as ``extra``: under Lambda's JSON log format
(``LoggingConfig: LogFormat: JSON``, as template.yaml sets it) they are JSON fields. An
aws-lambda-powertools ``Logger`` may be passed instead; it is not the default because
importing powertools adds about 40 ms to a cold start, and its package loads botocore
wherever that is installed, as in every Lambda runtime.
The status is the HTTP status for HTTP events and the run status (``OK``,
``PERMANENT_ERROR``, ...) for direct invocations. With ``metrics=True``, or the
environment variable ``DISPATCHLET_METRICS=1`` when ``metrics`` is not given, each
invocation also writes CloudWatch embedded metrics through aws-lambda-powertools
(``pip install 'dispatchlet[lambda]'``): ``Runs`` (count) and ``Latency``
(milliseconds) by ``status``, in the namespace ``POWERTOOLS_METRICS_NAMESPACE`` (default
``dispatchlet``). Powertools is imported only then, with botocore kept out.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol
from urllib.parse import quote

from google.protobuf.message import DecodeError

from ..core import connect
from ..core.endpoint import Endpoint
from ..core.errors import DispatchletError, InvalidArgument
from ..core.http import Request, Response
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import function_pb2

LambdaHandler = Callable[[Any, Any], Any]
Event = Mapping[str, Any]
Fields = list[tuple[str, str]]

METRICS_ENV = "DISPATCHLET_METRICS"
METRICS_NAMESPACE = "dispatchlet"

_EXPECTED = (
    "expected a JSON string holding the standard base64 of a serialized "
    "dispatch.sdk.v1.RunRequest (direct invocation), or an HTTP event from API Gateway "
    "(REST or HTTP API), a Lambda Function URL, an Application Load Balancer or VPC Lattice"
)
_MANGLED_BODY = (
    "API Gateway passed this application/proto body as text, which corrupts binary data: "
    'give the REST API the binary media type */* (binaryMediaTypes: ["*/*"], in SAM '
    'BinaryMediaTypes: ["*~1*"]) or at least binaryMediaTypes: ["application/proto"], '
    "then redeploy it"
)
_FUNCTION_URL_DOMAIN = re.compile(r"\.lambda-url\.[a-z0-9-]+\.on\.aws\Z")
# A "%" that starts no escape, or a character that a client must escape in a path.
_UNSAFE_IN_PATH = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")


class UnsupportedEvent(ValueError):
    """An invocation payload the adapter cannot serve; Lambda reports it as a function error."""


class LoggerLike(Protocol):
    """What the adapter needs of a logger: ``logging.Logger`` and powertools' ``Logger``."""

    def info(self, msg: object, *args: object, extra: Mapping[str, object] | None = ...) -> None:
        """Log at INFO level with structured fields."""


# --- reading events ----------------------------------------------------------------------


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise InvalidArgument(f"malformed event: {what} is not an object")


def _text(value: object, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise InvalidArgument(f"malformed event: {what} is not a string")


def _context(event: Event) -> Mapping[str, Any]:
    return _mapping(event.get("requestContext"), "requestContext")


def _fields(value: object, what: str) -> Fields:
    """Header fields from a map of names to a value or a list of values, all kept."""
    fields: Fields = []
    for name, values in _mapping(value, what).items():
        if not isinstance(name, str):
            raise InvalidArgument(f"malformed event: {what} has a name that is not text")
        if isinstance(values, str):
            fields.append((name, values))
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            fields.extend((name, v) for v in values)
        else:
            raise InvalidArgument(f"malformed event: {what} {name[:40]!r} is not text")
    return fields


def _first(fields: Fields, name: str) -> str | None:
    for key, value in fields:
        if key.lower() == name:
            return value
    return None


def _query(params: object, what: str, encode: Callable[[str], str]) -> str:
    """A query string rebuilt from parameters, for sources that keep no raw one."""
    pairs = _fields(params, what)
    try:
        return "&".join(f"{encode(name)}={encode(value)}" for name, value in pairs)
    except UnicodeEncodeError:  # a lone surrogate: JSON carries it, no client sent it
        raise InvalidArgument(f"malformed event: {what} is not valid text") from None


def _encode(text: str) -> str:
    return quote(text, safe="")


def _as_sent(text: str) -> str:
    return text


def _escape_decoded(path: str) -> str:
    """A percent-decoded path made sendable again: a path as sent is unchanged."""
    return _UNSAFE_IN_PATH.sub(lambda m: quote(m.group(), safe="", errors="surrogatepass"), path)


def _body(event: Event, body_key: str = "body", flag_key: str = "isBase64Encoded") -> bytes:
    body = _text(event.get(body_key), body_key)
    if not body:
        return b""
    if event.get(flag_key) is True:
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise InvalidArgument("malformed event: body is not valid base64") from None
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("malformed event: body is not valid text") from None


def _scheme(fields: Fields) -> str:
    proto = _first(fields, "x-forwarded-proto")
    return "http" if proto is not None and proto.strip().lower() == "http" else "https"


# --- shaping responses -------------------------------------------------------------------


def _body_fields(response: Response) -> dict[str, Any]:
    """JSON bodies as text; anything else (protobuf) as base64."""
    media = (response.header("content-type") or "").partition(";")[0].strip().lower()
    if media == connect.JSON:
        try:
            return {"body": response.body.decode("utf-8"), "isBase64Encoded": False}
        except UnicodeDecodeError:
            pass
    return {"body": base64.b64encode(response.body).decode("ascii"), "isBase64Encoded": True}


def _grouped(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Values by name, matching names case-insensitively; the first spelling is kept."""
    names: dict[str, str] = {}
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        key = names.setdefault(name.lower(), name)
        grouped.setdefault(key, []).append(value)
    return grouped


def _joined(headers: Iterable[tuple[str, str]], separator: str = ", ") -> dict[str, str]:
    return {name: separator.join(values) for name, values in _grouped(headers).items()}


def _described(response: Response, headers: dict[str, Any]) -> dict[str, Any]:
    """The answer shape of ALB and VPC Lattice: a status line and one header map."""
    return {
        "statusCode": response.status,
        "statusDescription": _status_description(response.status),
        **headers,
        **_body_fields(response),
    }


def _status_description(status: int) -> str:
    from http import HTTPStatus  # here: only ALB and VPC Lattice answers need it

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


# --- event sources -----------------------------------------------------------------------


class EventSource:
    """One kind of HTTP event: how to recognise it, read it and answer it."""

    name: ClassVar[str]

    def matches(self, event: Event) -> bool:
        """Whether ``event`` comes from this source; never raises."""
        raise NotImplementedError

    def request(self, event: Event) -> Request:
        """The request the caller sent; ``InvalidArgument`` when the event is malformed."""
        raise NotImplementedError

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        """``response`` in the shape this source requires."""
        raise NotImplementedError


def _version_2(event: Event) -> bool:
    return event.get("version") == "2.0"


class VpcLatticeV2(EventSource):
    name = "vpc-lattice-v2"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return _version_2(event) and isinstance(context, dict) and "targetGroupArn" in context

    def request(self, event: Event) -> Request:
        fields = _fields(event.get("headers"), "headers")
        path, _, query = _text(event.get("path"), "path").partition("?")
        if not query:
            query = _query(event.get("queryStringParameters"), "queryStringParameters", _encode)
        return Request(
            method=_text(event.get("method"), "method"),
            path=path or "/",
            authority=_first(fields, "host") or "",
            headers=fields,
            body=_body(event),
            query=query,
            scheme=_scheme(fields),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        return _described(response, {"headers": _joined(response.headers)})


class HttpApi(EventSource):
    """API Gateway HTTP API, payload format 2.0."""

    name = "http-api"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return (
            _version_2(event)
            and "rawPath" in event
            and isinstance(context, dict)
            and isinstance(context.get("http"), dict)
        )

    def request(self, event: Event) -> Request:
        context = _context(event)
        fields = _fields(event.get("headers"), "headers")
        if event.get("cookies"):
            # Payload 2.0 moves Cookie headers into a list of their own.
            cookies = _fields({"cookie": event["cookies"]}, "cookies")
            fields.append(("cookie", "; ".join(value for _, value in cookies)))
        http = _mapping(context.get("http"), "requestContext.http")
        return Request(
            method=_text(http.get("method"), "requestContext.http.method"),
            path=self.path(_text(event.get("rawPath"), "rawPath")) or "/",
            authority=_first(fields, "host")
            or _text(context.get("domainName"), "requestContext.domainName"),
            headers=fields,
            body=_body(event),
            query=_text(event.get("rawQueryString"), "rawQueryString"),
        )

    def path(self, raw_path: str) -> str:
        # HTTP APIs give rawPath percent-decoded.
        return _escape_decoded(raw_path)

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        cookies = [v for n, v in response.headers if n.lower() == "set-cookie"]
        others = [(n, v) for n, v in response.headers if n.lower() != "set-cookie"]
        answer = {
            "statusCode": response.status,
            "headers": _joined(others, ","),
            **_body_fields(response),
        }
        if cookies:
            answer["cookies"] = cookies
        return answer


class FunctionUrl(HttpApi):
    """Lambda Function URL: payload 2.0 with a ``*.lambda-url.<region>.on.aws`` domain."""

    name = "function-url"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        if not (_version_2(event) and isinstance(context, dict)):
            return False
        domain = context.get("domainName")
        return isinstance(domain, str) and _FUNCTION_URL_DOMAIN.search(domain) is not None

    def path(self, raw_path: str) -> str:
        return raw_path  # kept as sent


class Alb(EventSource):
    """Application Load Balancer, with or without multi-value headers."""

    name = "alb"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return isinstance(context, dict) and isinstance(context.get("elb"), dict)

    def request(self, event: Event) -> Request:
        multi = "multiValueHeaders" in event
        fields = _fields(event.get("multiValueHeaders" if multi else "headers"), "headers")
        params = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters")
        return Request(
            method=_text(event.get("httpMethod"), "httpMethod"),
            path=_text(event.get("path"), "path") or "/",
            authority=_first(fields, "host") or "",
            headers=fields,
            body=_body(event),
            # ALB leaves the parameters encoded as they were sent.
            query=_query(params, "queryStringParameters", _as_sent),
            scheme=_scheme(fields),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        # The load balancer reads only the header map of the mode the target group uses.
        if "multiValueHeaders" in event:
            return _described(response, {"multiValueHeaders": _grouped(response.headers)})
        return _described(response, {"headers": _joined(response.headers)})


class RestApi(EventSource):
    """API Gateway payload format 1.0: REST APIs (and HTTP APIs configured for it)."""

    name = "rest-api"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return "httpMethod" in event and isinstance(context, dict) and "apiId" in context

    def request(self, event: Event) -> Request:
        context = _context(event)
        multi = event.get("multiValueHeaders")
        fields = _fields(multi if multi else event.get("headers"), "headers")
        body = _body(event)
        if body and event.get("isBase64Encoded") is not True and _is_proto(fields):
            raise InvalidArgument(_MANGLED_BODY)
        # requestContext.path is the path as sent: ``path`` lacks the stage or base path.
        path = _text(context.get("path"), "requestContext.path") or _text(event.get("path"), "path")
        if event.get("version") == "1.0":
            path = _escape_decoded(path)  # an HTTP API: it gives the path decoded
        params = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters")
        return Request(
            method=_text(event.get("httpMethod"), "httpMethod"),
            path=path or "/",
            authority=_first(fields, "host")
            or _text(context.get("domainName"), "requestContext.domainName"),
            headers=fields,
            body=body,
            # API Gateway decodes the parameters: encode them again.
            query=_query(params, "queryStringParameters", _encode),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        grouped = _grouped(response.headers)
        answer: dict[str, Any] = {
            "statusCode": response.status,
            "headers": {name: values[0] for name, values in grouped.items() if len(values) == 1},
            **_body_fields(response),
        }
        repeated = {name: values for name, values in grouped.items() if len(values) > 1}
        if repeated:
            answer["multiValueHeaders"] = repeated
        return answer


def _is_proto(fields: Fields) -> bool:
    content_type = _first(fields, "content-type") or ""
    return content_type.partition(";")[0].strip().lower() == connect.PROTO


class VpcLatticeV1(EventSource):
    name = "vpc-lattice-v1"

    def matches(self, event: Event) -> bool:
        return "raw_path" in event and "method" in event

    def request(self, event: Event) -> Request:
        fields = _fields(event.get("headers"), "headers")
        path, _, query = _text(event.get("raw_path"), "raw_path").partition("?")
        if not query:
            params = event.get("query_string_parameters")
            query = _query(params, "query_string_parameters", _encode)
        return Request(
            method=_text(event.get("method"), "method"),
            path=path or "/",
            authority=_first(fields, "host") or "",
            headers=fields,
            body=_body(event, "body", "is_base64_encoded"),
            query=query,
            scheme=_scheme(fields),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        return _described(response, {"headers": _joined(response.headers)})


# In the order of the module docstring: the first that matches wins.
SOURCES: tuple[EventSource, ...] = (
    VpcLatticeV2(),
    FunctionUrl(),
    HttpApi(),
    Alb(),
    RestApi(),
    VpcLatticeV1(),
)


def event_source(event: Event) -> EventSource:
    """The source of an HTTP event, or ``UnsupportedEvent``."""
    for source in SOURCES:
        if source.matches(event):
            return source
    keys = ", ".join(sorted(str(k)[:40] for k in event)[:12])
    raise UnsupportedEvent(f"unrecognised Lambda event (keys: {keys or 'none'}): {_EXPECTED}")


def serve(endpoint: Endpoint, source: EventSource, event: Event) -> tuple[dict[str, Any], int]:
    """The answer to an HTTP event and its status."""
    try:
        request = source.request(event)
    except DispatchletError as exc:
        response = endpoint.reject(exc)
    else:
        response = endpoint.handle(request)
    return source.response(response, event), response.status


def invoke(endpoint: Endpoint, payload: str) -> tuple[str, Status]:
    """The answer to a direct invocation and its run status."""
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise UnsupportedEvent(
            f"direct invocation payload is not standard base64: {_EXPECTED}"
        ) from None
    try:
        request = function_pb2.RunRequest.FromString(data)
    except DecodeError as exc:
        raise UnsupportedEvent(
            f"direct invocation payload is not a serialized dispatch.sdk.v1.RunRequest ({exc})"
        ) from None
    result = endpoint.run(request)
    return base64.b64encode(result.SerializeToString()).decode("ascii"), Status(result.status)


# --- logs and metrics --------------------------------------------------------------------


class _Metrics(Protocol):
    def __call__(self, status: str, milliseconds: float) -> None: ...


def _metrics_enabled(metrics: bool | None) -> bool:
    if metrics is not None:
        return metrics
    return os.environ.get(METRICS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _powertools_metrics() -> _Metrics:
    """Embedded metrics through aws-lambda-powertools, imported now and only for this."""
    blocked = _block_botocore()
    try:
        from aws_lambda_powertools.metrics import (  # type: ignore[import-not-found, unused-ignore]
            EphemeralMetrics,
            MetricUnit,
        )
    except ImportError as exc:
        raise RuntimeError(
            "metrics need aws-lambda-powertools: pip install 'dispatchlet[lambda]'"
        ) from exc
    finally:
        _unblock_botocore(blocked)
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or METRICS_NAMESPACE
    service = os.environ.get("POWERTOOLS_SERVICE_NAME") or METRICS_NAMESPACE

    def record(status: str, milliseconds: float) -> None:
        # A fresh set per invocation: nothing shared with the application's own metrics.
        metrics = EphemeralMetrics(namespace=namespace, service=service)
        metrics.add_dimension(name="status", value=status)
        metrics.add_metric(name="Runs", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=milliseconds)
        metrics.flush_metrics()

    return record


def _block_botocore() -> bool:
    """Keep powertools from importing botocore (present in every Lambda runtime).

    Its package init imports botocore, only to tag AWS SDK calls with its user agent;
    that import would add tens of milliseconds to the cold start of a function that may
    never call AWS.
    """
    if "botocore" in sys.modules or "aws_lambda_powertools" in sys.modules:
        return False
    sys.modules["botocore"] = None  # type: ignore[assignment]
    return True


def _unblock_botocore(blocked: bool) -> None:
    if blocked and sys.modules.get("botocore", False) is None:
        del sys.modules["botocore"]


class _Telemetry:
    """One log line per invocation, and metrics when enabled."""

    def __init__(self, logger: LoggerLike, metrics: _Metrics | None) -> None:
        self.logger = logger
        self.metrics = metrics
        self.cold_start = True

    def record(self, context: Any, source: str, status: int | Status, seconds: float) -> None:
        label = status.name if isinstance(status, Status) else str(status)
        milliseconds = round(seconds * 1000, 3)
        fields = {
            "event_source": source,
            "status": label,
            "duration_ms": milliseconds,
            "function_request_id": getattr(context, "aws_request_id", None),
            "function_name": getattr(context, "function_name", None),
            "cold_start": self.cold_start,
        }
        self.cold_start = False
        self.logger.info("dispatch %s: %s in %.1f ms", source, label, milliseconds, extra=fields)
        if self.metrics is not None:
            self.metrics(label, milliseconds)


def lambda_handler(
    endpoint: Endpoint, *, metrics: bool | None = None, logger: LoggerLike | None = None
) -> LambdaHandler:
    """A Lambda handler serving ``endpoint`` for direct invocations and HTTP events.

    ``metrics``: write CloudWatch embedded metrics (needs aws-lambda-powertools); by
    default on when ``DISPATCHLET_METRICS`` is 1/true/yes/on. ``logger``: where the
    one-line summary of each invocation goes (e.g. a powertools ``Logger``).
    """
    telemetry = _Telemetry(
        logger if logger is not None else logging.getLogger("dispatchlet.aws_lambda"),
        _powertools_metrics() if _metrics_enabled(metrics) else None,
    )

    def handler(event: Any, context: Any) -> Any:
        started = time.perf_counter()
        answer: Any
        status: int | Status
        if isinstance(event, str):
            source = "direct"
            answer, status = invoke(endpoint, event)
        elif isinstance(event, dict):
            http = event_source(event)
            source = http.name
            answer, status = serve(endpoint, http, event)
        else:
            raise UnsupportedEvent(
                f"unsupported Lambda event of type {type(event).__name__}: {_EXPECTED}"
            )
        telemetry.record(context, source, status, time.perf_counter() - started)
        return answer

    return handler


__all__ = [
    "SOURCES",
    "Alb",
    "EventSource",
    "FunctionUrl",
    "HttpApi",
    "RestApi",
    "UnsupportedEvent",
    "VpcLatticeV1",
    "VpcLatticeV2",
    "event_source",
    "invoke",
    "lambda_handler",
    "serve",
]
