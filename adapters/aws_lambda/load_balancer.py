"""Application Load Balancer events, with or without multi-value headers."""

from __future__ import annotations

from typing import Any

from ...core.http import Request, Response
from . import source
from .source import Event, EventSource


class Alb(EventSource):
    """Application Load Balancer, with or without multi-value headers."""

    name = "alb"

    def matches(self, event: Event) -> bool:
        context = event.get("requestContext")
        return isinstance(context, dict) and isinstance(context.get("elb"), dict)

    def request(self, event: Event) -> Request:
        multi = "multiValueHeaders" in event
        fields = source.fields(event.get("multiValueHeaders" if multi else "headers"), "headers")
        params = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters")
        return Request(
            method=source.text(event.get("httpMethod"), "httpMethod"),
            path=source.text(event.get("path"), "path") or "/",
            authority=source.host(fields) or "",
            headers=fields,
            body=source.body(event),
            # ALB leaves the parameters encoded as they were sent.
            query=source.query(params, "queryStringParameters", source.as_sent),
            scheme=source.scheme(fields),
        )

    def response(self, response: Response, event: Event) -> dict[str, Any]:
        # The load balancer reads only the header map of the mode the target group uses.
        if "multiValueHeaders" in event:
            return source.described(
                response, {"multiValueHeaders": source.grouped(response.headers)}
            )
        return source.described(response, {"headers": source.joined(response.headers)})
