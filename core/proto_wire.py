"""Protobuf's wire format, read and written by hand where a message's large field must
not be copied: a serialized message is framed into another one, or a field's bytes
taken out of one, as slices of the bytes at hand rather than parsed and serialized
again.

What is written is what protobuf writes for the same message (fields in the order of
their numbers, lengths as minimal varints), as long as the bytes framed are themselves
protobuf's serialization (a stored value, which the scheduler serialized).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

LENGTH_DELIMITED = 2
_SIZES = {0: -1, 1: 8, 5: 4}  # the other wire types: varint (read apart), 64-bit, 32-bit


class Field(NamedTuple):
    """One field of a serialized message: its number, wire type, where it starts (its
    tag), where its value starts (after a length, for a length-delimited one), and
    where it ends."""

    number: int
    wire_type: int
    start: int
    value: int
    end: int


def varint(value: int) -> bytes:
    """``value`` (not negative) as a varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame(number: int, length: int) -> bytes:
    """The tag and length that precede a length-delimited field of ``length`` bytes."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(length)


def _read_varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def fields(data: bytes | memoryview) -> Iterator[Field]:
    """The top-level fields of a serialized message; ``ValueError`` if it is malformed."""
    at = 0
    while at < len(data):
        start = at
        tag, at = _read_varint(data, at)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == LENGTH_DELIMITED:
            length, at = _read_varint(data, at)
            value, at = at, at + length
        elif wire_type == 0:
            value = at
            _, at = _read_varint(data, at)
        elif wire_type in _SIZES:
            value, at = at, at + _SIZES[wire_type]
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
        if at > len(data):
            raise ValueError("a truncated field")
        yield Field(number, wire_type, start, value, at)
