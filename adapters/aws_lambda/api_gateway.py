"""API Gateway events: HTTP APIs (payload 2.0), Lambda Function URLs (the same payload
on a ``*.lambda-url.<region>.on.aws`` domain) and payload 1.0 (REST APIs)."""

from __future__ import annotations

import functools
import re
from typing import Any

from ...core import connect
from ...core.errors import InvalidArgument
from ...core.http import Request, Response, header_value, media_type
from . import source
from .source import Event, EventSource

MANGLED_BODY = (
    "API Gateway passed this application/proto body as text, which corrupts binary data: "
    'give the REST API the binary media type */* (binaryMediaTypes: ["*/*"], in SAM '
    'BinaryMediaTypes: ["*~1*"]) or at least binaryMediaTypes: ["application/proto"], '
    "then redeploy it"
)
_REGION_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def version_2(event: Event) -> bool:
    return event.get("version") == "2.0"


def is_function_url_domain(domain: str) -> bool:
    """Whether ``domain`` is ``<id>.lambda-url.<region>.on.aws``."""
    head, _, region = domain.removesuffix(".on.aws").rpartition(".")
    return (
        domain.endswith(".on.aws")
        and head.endswith(".lambda-url")
        and bool(region)
        and _REGION_CHARACTERS.issuperset(region)
    )


@functools.cache
def _unsafe_in_path() -> re.Pattern[str]:
    # A "%" that starts no escape, or a character that a client must escape in a path.
    # Compiled when first needed: a cold start of a Function URL never needs it.
    return re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")


def escape_decoded(path: str) -> str:
    """A percent-decoded path made sendable again: a path as sent is unchanged."""
    from urllib.parse import quote

    return _unsafe_in_path().sub(lambda m: quote(m.group(), safe="", errors="surrogatepass"), path)


class HttpApi(EventSource):
    """API Gateway HTTP API, payload format 2.0."""

    name = "http-api"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return (
            version_2(event)
            and "rawPath" in event
            and isinstance(context, dict)
            and isinstance(context.get("http"), dict)
        )

    def request(self, event: Event) -> Request:
        context = source.context(event)
        fields = source.fields(event.get("headers"), "headers")
        if event.get("cookies"):
            # Payload 2.0 moves Cookie headers into a list of their own.
            cookies = source.fields({"cookie": event["cookies"]}, "cookies")
            fields.append(("cookie", "; ".join(value for _, value in cookies)))
        http = source.mapping(context.get("http"), "requestContext.http")
        return Request(
            method=source.text(http.get("method"), "requestContext.http.method"),
            path=self.path(source.text(event.get("rawPath"), "rawPath")) or "/",
            authority=source.host(fields)
            or source.text(context.get("domainName"), "requestContext.domainName"),
            headers=fields,
            body=source.body(event),
            query=source.text(event.get("rawQueryString"), "rawQueryString"),
        )

    def path(self, raw_path: str) -> str:
        # HTTP APIs give rawPath percent-decoded.
        return escape_decoded(raw_path)

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        cookies = [v for n, v in response.headers if n.lower() == "set-cookie"]
        others = [(n, v) for n, v in response.headers if n.lower() != "set-cookie"]
        answer = {
            "statusCode": response.status,
            "headers": source.joined(others, ","),
            **source.body_fields(response),
        }
        if cookies:
            answer["cookies"] = cookies
        return answer


class FunctionUrl(HttpApi):
    """Lambda Function URL: payload 2.0 with a ``*.lambda-url.<region>.on.aws`` domain."""

    name = "function-url"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        if not (version_2(event) and isinstance(context, dict)):
            return False
        domain = context.get("domainName")
        return isinstance(domain, str) and is_function_url_domain(domain)

    def path(self, raw_path: str) -> str:
        return raw_path  # kept as sent


class RestApi(EventSource):
    """API Gateway payload format 1.0: REST APIs (and HTTP APIs configured for it)."""

    name = "rest-api"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return "httpMethod" in event and isinstance(context, dict) and "apiId" in context

    def request(self, event: Event) -> Request:
        context = source.context(event)
        multi = event.get("multiValueHeaders")
        fields = source.fields(multi if multi else event.get("headers"), "headers")
        body = source.body(event)
        proto = media_type(header_value(fields, "content-type")) == connect.PROTO
        if body and event.get("isBase64Encoded") is not True and proto:
            raise InvalidArgument(MANGLED_BODY)
        # requestContext.path is the path as sent: ``path`` lacks the stage or base path.
        path = source.text(context.get("path"), "requestContext.path") or source.text(
            event.get("path"), "path"
        )
        if event.get("version") == "1.0":
            path = escape_decoded(path)  # an HTTP API: it gives the path decoded
        params = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters")
        return Request(
            method=source.text(event.get("httpMethod"), "httpMethod"),
            path=path or "/",
            authority=source.host(fields)
            or source.text(context.get("domainName"), "requestContext.domainName"),
            headers=fields,
            body=body,
            # API Gateway decodes the parameters: encode them again.
            query=source.query(params, "queryStringParameters", source.encoded),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        grouped = source.grouped(response.headers)
        answer: dict[str, Any] = {
            "statusCode": response.status,
            "headers": {name: values[0] for name, values in grouped.items() if len(values) == 1},
            **source.body_fields(response),
        }
        repeated = {name: values for name, values in grouped.items() if len(values) > 1}
        if repeated:
            answer["multiValueHeaders"] = repeated
        return answer
