"""The Connect unary wire format of FunctionService/Run, the endpoint's half: codecs and
error bodies (``connect_client`` has the caller's half)."""

from __future__ import annotations

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
