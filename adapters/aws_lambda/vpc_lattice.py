"""VPC Lattice events, versions 1 and 2."""

from __future__ import annotations

from typing import Any

from ...core.http import Request, Response
from . import source
from .api_gateway import version_2
from .source import Event, EventSource


class VpcLatticeV2(EventSource):
    name = "vpc-lattice-v2"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return version_2(event) and isinstance(context, dict) and "targetGroupArn" in context

    def request(self, event: Event) -> Request:
        fields = source.fields(event.get("headers"), "headers")
        path, _, query = source.text(event.get("path"), "path").partition("?")
        if not query:
            params = event.get("queryStringParameters")
            query = source.query(params, "queryStringParameters", source.encoded)
        return Request(
            method=source.text(event.get("method"), "method"),
            path=path or "/",
            authority=source.host(fields) or "",
            headers=fields,
            body=source.body(event),
            query=query,
            scheme=source.scheme(fields),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        return source.described(response, {"headers": source.joined(response.headers)})


class VpcLatticeV1(EventSource):
    name = "vpc-lattice-v1"

    def matches(self, event: Event) -> bool:
        return "raw_path" in event and "method" in event

    def request(self, event: Event) -> Request:
        fields = source.fields(event.get("headers"), "headers")
        path, _, query = source.text(event.get("raw_path"), "raw_path").partition("?")
        if not query:
            params = event.get("query_string_parameters")
            query = source.query(params, "query_string_parameters", source.encoded)
        return Request(
            method=source.text(event.get("method"), "method"),
            path=path or "/",
            authority=source.host(fields) or "",
            headers=fields,
            body=source.body(event, "body", "is_base64_encoded"),
            query=query,
            scheme=source.scheme(fields),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        return source.described(response, {"headers": source.joined(response.headers)})
