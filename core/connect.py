"""The Connect unary wire format of FunctionService/Run: codecs and error bodies, for
the endpoint (decode a request, encode a response or an error) and for its callers
(encode a request, decode a response, read an error)."""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError as ProtobufDecodeError

from ..proto.dispatch.sdk.v1 import function_pb2, status_pb2
from .errors import DispatchletError, InvalidArgument, MethodNotAllowed, UnsupportedMediaType
from .http import Response, media_type

RUN_PATH = "/dispatch.sdk.v1.FunctionService/Run"
PROTO = "application/proto"
JSON = "application/json"
CODECS = (PROTO, JSON)


def codec(content_type: str | None) -> str:
    """The codec a Content-Type asks for, or ``UnsupportedMediaType``."""
    if content_type is None:
        raise UnsupportedMediaType(f"missing Content-Type: send {PROTO} or {JSON}")
    kind = media_type(content_type)
    if kind not in CODECS:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {content_type[:100]!r}: send {PROTO} or {JSON}"
        )
    return kind


def decode_request(body: bytes, codec: str) -> function_pb2.RunRequest:
    """Parse a RunRequest in ``codec``; anything undecodable is ``InvalidArgument``."""
    if codec == PROTO:
        try:
            return function_pb2.RunRequest.FromString(body)
        except (ProtobufDecodeError, RuntimeError) as exc:
            raise InvalidArgument(f"cannot decode RunRequest: {exc}") from None
    # json_format is imported here: only JSON callers pay for it.
    from google.protobuf import json_format

    request = function_pb2.RunRequest()
    try:
        json_format.Parse(body, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidArgument(f"cannot decode RunRequest from JSON: {exc}") from None
    return request


def encode_response(message: function_pb2.RunResponse, codec: str) -> Response:
    """A 200 response carrying ``message`` in ``codec``."""
    body = message.SerializeToString() if codec == PROTO else _to_json(message)
    return Response(200, [("Content-Type", codec)], body)


def _to_json(message: function_pb2.RunResponse) -> bytes:
    from google.protobuf import json_format

    try:
        return json_format.MessageToJson(message, indent=None).encode("utf-8")
    except (TypeError, ValueError, json_format.Error) as exc:
        # An output the JSON mapping cannot show (an Any of a type this process does not
        # know): the run still has an answer, in a form JSON callers can read.
        failed = function_pb2.RunResponse(status=status_pb2.STATUS_PERMANENT_ERROR)
        error = failed.exit.result.error
        error.type = "TypeError"
        error.message = f"the output cannot be represented in JSON: {exc}"
        return json_format.MessageToJson(failed, indent=None).encode("utf-8")


def http_error_response(error: DispatchletError) -> Response:
    """A Connect error: the error's HTTP status and a JSON body with code and message."""
    headers = [("Content-Type", JSON)]
    if isinstance(error, MethodNotAllowed):
        headers.append(("Allow", "POST"))
    elif isinstance(error, UnsupportedMediaType):
        headers.append(("Accept-Post", ", ".join(CODECS)))
    import json  # error answers only: it costs cold-start time

    body = json.dumps({"code": error.code, "message": str(error)}).encode("utf-8")
    return Response(error.http_status, headers, body)


# --- the caller's half -----------------------------------------------------------------


class InvalidAnswer(ValueError):
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
