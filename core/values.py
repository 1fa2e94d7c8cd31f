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
import struct
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

# How many containers may nest inside one another. upb refuses to parse messages
# nested more than 100 deep, and each dict level costs three (Value, Struct, map
# entry): 32 levels is what is sure to decode on the other side.
MAX_DEPTH = 32

_ALLOW_PICKLE_HINT = "pickling can be enabled with Endpoint(allow_pickle=True)"

# Pinned rather than HIGHEST_PROTOCOL so that every supported Python reads it.
_PICKLE_PROTOCOL = 5

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# Largest magnitude up to which every integer is exactly a double.
_EXACT_INT = 2**53
_EXACT_INT_F = float(_EXACT_INT)

_TIMESTAMP_MIN = -62_135_596_800  # 0001-01-01T00:00:00Z
_TIMESTAMP_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z
_DURATION_MAX = 315_576_000_000
_NANOS_MAX = 999_999_999

_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_EPOCH_NAIVE = datetime.datetime(1970, 1, 1)

_M = typing.TypeVar("_M", bound=message.Message)


class EncodeError(TypeError):
    """A Python value that cannot be encoded into an ``Any``."""


class DecodeError(ValueError):
    """An ``Any`` that cannot be decoded into a Python value."""


class _Unrepresentable(Exception):
    """Internal: no well-known type carries the value; pickling may still."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # Where in a container the offending item is, outermost first.
        self.path: list[object] = []


def _url(cls: type[message.Message]) -> str:
    return TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name


def _type_label(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


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
        raise _Unrepresentable("it is outside the int64 range of google.protobuf.Int64Value")
    data = wrappers_pb2.Int64Value(value=value).SerializeToString()
    return any_pb2.Any(type_url=_URL_INT64, value=data)


def _encode_float(value: float) -> any_pb2.Any:
    data = wrappers_pb2.DoubleValue(value=value).SerializeToString()
    return any_pb2.Any(type_url=_URL_DOUBLE, value=data)


def _encode_str(value: str) -> any_pb2.Any:
    try:
        data = wrappers_pb2.StringValue(value=value).SerializeToString()
    except UnicodeEncodeError:
        raise _Unrepresentable("it is not valid Unicode (it holds surrogates)") from None
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
    return any_pb2.Any(type_url=_URL_VALUE, value=_value_bytes(value, 0))


# google.protobuf.Value is written straight to the wire: about three times faster
# than filling message objects. Tags are (field number << 3) | wire type:
# Value: null_value 1 varint, number_value 2 fixed64, string_value 3, bool_value 4
# varint, struct_value 5, list_value 6; Struct: fields 1 (map entries: key 1,
# value 2); ListValue: values 1. Everything else is length-delimited.
_TAG_NULL = 0x08
_TAG_NUMBER = 0x11
_TAG_STRING = 0x1A
_TAG_BOOL = 0x20
_TAG_STRUCT = 0x2A
_TAG_LIST = 0x32
_TAG_ITEM = 0x0A  # Struct.fields, ListValue.values, and a map entry's key
_TAG_ENTRY_VALUE = 0x12

_NULL_BYTES = bytes((_TAG_NULL, 0))
_TRUE_BYTES = bytes((_TAG_BOOL, 1))
_FALSE_BYTES = bytes((_TAG_BOOL, 0))
_STRING_PREFIX = bytes((_TAG_STRING,))
_STRUCT_PREFIX = bytes((_TAG_STRUCT,))
_LIST_PREFIX = bytes((_TAG_LIST,))
_ITEM_PREFIX = bytes((_TAG_ITEM,))
_ENTRY_VALUE_PREFIX = bytes((_TAG_ENTRY_VALUE,))

_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]
_pack_number = struct.Struct("<Bd").pack  # a tag byte, then a little-endian double
_unpack_double = struct.Struct("<d").unpack_from


def _varint(number: int) -> bytes:
    """The varint of a length (never negative)."""
    if number < 0x80:
        return _SMALL_VARINTS[number]
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _value_bytes(item: typing.Any, depth: int) -> bytes:
    """The serialized ``Value`` of the JSON-like ``item``, ``depth`` containers deep."""
    cls = type(item)
    # Most frequent kinds first; identity tests on the exact type are the cheapest.
    if cls is str:
        try:
            data: bytes = item.encode()
        except UnicodeEncodeError:
            raise _Unrepresentable("a str that is not valid Unicode") from None
        return _STRING_PREFIX + _varint(len(data)) + data
    if cls is int:
        if not -_EXACT_INT <= item <= _EXACT_INT:
            raise _Unrepresentable(
                "an int beyond +-2**53, which a double in google.protobuf.Value "
                "cannot carry exactly"
            )
        return _pack_number(_TAG_NUMBER, item)
    if cls is float:
        return _pack_number(_TAG_NUMBER, item)
    if cls is bool:
        return _TRUE_BYTES if item else _FALSE_BYTES
    if item is None:
        return _NULL_BYTES
    if cls is dict:
        body = _struct_bytes(item, depth)
        return _STRUCT_PREFIX + _varint(len(body)) + body
    if cls is list or cls is tuple:
        body = _list_bytes(item, depth)
        return _LIST_PREFIX + _varint(len(body)) + body
    # Subclasses, rare: encoded as their base type.
    if isinstance(item, int):
        return _value_bytes(int.__int__(item), depth)
    if isinstance(item, float):
        return _value_bytes(float.__float__(item), depth)
    if isinstance(item, str):
        return _value_bytes(str.__str__(item), depth)
    if isinstance(item, dict):
        body = _struct_bytes(item, depth)
        return _STRUCT_PREFIX + _varint(len(body)) + body
    if isinstance(item, (list, tuple)):
        body = _list_bytes(item, depth)
        return _LIST_PREFIX + _varint(len(body)) + body
    raise _Unrepresentable(f"an item of type {_type_label(item)}, which is not JSON-like")


def _struct_bytes(items: dict[typing.Any, typing.Any], depth: int) -> bytes:
    """The body of a ``Struct`` (its map entries) holding ``items``."""
    if depth >= MAX_DEPTH:
        raise _Unrepresentable(f"containers nested more than {MAX_DEPTH} deep")
    parts = []
    for key, item in items.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise _Unrepresentable(
                    f"a dict key of type {_type_label(key)} (google.protobuf.Struct keys "
                    "are strings)"
                )
            key = str.__str__(key)
        try:
            key_bytes = key.encode()
        except UnicodeEncodeError:
            raise _Unrepresentable("a dict key that is not valid Unicode") from None
        try:
            value = _value_bytes(item, depth + 1)
        except _Unrepresentable as exc:
            exc.path.insert(0, key)
            raise
        entry = (
            _ITEM_PREFIX
            + _varint(len(key_bytes))
            + key_bytes
            + _ENTRY_VALUE_PREFIX
            + _varint(len(value))
            + value
        )
        parts.append(_ITEM_PREFIX + _varint(len(entry)) + entry)
    return b"".join(parts)


def _list_bytes(items: list[typing.Any] | tuple[typing.Any, ...], depth: int) -> bytes:
    """The body of a ``ListValue`` holding ``items``."""
    if depth >= MAX_DEPTH:
        raise _Unrepresentable(f"containers nested more than {MAX_DEPTH} deep")
    parts = []
    for index, item in enumerate(items):
        try:
            value = _value_bytes(item, depth + 1)
        except _Unrepresentable as exc:
            exc.path.insert(0, index)
            raise
        parts.append(_ITEM_PREFIX + _varint(len(value)) + value)
    return b"".join(parts)


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
            f"cannot encode a value of type {_type_label(value)}: pickling it failed: {exc!r}"
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
            raise _Unrepresentable("no protobuf well-known type represents it")
        return encoder(value)
    except _Unrepresentable as exc:
        if allow_pickle:
            return _encode_pickle(value)
        where = "".join(f"[{step!r}]" for step in exc.path)
        reason = f"at {where}, {exc.reason}" if where else exc.reason
        raise EncodeError(
            f"cannot encode a value of type {_type_label(value)}: {reason}; {_ALLOW_PICKLE_HINT}"
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


def _number(number: float) -> int | float:
    """JSON semantics: integral numbers that a double holds exactly are ints."""
    # NaN fails the comparisons, infinities the bounds; int == float is exact.
    if -_EXACT_INT_F <= number <= _EXACT_INT_F:
        integer = int(number)
        if integer == number:
            return integer
    return number


def _check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise DecodeError(f"google.protobuf.Value containers nested more than {MAX_DEPTH} deep")


# Reading google.protobuf.Value from protobuf objects is slow (every field access
# makes an object), so the canonical encoding - what to_any and the usual protobuf
# encoders write - is read straight from the bytes. Anything else (unknown fields,
# a oneof set twice, invalid UTF-8, truncation...) raises _Unusual, and then the
# message is parsed by protobuf and read from objects, which decides what it means.


class _Unusual(Exception):
    """Internal: wire data that the direct reader leaves to protobuf."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; IndexError when truncated."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    number = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        number |= (byte & 0x7F) << shift
        if byte < 0x80:
            if number >> 64:
                raise _Unusual
            return number, pos + 1
        shift += 7
        if shift > 63:
            raise _Unusual


def _read_value(data: bytes, pos: int, end: int, depth: int) -> object:
    """The Python value of the ``Value`` in ``data[pos:end]``, ``depth`` containers deep."""
    if pos == end:
        return None  # an unset Value
    tag = data[pos]
    if tag == _TAG_STRING:
        size, pos = _read_varint(data, pos + 1)
        if pos + size != end:
            raise _Unusual
        return data[pos:end].decode()
    if tag == _TAG_NUMBER:
        if pos + 9 != end:
            raise _Unusual
        number: float = _unpack_double(data, pos + 1)[0]
        return _number(number)
    if tag in (_TAG_STRUCT, _TAG_LIST):
        size, pos = _read_varint(data, pos + 1)
        if pos + size != end:
            raise _Unusual
        _check_depth(depth)
        if tag == _TAG_STRUCT:
            return _read_struct(data, pos, end, depth + 1)
        return _read_list(data, pos, end, depth + 1)
    if tag in (_TAG_BOOL, _TAG_NULL):
        flag, pos = _read_varint(data, pos + 1)
        if pos != end:
            raise _Unusual
        return None if tag == _TAG_NULL else flag != 0
    raise _Unusual


def _read_struct(data: bytes, pos: int, end: int, depth: int) -> dict[str, object]:
    """The dict of the ``Struct`` body in ``data[pos:end]``, its items ``depth`` deep."""
    result: dict[str, object] = {}
    while pos < end:
        # A map entry: exactly a key, then a value.
        if data[pos] != _TAG_ITEM:
            raise _Unusual
        size, pos = _read_varint(data, pos + 1)
        stop = pos + size
        if stop > end or data[pos] != _TAG_ITEM:
            raise _Unusual
        key_size, pos = _read_varint(data, pos + 1)
        key_end = pos + key_size
        if key_end >= stop or data[key_end] != _TAG_ENTRY_VALUE:
            raise _Unusual
        key = data[pos:key_end].decode()
        value_size, pos = _read_varint(data, key_end + 1)
        if pos + value_size != stop:
            raise _Unusual
        result[key] = _read_value(data, pos, stop, depth)  # a repeated key: the last wins
        pos = stop
    return result


def _read_list(data: bytes, pos: int, end: int, depth: int) -> list[object]:
    """The list of the ``ListValue`` body in ``data[pos:end]``, its items ``depth`` deep."""
    result: list[object] = []
    while pos < end:
        if data[pos] != _TAG_ITEM:
            raise _Unusual
        size, pos = _read_varint(data, pos + 1)
        stop = pos + size
        if stop > end:
            raise _Unusual
        result.append(_read_value(data, pos, stop, depth))
        pos = stop
    return result


def _from_value(value: struct_pb2.Value, depth: int) -> object:
    """The Python value of ``value``, found ``depth`` containers deep."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return _number(value.number_value)
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


_UNUSUAL = (_Unusual, IndexError, UnicodeDecodeError)


def _decode_value(data: bytes) -> object:
    try:
        return _read_value(data, 0, len(data), 0)
    except _UNUSUAL:
        return _from_value(_parse(struct_pb2.Value, data), 0)


def _decode_struct(data: bytes) -> dict[str, object]:
    try:
        return _read_struct(data, 0, len(data), 1)
    except _UNUSUAL:
        return _from_struct(_parse(struct_pb2.Struct, data), 0)


def _decode_list(data: bytes) -> list[object]:
    try:
        return _read_list(data, 0, len(data), 1)
    except _UNUSUAL:
        return _from_list(_parse(struct_pb2.ListValue, data), 0)


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
