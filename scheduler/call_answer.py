"""A Get or Wait answer written from the stored CallResult's bytes: its output and error
are framed into the CallInfo as they are stored, in pieces, rather than parsed, copied
into the CallInfo and serialized again (each a copy of a value that may be as large as
``--max-output-size``).

The bytes are those of ``answer.SerializeToString()`` (and of ``message_to_json`` in
JSON) for the same message: the CallInfo's other fields are serialized as usual, and
the output and error, fields 6 and 7, are put between fields 5 and 8, where protobuf
writes them. The stored CallResult is protobuf's own serialization (the engine's), so
its fields' bytes are what serializing them again would give. A CallResult that does
not hold each of them once at most is answered the usual way.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator

from aiohttp import web
from google.protobuf import any_pb2, message

from ..core.connect import PROTO
from ..core.proto_json import Base64, Utf8Text, json_chunks, json_size, shown_dict
from ..core.proto_wire import LENGTH_DELIMITED, fields, frame
from ..proto.dispatch.sdk.v1 import call_pb2, error_pb2
from ..proto.dispatchlet.scheduler.v1 import calls_pb2

CallResponse = calls_pb2.GetResponse | calls_pb2.WaitResponse

LARGE_RESULT = 256 * 1024
"""From this size of a stored CallResult on, its answer is written in pieces (smaller
ones are answered whole, as any other)."""
PIECE = 1024 * 1024
"""The largest piece of a value written at once."""

_OUTPUT, _ERROR = 6, 7  # CallInfo's fields that come from the CallResult
_RESULT_OUTPUT, _RESULT_ERROR = 2, 3  # and where they are in the CallResult


class CallAnswer:
    """``kind(call=info)`` with ``info``'s output and error those of ``result``, a
    serialized CallResult (``info`` is without them)."""

    def __init__(self, kind: type[CallResponse], info: calls_pb2.CallInfo, result: bytes) -> None:
        self.kind = kind
        self.info = info
        self.result = result
        # Where its output and error are: looked for in a large one only (a small one is
        # answered as any other message).
        self._parts = result_parts(result) if len(result) >= LARGE_RESULT else None

    @property
    def framed(self) -> bool:
        """Whether the answer is written in pieces (large, and its CallResult plain)."""
        return self._parts is not None

    def message(self) -> CallResponse:
        """The whole answer, built as a message (``info`` is completed: the answer is
        written once)."""
        if self.result:
            add_result(self.info, self.result)
        return self.kind(call=self.info)

    def proto(self) -> Iterator[bytes | memoryview]:
        """The answer in protobuf, in pieces: the same bytes as ``message()``'s."""
        if self._parts is None:
            self._parts = result_parts(self.result)
        assert self._parts is not None, "a CallResult that is not plain"
        head = self.info.SerializeToString()
        split = next((f.start for f in fields(head) if f.number > _ERROR), len(head))
        view = memoryview(self.result)
        inner: list[bytes | memoryview] = [head[:split]]
        for number, (start, end) in zip((_OUTPUT, _ERROR), self._parts, strict=True):
            if start >= 0:
                inner += [frame(number, end - start), view[start:end]]
        inner.append(head[split:])
        yield frame(1, sum(len(part) for part in inner))  # GetResponse.call, WaitResponse.call
        for part in inner:
            yield from _pieces(part)

    def json(self) -> Iterator[bytes]:
        """The answer in JSON, in pieces: the same text as ``message_to_json``'s of
        ``message()``."""
        return json_chunks(self._json_value())

    def _json_value(self) -> dict[str, object]:
        if self._parts is None:
            self._parts = result_parts(self.result)
        assert self._parts is not None, "a CallResult that is not plain"
        shown, resolved = shown_dict(self.info)
        assert isinstance(shown, dict)
        view = memoryview(self.result)
        kinds: tuple[type[message.Message], ...] = (any_pb2.Any, error_pb2.Error)
        for name, (start, end), kind in zip(("output", "error"), self._parts, kinds, strict=True):
            if start >= 0 and name == "output":
                known = wrapper_output(view[start:end])
                if known is not None:
                    shown[name] = known
                    continue
            if start >= 0:
                # The value is parsed apart from the answer, and dropped once shown.
                value = kind()
                value.ParseFromString(typing.cast(bytes, view[start:end]))  # read as is
                shown[name], plain = shown_dict(value)
                resolved = resolved and plain
                del value
        # Where message_to_dict puts each key (``shown_dict``): by field number, the
        # message fields after the others when an Any was not resolved.
        fields_ = calls_pb2.CallInfo.DESCRIPTOR.fields_by_name
        order = {
            field.json_name: (not resolved and field.message_type is not None, field.number)
            for field in fields_.values()
        }
        ordered = dict(sorted(shown.items(), key=lambda item: order[item[0]]))
        del shown
        return {"call": ordered}

    def pieces(self, wire: str) -> tuple[int, Iterator[bytes | memoryview]]:
        """The answer in ``wire``: its length, and its bytes in pieces."""
        if wire == PROTO:
            return sum(len(piece) for piece in self.proto()), self.proto()
        value = self._json_value()
        return json_size(value), json_chunks(value)

    async def write(self, request: web.Request, wire: str) -> web.StreamResponse:
        """Send the answer in ``wire``, a piece at a time (each written when the client
        has taken the one before)."""
        answer = web.StreamResponse()
        answer.content_type = wire
        answer.content_length, pieces = self.pieces(wire)
        await answer.prepare(request)
        for piece in pieces:
            await answer.write(piece)
        await answer.write_eof()
        return answer


def _pieces(part: bytes | memoryview) -> Iterator[bytes | memoryview]:
    if len(part) <= PIECE:
        yield part
        return
    view = memoryview(part)
    for start in range(0, len(view), PIECE):
        yield view[start : start + PIECE]


def result_parts(result: bytes) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Where the output's and the error's bytes are in a serialized CallResult ((-1, -1)
    when absent), or None when it is not plain: malformed, or either field in it more
    than once (protobuf would merge them) or not length-delimited."""
    found: dict[int, tuple[int, int]] = {}
    try:
        for field in fields(memoryview(result)):
            if field.number in (_RESULT_OUTPUT, _RESULT_ERROR):
                if field.number in found or field.wire_type != LENGTH_DELIMITED:
                    return None
                found[field.number] = (field.value, field.end)
    except ValueError:
        return None
    absent = (-1, -1)
    return found.get(_RESULT_OUTPUT, absent), found.get(_RESULT_ERROR, absent)


WRAPPERS: dict[str, type[Base64] | type[Utf8Text]] = {
    "google.protobuf.BytesValue": Base64,
    "google.protobuf.StringValue": Utf8Text,
}
"""The outputs whose JSON is written from their bytes: what protobuf's JSON mapping makes
of them is their value, in base64 or as a string."""


def wrapper_output(output: memoryview) -> dict[str, object] | None:
    """The JSON of a serialized ``Any`` holding a ``BytesValue`` or a ``StringValue``
    (its value written from its bytes), or None if it holds another type or is not
    plain."""
    found: dict[int, tuple[int, int]] = {}
    try:
        for field in fields(output):
            if field.number in found or field.wire_type != LENGTH_DELIMITED:
                return None
            found[field.number] = (field.value, field.end)
        if set(found) - {1, 2}:
            return None
        start, end = found.get(1, (0, 0))
        type_url = bytes(output[start:end]).decode("utf-8")
        shown = WRAPPERS.get(type_url.rsplit("/", 1)[-1])
        if shown is None:
            return None
        start, end = found.get(2, (0, 0))
        wrapper = output[start:end]
        inner = list(fields(wrapper))
    except (ValueError, UnicodeDecodeError):
        return None
    if len(inner) > 1 or any(f.number != 1 or f.wire_type != LENGTH_DELIMITED for f in inner):
        return None
    data = wrapper[inner[0].value : inner[0].end] if inner else wrapper[:0]
    return {"@type": type_url, "value": shown(data)}


def add_result(info: calls_pb2.CallInfo, result: bytes) -> None:
    """Copy the output and error of ``result``, a serialized CallResult, into ``info``."""
    parsed = call_pb2.CallResult.FromString(result)
    if parsed.HasField("output"):
        info.output.CopyFrom(parsed.output)
    if parsed.HasField("error"):
        info.error.CopyFrom(parsed.error)


def answer_message(answer: message.Message | CallAnswer) -> message.Message:
    """The answer as a message, whichever form it has."""
    return answer.message() if isinstance(answer, CallAnswer) else answer
