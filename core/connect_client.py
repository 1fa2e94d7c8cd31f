"""The Connect unary wire format of FunctionService/Run, the caller's half: encoding a
Run request, reading the answer or the error that comes back. The scheduler, the client
and the command line use it; an endpoint imports only ``connect``."""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError as ProtobufDecodeError

from ..proto.dispatch.sdk.v1 import function_pb2
from .connect import JSON, PROTO
from .errors import DispatchletError
from .http import media_type


class InvalidAnswer(ValueError, DispatchletError):
    """An answer that is not what the protocol allows (a 200 that holds no RunResponse)."""


class ConnectError(NamedTuple):
    """An HTTP error answer: the Connect code and message when the body is a Connect
    error, else no code and the reason phrase with the start of the body."""

    http_status: int
    code: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


def encode_request(request: function_pb2.RunRequest, codec: str) -> bytes:
    """The body of a Run request in ``codec``."""
    if codec == PROTO:
        return request.SerializeToString()
    from google.protobuf import json_format

    return json_format.MessageToJson(request, indent=None).encode("utf-8")


def decode_response(content_type: str | None, body: bytes) -> function_pb2.RunResponse:
    """The RunResponse in a 200 answer, in the codec its Content-Type names;
    ``InvalidAnswer`` when it holds none."""
    kind = media_type(content_type)
    response = function_pb2.RunResponse()
    if kind == PROTO:
        try:
            response.ParseFromString(body)
        except (ProtobufDecodeError, RuntimeError) as exc:
            raise InvalidAnswer(f"cannot decode the RunResponse: {exc}") from None
        return response
    if kind == JSON:
        from google.protobuf import json_format

        try:
            json_format.Parse(body, response, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
            raise InvalidAnswer(f"cannot decode the RunResponse: {exc}") from None
        return response
    raise InvalidAnswer(f"unexpected Content-Type {content_type!r} in the answer")


def parse_error(http_status: int, content_type: str | None, body: bytes) -> ConnectError:
    """What an HTTP error answer says, whatever its body holds."""
    if media_type(content_type) == JSON:
        import json

        try:
            error = json.loads(body)
        except (ValueError, RecursionError):
            error = None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            message = error.get("message", "")
            return ConnectError(http_status, error["code"], str(message))
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(http_status).phrase
    except ValueError:
        phrase = "error"
    text = body[:2000].decode("utf-8", "replace").strip()
    return ConnectError(http_status, None, f"{phrase}: {text[:500]}" if text else phrase)
