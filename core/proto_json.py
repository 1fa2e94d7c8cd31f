"""Messages in protobuf's JSON mapping, whatever the ``Any`` values they carry: one whose
type this process does not know (a user's own message) is shown as
``{"@type": <type URL>, "value": <base64 of its bytes>}`` rather than failing the whole
answer."""

from __future__ import annotations

import base64
import json

from google.protobuf import any_pb2, json_format, message
from google.protobuf.descriptor import FieldDescriptor

_UNRESOLVED = (TypeError, KeyError, ValueError, json_format.Error)


def message_to_json(value: message.Message) -> bytes:
    """``value`` in JSON, compact, UTF-8."""
    return json.dumps(message_to_dict(value), separators=(",", ":")).encode("utf-8")


def message_to_dict(value: message.Message) -> object:
    """``value`` as protobuf's JSON mapping would give it, with the ``Any`` values it
    cannot resolve in their opaque form."""
    try:
        return json_format.MessageToDict(value)
    except _UNRESOLVED:
        pass
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
