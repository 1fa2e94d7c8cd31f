"""What every Lambda HTTP event source shares: the ``EventSource`` shape, reading an
event's fields defensively, and shaping an answer's body and headers."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from ...core import connect
from ...core.errors import DispatchletError, InvalidArgument
from ...core.http import Request, Response, header_value, media_type

Event = Mapping[str, Any]
Fields = list[tuple[str, str]]

EXPECTED = (
    "expected a JSON string holding the standard base64 of a serialized "
    "dispatch.sdk.v1.RunRequest (direct invocation), or an HTTP event from API Gateway "
    "(REST or HTTP API), a Lambda Function URL, an Application Load Balancer or VPC Lattice"
)


class UnsupportedEvent(ValueError, DispatchletError):
    """An invocation payload the adapter cannot serve; Lambda reports it as a function error."""


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


# --- reading events: anything JSON can carry is refused with InvalidArgument ----------


def mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise InvalidArgument(f"malformed event: {what} is not an object")


def text(value: object, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise InvalidArgument(f"malformed event: {what} is not a string")


def context(event: Event) -> Mapping[str, Any]:
    return mapping(event.get("requestContext"), "requestContext")


def fields(value: object, what: str) -> Fields:
    """Header fields from a map of names to a value or a list of values, all kept."""
    found: Fields = []
    for name, values in mapping(value, what).items():
        if not isinstance(name, str):
            raise InvalidArgument(f"malformed event: {what} has a name that is not text")
        if isinstance(values, str):
            found.append((name, values))
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            found.extend((name, v) for v in values)
        else:
            raise InvalidArgument(f"malformed event: {what} {name[:40]!r} is not text")
    return found


def host(found: Fields) -> str | None:
    return header_value(found, "host")


def query(params: object, what: str, encode: Callable[[str], str]) -> str:
    """A query string rebuilt from parameters, for sources that keep no raw one."""
    pairs = fields(params, what)
    try:
        return "&".join(f"{encode(name)}={encode(value)}" for name, value in pairs)
    except UnicodeEncodeError:  # a lone surrogate: JSON carries it, no client sent it
        raise InvalidArgument(f"malformed event: {what} is not valid text") from None


def encoded(value: str) -> str:
    from urllib.parse import quote  # here: only events that carry parameters need it

    return quote(value, safe="")


def as_sent(value: str) -> str:
    return value


def body(event: Event, body_key: str = "body", flag_key: str = "isBase64Encoded") -> bytes:
    data = text(event.get(body_key), body_key)
    if not data:
        return b""
    if event.get(flag_key) is True:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError:
            raise InvalidArgument("malformed event: body is not valid base64") from None
    try:
        return data.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("malformed event: body is not valid text") from None


def scheme(found: Fields) -> str:
    proto = header_value(found, "x-forwarded-proto")
    return "http" if proto is not None and proto.strip().lower() == "http" else "https"


# --- shaping answers -------------------------------------------------------------------


def body_fields(response: Response) -> dict[str, Any]:
    """JSON bodies as text; anything else (protobuf) as base64."""
    if media_type(response.header("content-type")) == connect.JSON:
        try:
            return {"body": response.body.decode("utf-8"), "isBase64Encoded": False}
        except UnicodeDecodeError:
            pass
    return {"body": base64.b64encode(response.body).decode("ascii"), "isBase64Encoded": True}


def grouped(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Values by name, matching names case-insensitively; the first spelling is kept."""
    names: dict[str, str] = {}
    found: dict[str, list[str]] = {}
    for name, value in headers:
        key = names.setdefault(name.lower(), name)
        found.setdefault(key, []).append(value)
    return found


def joined(headers: Iterable[tuple[str, str]], separator: str = ", ") -> dict[str, str]:
    return {name: separator.join(values) for name, values in grouped(headers).items()}


def described(response: Response, headers: dict[str, Any]) -> dict[str, Any]:
    """The answer shape of ALB and VPC Lattice: a status line and one header map."""
    return {
        "statusCode": response.status,
        "statusDescription": _status_description(response.status),
        **headers,
        **body_fields(response),
    }


def _status_description(status: int) -> str:
    from http import HTTPStatus  # here: only ALB and VPC Lattice answers need it

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
