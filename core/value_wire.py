"""JSON-like values written and read straight on the wire, as ``google.protobuf.Value``.

The value codec (``values``) carries JSON-like containers - and only they - as
``google.protobuf.Value``. Filling and reading protobuf message objects for them costs
an object per field, so this module writes and reads their canonical encoding as bytes:
about three times faster. What it writes is what protobuf writes; what it reads it
reads as protobuf would, and anything unusual it leaves to protobuf (``UNUSUAL``).
"""

from __future__ import annotations

import struct
import typing

from .errors import DispatchletError

MAX_DEPTH = 32
"""How many containers may nest inside one another. upb refuses to parse messages
nested more than 100 deep, and each dict level costs three (Value, Struct, map
entry): 32 levels is what is sure to decode on the other side."""

EXACT_INT = 2**53
"""Largest magnitude up to which every integer is exactly a double."""
_EXACT_INT_F = float(EXACT_INT)


class Unrepresentable(DispatchletError):
    """A value that no protobuf well-known type carries (pickling may still)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # Where in a container the offending item is, outermost first.
        self.path: list[object] = []


class TooDeep(DispatchletError):
    """Wire data with containers nested more than ``MAX_DEPTH`` deep: refused."""


def type_label(value: object) -> str:
    """The type of ``value`` as error messages name it: ``int``, ``module.Class``."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def json_number(number: float) -> int | float:
    """JSON semantics: integral numbers that a double holds exactly are ints."""
    # NaN fails the comparisons, infinities the bounds; int == float is exact.
    if -_EXACT_INT_F <= number <= _EXACT_INT_F:
        integer = int(number)
        if integer == number:
            return integer
    return number


# Tags are (field number << 3) | wire type:
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


def value_bytes(item: typing.Any, depth: int) -> bytes:
    """The serialized ``Value`` of the JSON-like ``item``, ``depth`` containers deep."""
    cls = type(item)
    # Most frequent kinds first; identity tests on the exact type are the cheapest.
    if cls is str:
        try:
            data: bytes = item.encode()
        except UnicodeEncodeError:
            raise Unrepresentable("a str that is not valid Unicode") from None
        return _STRING_PREFIX + _varint(len(data)) + data
    if cls is int:
        if not -EXACT_INT <= item <= EXACT_INT:
            raise Unrepresentable(
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
        return value_bytes(int.__int__(item), depth)
    if isinstance(item, float):
        return value_bytes(float.__float__(item), depth)
    if isinstance(item, str):
        return value_bytes(str.__str__(item), depth)
    if isinstance(item, dict):
        body = _struct_bytes(item, depth)
        return _STRUCT_PREFIX + _varint(len(body)) + body
    if isinstance(item, (list, tuple)):
        body = _list_bytes(item, depth)
        return _LIST_PREFIX + _varint(len(body)) + body
    raise Unrepresentable(f"an item of type {type_label(item)}, which is not JSON-like")


def _struct_bytes(items: dict[typing.Any, typing.Any], depth: int) -> bytes:
    """The body of a ``Struct`` (its map entries) holding ``items``."""
    if depth >= MAX_DEPTH:
        raise Unrepresentable(f"containers nested more than {MAX_DEPTH} deep")
    parts = []
    for key, item in items.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise Unrepresentable(
                    f"a dict key of type {type_label(key)} (google.protobuf.Struct keys "
                    "are strings)"
                )
            key = str.__str__(key)
        try:
            key_bytes = key.encode()
        except UnicodeEncodeError:
            raise Unrepresentable("a dict key that is not valid Unicode") from None
        try:
            value = value_bytes(item, depth + 1)
        except Unrepresentable as exc:
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
        raise Unrepresentable(f"containers nested more than {MAX_DEPTH} deep")
    parts = []
    for index, item in enumerate(items):
        try:
            value = value_bytes(item, depth + 1)
        except Unrepresentable as exc:
            exc.path.insert(0, index)
            raise
        parts.append(_ITEM_PREFIX + _varint(len(value)) + value)
    return b"".join(parts)


# The canonical encoding - what value_bytes and the usual protobuf encoders write - is
# read straight from the bytes. Anything else (unknown fields, a oneof set twice,
# invalid UTF-8, truncation...) raises one of UNUSUAL, and then the caller parses the
# message with protobuf and reads its objects, which decides what it means.


class Unusual(DispatchletError):
    """Wire data that the direct reader leaves to protobuf."""


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
                raise Unusual
            return number, pos + 1
        shift += 7
        if shift > 63:
            raise Unusual


def read_value(data: bytes, pos: int, end: int, depth: int) -> object:
    """The Python value of the ``Value`` in ``data[pos:end]``, ``depth`` containers deep."""
    if pos == end:
        return None  # an unset Value
    tag = data[pos]
    if tag == _TAG_STRING:
        size, pos = _read_varint(data, pos + 1)
        if pos + size != end:
            raise Unusual
        return data[pos:end].decode()
    if tag == _TAG_NUMBER:
        if pos + 9 != end:
            raise Unusual
        number: float = _unpack_double(data, pos + 1)[0]
        return json_number(number)
    if tag in (_TAG_STRUCT, _TAG_LIST):
        size, pos = _read_varint(data, pos + 1)
        if pos + size != end:
            raise Unusual
        if depth >= MAX_DEPTH:
            raise TooDeep
        if tag == _TAG_STRUCT:
            return read_struct(data, pos, end, depth + 1)
        return read_list(data, pos, end, depth + 1)
    if tag in (_TAG_BOOL, _TAG_NULL):
        flag, pos = _read_varint(data, pos + 1)
        if pos != end:
            raise Unusual
        return None if tag == _TAG_NULL else flag != 0
    raise Unusual


def read_struct(data: bytes, pos: int, end: int, depth: int) -> dict[str, object]:
    """The dict of the ``Struct`` body in ``data[pos:end]``, its items ``depth`` deep."""
    result: dict[str, object] = {}
    while pos < end:
        # A map entry: exactly a key, then a value.
        if data[pos] != _TAG_ITEM:
            raise Unusual
        size, pos = _read_varint(data, pos + 1)
        stop = pos + size
        if stop > end or data[pos] != _TAG_ITEM:
            raise Unusual
        key_size, pos = _read_varint(data, pos + 1)
        key_end = pos + key_size
        if key_end >= stop or data[key_end] != _TAG_ENTRY_VALUE:
            raise Unusual
        key = data[pos:key_end].decode()
        value_size, pos = _read_varint(data, key_end + 1)
        if pos + value_size != stop:
            raise Unusual
        result[key] = read_value(data, pos, stop, depth)  # a repeated key: the last wins
        pos = stop
    return result


def read_list(data: bytes, pos: int, end: int, depth: int) -> list[object]:
    """The list of the ``ListValue`` body in ``data[pos:end]``, its items ``depth`` deep."""
    result: list[object] = []
    while pos < end:
        if data[pos] != _TAG_ITEM:
            raise Unusual
        size, pos = _read_varint(data, pos + 1)
        stop = pos + size
        if stop > end:
            raise Unusual
        result.append(read_value(data, pos, stop, depth))
        pos = stop
    return result


UNUSUAL = (Unusual, IndexError, UnicodeDecodeError)
"""What the reader raises on data it leaves to protobuf."""
