"""The value codec: Python values to and from ``google.protobuf.Any``.

Function inputs and outputs travel as ``Any``. Plain values use the protobuf
well-known types, so that functions written in other languages can call Python
functions and be called by them; these rules are the contract for such callers.

Encoding (Python -> ``Any``, type URL ``type.googleapis.com/<full name>``):

=====================================  ==============================================
``None``                               ``google.protobuf.Empty``
``bool``                               ``google.protobuf.BoolValue``
``int`` in the int64 range             ``google.protobuf.Int64Value``
``float`` (NaN and infinities too)     ``google.protobuf.DoubleValue``
``str``                                ``google.protobuf.StringValue``
``bytes``, ``bytearray``, memoryview   ``google.protobuf.BytesValue``
``datetime.datetime``                  ``google.protobuf.Timestamp``
``datetime.timedelta``                 ``google.protobuf.Duration``
JSON-like ``list``, ``tuple``, dict    ``google.protobuf.Value`` (list or struct kind)
a protobuf message                     itself
an ``Any``                             itself, unchanged
=====================================  ==============================================

* A naive ``datetime`` is taken as UTC; an aware one is converted to UTC exactly.
  Outside the Timestamp range (years 1 to 9999 in UTC) it is an ``EncodeError``.
* A ``timedelta`` becomes a Duration whose seconds and nanos carry the same sign;
  beyond +-315,576,000,000 seconds it is an ``EncodeError``.
* A container is JSON-like when its dict keys are all ``str`` and its items are,
  recursively, ``None``, ``bool``, ``int``, ``float``, ``str``, or JSON-like
  containers nested at most ``MAX_DEPTH`` (32) deep. Numbers travel as doubles, so an
  ``int`` inside a container must be within +-2**53; on decoding, a number
  without fractional part within +-2**53 becomes an ``int``, as in JSON. Hence
  ints inside containers come back as ints, but an integral float inside a
  container (``1.0``, ``-0.0``) comes back as an ``int`` too, and tuples come
  back as lists. NaN and infinities inside containers come back as floats.
* ``bytearray`` and ``memoryview`` come back as ``bytes``.
* Subclasses of the types above are encoded as their base type (an ``IntEnum``
  member as its ``int``), as ``json.dumps`` does; the subclass is not preserved.
* Anything else - and an int outside int64, a container that is not JSON-like -
  is pickled into ``dispatch.sdk.python.v1.Pickled`` when pickling is allowed
  (``Endpoint(allow_pickle=True)``); otherwise it is an ``EncodeError``. Only
  Python reads a pickle: such a value cannot reach a function in another language.

Decoding (``Any`` -> Python) inverts the table and also accepts ``Int32Value``,
``UInt32Value``, ``UInt64Value`` and ``FloatValue`` (as ``int`` and ``float``),
``Struct`` and ``ListValue`` (as ``dict`` and ``list``), a ``Value`` of any kind
(an unset ``Value`` is ``None``, as a null), and an ``Any`` with neither type URL
nor value (an unset input) as ``None``. Timestamps become aware UTC datetimes and
Durations timedeltas, nanoseconds truncated toward zero to microseconds. Since
the well-known types decode to native values, a ``Timestamp`` or wrapper message
passed to ``to_any`` comes back as a ``datetime`` or plain value. Any other
message type known to the default descriptor pool (its generated module was
imported) decodes to an instance of its class; an unknown type is returned as
the ``Any`` itself, unchanged. Only the last path segment of a type URL names
the type, as in protobuf itself, so both ``type.googleapis.com/`` and the
``buf.build/stealthrocket/dispatch-proto/`` prefix of older senders are accepted.
A ``Pickled`` value is unpickled only when pickling is allowed. A malformed
``Any`` raises ``DecodeError`` and nothing else.
"""

from __future__ import annotations

import datetime
import typing
from collections.abc import Callable

from google.protobuf import (
    any_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    message,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)

# mypy given the file path alone cannot map core/ to dispatchlet.core (package-dir in
# pyproject), so this relative import is unresolvable to it; checked as a package it is.
from ..proto.dispatch.sdk.python.v1.pickled_pb2 import Pickled  # type: ignore[import-not-found, unused-ignore]
from .errors import DispatchletError
from .value_wire import (
    MAX_DEPTH,
    UNUSUAL,
    TooDeep,
    Unrepresentable,
    json_number,
    read_list,
    read_struct,
    read_value,
    type_label,
    value_bytes,
)

__all__ = [
    "LEGACY_TYPE_URL_PREFIX",
    "MAX_DEPTH",
    "TYPE_URL_PREFIX",
    "DecodeError",
    "EncodeError",
    "from_any",
    "to_any",
    "type_name",
]

TYPE_URL_PREFIX = "type.googleapis.com/"
LEGACY_TYPE_URL_PREFIX = "buf.build/stealthrocket/dispatch-proto/"

_ALLOW_PICKLE_HINT = "pickling can be enabled with Endpoint(allow_pickle=True)"

# Pinned rather than HIGHEST_PROTOCOL so that every supported Python reads it.
_PICKLE_PROTOCOL = 5

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_TIMESTAMP_MIN = -62_135_596_800  # 0001-01-01T00:00:00Z
_TIMESTAMP_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z
_DURATION_MAX = 315_576_000_000
_NANOS_MAX = 999_999_999

_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_EPOCH_NAIVE = datetime.datetime(1970, 1, 1)

_M = typing.TypeVar("_M", bound=message.Message)


class EncodeError(TypeError, DispatchletError):
    """A Python value that cannot be encoded into an ``Any``."""


class DecodeError(ValueError, DispatchletError):
    """An ``Any`` that cannot be decoded into a Python value."""


def _url(cls: type[message.Message]) -> str:
    return TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name


def _short(text: str, limit: int = 100) -> str:
    """repr of untrusted text, cut so that error messages stay small."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- Encoding ---------------------------------------------------------------

_URL_EMPTY = _url(empty_pb2.Empty)
_URL_BOOL = _url(wrappers_pb2.BoolValue)
_URL_INT64 = _url(wrappers_pb2.Int64Value)
_URL_DOUBLE = _url(wrappers_pb2.DoubleValue)
_URL_STRING = _url(wrappers_pb2.StringValue)
_URL_BYTES = _url(wrappers_pb2.BytesValue)
_URL_TIMESTAMP = _url(timestamp_pb2.Timestamp)
_URL_DURATION = _url(duration_pb2.Duration)
_URL_VALUE = _url(struct_pb2.Value)
_URL_PICKLED = _url(Pickled)


def _encode_none(value: None) -> any_pb2.Any:
    return any_pb2.Any(type_url=_URL_EMPTY)


def _encode_bool(value: bool) -> any_pb2.Any:
    data = wrappers_pb2.BoolValue(value=value).SerializeToString()
    return any_pb2.Any(type_url=_URL_BOOL, value=data)


def _encode_int(value: int) -> any_pb2.Any:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise Unrepresentable("it is outside the int64 range of google.protobuf.Int64Value")
    data = wrappers_pb2.Int64Value(value=value).SerializeToString()
    return any_pb2.Any(type_url=_URL_INT64, value=data)


def _encode_float(value: float) -> any_pb2.Any:
    data = wrappers_pb2.DoubleValue(value=value).SerializeToString()
    return any_pb2.Any(type_url=_URL_DOUBLE, value=data)


def _encode_str(value: str) -> any_pb2.Any:
    try:
        data = wrappers_pb2.StringValue(value=value).SerializeToString()
    except UnicodeEncodeError:
        raise Unrepresentable("it is not valid Unicode (it holds surrogates)") from None
    return any_pb2.Any(type_url=_URL_STRING, value=data)


def _encode_bytes(value: bytes | bytearray | memoryview) -> any_pb2.Any:
    if type(value) is not bytes:
        value = bytes(value)
    data = wrappers_pb2.BytesValue(value=value).SerializeToString()
    return any_pb2.Any(type_url=_URL_BYTES, value=data)


def _encode_datetime(value: datetime.datetime) -> any_pb2.Any:
    offset = value.utcoffset()
    naive = value.replace(tzinfo=None)
    # Plain timedelta arithmetic is exact, unlike timestamp() which goes through a float.
    delta = naive - _EPOCH_NAIVE if offset is None else (naive - _EPOCH_NAIVE) - offset
    seconds = delta.days * 86_400 + delta.seconds
    if not _TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX:
        raise EncodeError(
            f"cannot encode {value!r}: it is outside the range of google.protobuf.Timestamp "
            "(years 1 to 9999 in UTC)"
        )
    ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=delta.microseconds * 1000)
    return any_pb2.Any(type_url=_URL_TIMESTAMP, value=ts.SerializeToString())


def _encode_timedelta(value: datetime.timedelta) -> any_pb2.Any:
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    # Duration wants seconds and nanos of the same sign: truncate the magnitude.
    seconds, rest = divmod(abs(micros), 1_000_000)
    if seconds > _DURATION_MAX:
        raise EncodeError(
            f"cannot encode {value!r}: it is outside the range of google.protobuf.Duration "
            f"(+-{_DURATION_MAX} seconds)"
        )
    if micros < 0:
        seconds, rest = -seconds, -rest
    duration = duration_pb2.Duration(seconds=seconds, nanos=rest * 1000)
    return any_pb2.Any(type_url=_URL_DURATION, value=duration.SerializeToString())


def _encode_container(value: list[object] | tuple[object, ...] | dict[str, object]) -> any_pb2.Any:
    # Written straight to the wire (``value_wire``), not through message objects.
    return any_pb2.Any(type_url=_URL_VALUE, value=value_bytes(value, 0))


def _encode_message(value: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(value)
    return packed


def _pass_through(value: any_pb2.Any) -> any_pb2.Any:
    return value


_Encoder = Callable[[typing.Any], any_pb2.Any]

# Exact type -> encoder; subclasses take the slow path in _encoder_for.
_ENCODERS: dict[type, _Encoder] = {
    str: _encode_str,
    int: _encode_int,
    type(None): _encode_none,
    dict: _encode_container,
    list: _encode_container,
    bool: _encode_bool,
    float: _encode_float,
    bytes: _encode_bytes,
    tuple: _encode_container,
    datetime.datetime: _encode_datetime,
    datetime.timedelta: _encode_timedelta,
    bytearray: _encode_bytes,
    memoryview: _encode_bytes,
    any_pb2.Any: _pass_through,
}

# In order: the first base class that matches wins.
_SUBCLASS_ENCODERS: tuple[tuple[type | tuple[type, ...], _Encoder], ...] = (
    (int, lambda value: _encode_int(int.__int__(value))),
    (float, lambda value: _encode_float(float.__float__(value))),
    (str, lambda value: _encode_str(str.__str__(value))),
    ((bytes, bytearray), _encode_bytes),
    (datetime.datetime, _encode_datetime),
    (datetime.timedelta, _encode_timedelta),
    ((dict, list, tuple), _encode_container),
)


def _encoder_for(value: object) -> _Encoder | None:
    if isinstance(value, message.Message):
        # Generated classes live as long as the program: worth remembering.
        _ENCODERS[type(value)] = _encode_message
        return _encode_message
    for base, encoder in _SUBCLASS_ENCODERS:
        if isinstance(value, base):
            return encoder
    return None


def _encode_pickle(value: object) -> any_pb2.Any:
    try:
        import pickle  # only endpoints that opted in pay for it

        data = pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:  # __reduce__ may raise anything
        raise EncodeError(
            f"cannot encode a value of type {type_label(value)}: pickling it failed: {exc!r}"
        ) from exc
    pickled = Pickled(pickled_value=data)
    return any_pb2.Any(type_url=_URL_PICKLED, value=pickled.SerializeToString())


def to_any(value: object, *, allow_pickle: bool = False) -> any_pb2.Any:
    """Encode ``value`` into an ``Any`` (see the module docstring for the rules).

    An ``Any`` is returned as is, not copied. Raises ``EncodeError`` when the
    value cannot be encoded.
    """
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        encoder = _encoder_for(value)
    try:
        if encoder is None:
            raise Unrepresentable("no protobuf well-known type represents it")
        return encoder(value)
    except Unrepresentable as exc:
        if allow_pickle:
            return _encode_pickle(value)
        where = "".join(f"[{step!r}]" for step in exc.path)
        reason = f"at {where}, {exc.reason}" if where else exc.reason
        raise EncodeError(
            f"cannot encode a value of type {type_label(value)}: {reason}; {_ALLOW_PICKLE_HINT}"
        ) from None


# --- Decoding ---------------------------------------------------------------


def _parse(cls: type[_M], data: bytes) -> _M:
    try:
        return cls.FromString(data)
    except message.DecodeError as exc:
        raise DecodeError(f"invalid {cls.DESCRIPTOR.full_name}: {exc}") from exc


def _decode_empty(data: bytes) -> None:
    if data:  # still reject garbage, though unknown fields are fine
        _parse(empty_pb2.Empty, data)


def _wrapper_decoder(cls: type[message.Message]) -> Callable[[bytes], object]:
    """A decoder for one of the wrappers (BoolValue, Int64Value, ...): its ``value``."""

    def decode(data: bytes) -> object:
        return _parse(cls, data).value  # type: ignore[attr-defined]

    return decode


def _decode_timestamp(data: bytes) -> datetime.datetime:
    ts = _parse(timestamp_pb2.Timestamp, data)
    seconds, nanos = ts.seconds, ts.nanos
    if not _TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX or not 0 <= nanos <= _NANOS_MAX:
        raise DecodeError(
            f"invalid google.protobuf.Timestamp: seconds={seconds} nanos={nanos} out of range"
        )
    return _EPOCH + datetime.timedelta(seconds=seconds, microseconds=nanos // 1000)


def _decode_duration(data: bytes) -> datetime.timedelta:
    duration = _parse(duration_pb2.Duration, data)
    seconds, nanos = duration.seconds, duration.nanos
    if (
        not -_DURATION_MAX <= seconds <= _DURATION_MAX
        or not -_NANOS_MAX <= nanos <= _NANOS_MAX
        or (seconds < 0 < nanos)
        or (nanos < 0 < seconds)
    ):
        raise DecodeError(
            f"invalid google.protobuf.Duration: seconds={seconds} nanos={nanos} "
            "(out of range or of opposite signs)"
        )
    # Truncate toward zero, as on the encoding side; // alone would floor negatives.
    micros = nanos // 1000 if nanos >= 0 else -(-nanos // 1000)
    return datetime.timedelta(seconds=seconds, microseconds=micros)


_TOO_DEEP = f"google.protobuf.Value containers nested more than {MAX_DEPTH} deep"


def _check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise DecodeError(_TOO_DEEP)


def _from_value(value: struct_pb2.Value, depth: int) -> object:
    """The Python value of ``value``, found ``depth`` containers deep."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return json_number(value.number_value)
    if kind == "struct_value":
        return _from_struct(value.struct_value, depth)
    if kind == "list_value":
        return _from_list(value.list_value, depth)
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or a Value left unset


def _from_struct(struct: struct_pb2.Struct, depth: int) -> dict[str, object]:
    _check_depth(depth)
    depth += 1
    return {key: _from_value(item, depth) for key, item in struct.fields.items()}


def _from_list(values: struct_pb2.ListValue, depth: int) -> list[object]:
    _check_depth(depth)
    depth += 1
    return [_from_value(item, depth) for item in values.values]


# The canonical encoding is read straight from the bytes (``value_wire``); what that
# reader leaves to protobuf is parsed, and read from protobuf's objects.


def _decode_value(data: bytes) -> object:
    try:
        return read_value(data, 0, len(data), 0)
    except UNUSUAL:
        return _from_value(_parse(struct_pb2.Value, data), 0)
    except TooDeep:
        raise DecodeError(_TOO_DEEP) from None


def _decode_struct(data: bytes) -> dict[str, object]:
    try:
        return read_struct(data, 0, len(data), 1)
    except UNUSUAL:
        return _from_struct(_parse(struct_pb2.Struct, data), 0)
    except TooDeep:
        raise DecodeError(_TOO_DEEP) from None


def _decode_list(data: bytes) -> list[object]:
    try:
        return read_list(data, 0, len(data), 1)
    except UNUSUAL:
        return _from_list(_parse(struct_pb2.ListValue, data), 0)
    except TooDeep:
        raise DecodeError(_TOO_DEEP) from None


_Decoder = Callable[[bytes], object]

_WRAPPERS: tuple[type[message.Message], ...] = (
    wrappers_pb2.StringValue,
    wrappers_pb2.Int64Value,
    wrappers_pb2.BoolValue,
    wrappers_pb2.DoubleValue,
    wrappers_pb2.BytesValue,
    wrappers_pb2.Int32Value,
    wrappers_pb2.UInt32Value,
    wrappers_pb2.UInt64Value,
    wrappers_pb2.FloatValue,
)
_DECODERS: tuple[tuple[type[message.Message], _Decoder], ...] = (
    (empty_pb2.Empty, _decode_empty),
    (struct_pb2.Value, _decode_value),
    (timestamp_pb2.Timestamp, _decode_timestamp),
    (duration_pb2.Duration, _decode_duration),
    (struct_pb2.Struct, _decode_struct),
    (struct_pb2.ListValue, _decode_list),
    *((wrapper, _wrapper_decoder(wrapper)) for wrapper in _WRAPPERS),
)
_DECODERS_BY_NAME: dict[str, _Decoder] = {
    cls.DESCRIPTOR.full_name: decoder for cls, decoder in _DECODERS
}

# Whole type URL -> decoder for the two prefixes seen in practice: one lookup.
_DECODERS_BY_URL: dict[str, _Decoder] = {
    prefix + name: decoder
    for name, decoder in _DECODERS_BY_NAME.items()
    for prefix in (TYPE_URL_PREFIX, LEGACY_TYPE_URL_PREFIX)
}

_PICKLED_NAME = Pickled.DESCRIPTOR.full_name

# Found message classes; misses are not remembered, since importing a generated
# module later adds its types to the default pool.
_MESSAGE_CLASSES: dict[str, type[message.Message]] = {}


def _message_class(name: str) -> type[message.Message] | None:
    cls = _MESSAGE_CLASSES.get(name)
    if cls is None:
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            return None
        cls = message_factory.GetMessageClass(descriptor)
        _MESSAGE_CLASSES[name] = cls
    return cls


def _decode_pickle(data: bytes) -> object:
    pickled = _parse(Pickled, data)
    try:
        import pickle

        return pickle.loads(pickled.pickled_value)  # the endpoint opted in
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DecodeError(f"invalid {_PICKLED_NAME}: unpickling failed: {exc!r}") from exc


def type_name(any: any_pb2.Any) -> str:
    """The full message name in the type URL of ``any``, whatever its prefix."""
    url = any.type_url
    slash = url.rfind("/")
    if slash < 0 or slash == len(url) - 1:
        raise DecodeError(f"malformed type URL {_short(url)}: no '/<message name>' at its end")
    return url[slash + 1 :]


def is_pickled(any: any_pb2.Any) -> bool:
    """Whether ``any`` holds a pickled Python value."""
    url = any.type_url
    return url.endswith("/" + _PICKLED_NAME)


def from_any(any: any_pb2.Any, *, allow_pickle: bool = False) -> object:
    """Decode ``any`` into a Python value (see the module docstring for the rules).

    Unknown message types are returned as the ``Any`` itself. Raises
    ``DecodeError``, and no other exception, when ``any`` is malformed.
    """
    url = any.type_url
    decoder = _DECODERS_BY_URL.get(url)
    if decoder is not None:
        return decoder(any.value)
    if not url:
        if any.value:
            raise DecodeError("an Any with a value but no type URL")
        return None  # an unset input
    name = type_name(any)
    decoder = _DECODERS_BY_NAME.get(name)
    if decoder is not None:
        return decoder(any.value)
    if name == _PICKLED_NAME:
        if not allow_pickle:
            raise DecodeError(
                "refusing pickled input: pickles are unpickled only when the endpoint "
                "opted in with Endpoint(allow_pickle=True)"
            )
        return _decode_pickle(any.value)
    cls = _message_class(name)
    if cls is None:
        return any
    return _parse(cls, any.value)
