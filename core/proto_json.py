"""Messages in protobuf's JSON mapping, whatever the ``Any`` values they carry: one whose
type this process does not know (a user's own message) is shown as
``{"@type": <type URL>, "value": <base64 of its bytes>}`` rather than failing the whole
answer."""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import Iterator

from google.protobuf import any_pb2, json_format, message
from google.protobuf.descriptor import FieldDescriptor

_UNRESOLVED = (TypeError, KeyError, ValueError, json_format.Error)


def message_to_json(value: message.Message) -> bytes:
    """``value`` in JSON, compact, UTF-8."""
    return json.dumps(message_to_dict(value), separators=(",", ":")).encode("utf-8")


JSON_CHUNK = 256 * 1024
"""How many characters of a long string ``json_chunks`` escapes at a time."""


class Base64:
    """Bytes that ``json_chunks`` writes as a base64 string, a piece at a time."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)


class Utf8Text:
    """UTF-8 bytes that ``json_chunks`` writes as a JSON string, a piece at a time
    (``UnicodeDecodeError`` if they are not UTF-8: ``json_size`` finds it out first)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)


def json_chunks(value: object) -> Iterator[bytes]:
    """``value`` in JSON, compact, UTF-8, as ``message_to_json`` writes it, in pieces:
    a long string (an output's base64) is escaped and encoded ``JSON_CHUNK`` characters
    at a time, not copied whole twice more (as ``json.dumps`` and ``encode`` would)."""
    if isinstance(value, dict):
        yield b"{"
        for index, (key, item) in enumerate(value.items()):
            yield (b"," if index else b"") + _dumps(str(key)) + b":"
            yield from json_chunks(item)
        yield b"}"
    elif isinstance(value, list):
        yield b"["
        for index, item in enumerate(value):
            if index:
                yield b","
            yield from json_chunks(item)
        yield b"]"
    elif isinstance(value, Base64):
        yield b'"'
        step = max(3, JSON_CHUNK // 4 * 3)  # whole groups of 3 bytes: the pieces join up
        for start in range(0, len(value.data), step):
            yield base64.b64encode(value.data[start : start + step])
        yield b'"'
    elif isinstance(value, Utf8Text):
        yield b'"'
        # A character cut between two pieces is decoded with the next one.
        decoder = codecs.getincrementaldecoder("utf-8")()
        for start in range(0, len(value.data), JSON_CHUNK):
            text = decoder.decode(value.data[start : start + JSON_CHUNK])
            if text:
                yield _dumps(text)[1:-1]
        decoder.decode(b"", final=True)  # nothing cut off at the end
        yield b'"'
    elif isinstance(value, str) and len(value) > JSON_CHUNK:
        # Escaping is character by character (a code point never splits): the pieces
        # make the same text as the whole.
        yield b'"'
        for start in range(0, len(value), JSON_CHUNK):
            yield _dumps(value[start : start + JSON_CHUNK])[1:-1]
        yield b'"'
    else:
        yield _dumps(value)


def json_size(value: object) -> int:
    """How many bytes ``json_chunks(value)`` writes (a ``Base64``'s counted, not encoded)."""
    if isinstance(value, Base64):
        return 2 + (len(value.data) + 2) // 3 * 4
    if isinstance(value, dict):
        return 2 + sum(
            (1 if index else 0) + len(_dumps(str(key))) + 1 + json_size(item)
            for index, (key, item) in enumerate(value.items())
        )
    if isinstance(value, list):
        return 2 + max(0, len(value) - 1) + sum(json_size(item) for item in value)
    return sum(len(piece) for piece in json_chunks(value))


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def message_to_dict(value: message.Message) -> object:
    """``value`` as protobuf's JSON mapping would give it, with the ``Any`` values it
    cannot resolve in their opaque form."""
    return shown_dict(value)[0]


def shown_dict(value: message.Message) -> tuple[object, bool]:
    """``message_to_dict(value)``, and whether every ``Any`` in it was resolved (its
    keys are then in the order of their fields' numbers; if not, the scalar fields'
    come first, then the message fields', each in that order)."""
    try:
        return json_format.MessageToDict(value), True
    except _UNRESOLVED:
        pass
    return _opaque_dict(value), False


def _opaque_dict(value: message.Message) -> object:
    if isinstance(value, any_pb2.Any):
        return {"@type": value.type_url, "value": base64.b64encode(value.value).decode("ascii")}
    # The scalar fields by the JSON mapping (the message fields cleared), then each
    # message field on its own.
    scalars = type(value)()
    scalars.CopyFrom(value)
    nested = [f for f, _ in value.ListFields() if f.type == FieldDescriptor.TYPE_MESSAGE]
    for field in nested:
        scalars.ClearField(field.name)
    shown = json_format.MessageToDict(scalars)
    assert isinstance(shown, dict)
    for field in nested:
        held = getattr(value, field.name)
        kind = field.message_type
        assert kind is not None  # a message field's
        if kind.GetOptions().map_entry:
            entries = kind.fields_by_name["value"]
            if entries.type == FieldDescriptor.TYPE_MESSAGE:
                shown[field.json_name] = {str(k): message_to_dict(v) for k, v in held.items()}
            else:
                partial = type(value)()
                getattr(partial, field.name).update(held)
                shown.update(json_format.MessageToDict(partial))
        elif field.is_repeated:
            shown[field.json_name] = [message_to_dict(item) for item in held]
        else:
            shown[field.json_name] = message_to_dict(held)
    return shown
