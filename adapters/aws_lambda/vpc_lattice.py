"""VPC Lattice events, versions 1 and 2: the same request under different key names."""

from __future__ import annotations

from typing import Any

from ...core.http import Request, Response
from . import source
from .api_gateway import version_2
from .source import Event, EventSource


class VpcLatticeV2(EventSource):
    name = "vpc-lattice-v2"
    keys = ("path", "queryStringParameters", "isBase64Encoded")

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return version_2(event) and isinstance(context, dict) and "targetGroupArn" in context

    def request(self, event: Event) -> Request:
        path_key, query_key, flag_key = self.keys
        fields = source.fields(event.get("headers"), "headers")
        path, _, query = source.text(event.get(path_key), path_key).partition("?")
        if not query:
            query = source.query(event.get(query_key), query_key, source.encoded)
        return Request(
            method=source.text(event.get("method"), "method"),
            path=path or "/",
            authority=source.host(fields) or "",
            headers=fields,
            body=source.body(event, "body", flag_key),
            query=query,
            scheme=source.scheme(fields),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        return source.described(response, {"headers": source.joined(response.headers)})


class VpcLatticeV1(VpcLatticeV2):
    name = "vpc-lattice-v1"
    keys = ("raw_path", "query_string_parameters", "is_base64_encoded")

    def matches(self, event: Event) -> bool:
        return "raw_path" in event and "method" in event
