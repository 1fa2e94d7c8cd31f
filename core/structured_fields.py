"""RFC 9651 Structured Field Values: parse and serialize Dictionaries, Lists and Items.

Built for the request path of signature verification (``Signature-Input``,
``Signature``, ``Content-Digest``), so parsing favours a few compiled regular
expressions, each matched at a position, over walking the input a character at
a time, and has a fast path for the shape of a ``Signature-Input`` member.

Hostile input cannot make parsing slow: every pattern is anchored where it is
applied, and every repetition in a pattern can go only one way (each round
starts with a character the one before cannot take), so a match or a failure
costs time linear in what it covers. The only nesting the grammar has (an
Inner List inside a Dictionary or List) is handled without recursion.

Field values are ``str`` (HTTP field bytes decoded as latin-1); anything outside
printable ASCII fails parsing, except the Horizontal Tabs that may surround the
commas between members. Decimals are represented as ``float``.
"""

from __future__ import annotations

import binascii
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, cast
from urllib.parse import unquote_to_bytes

from .errors import DispatchletError

__all__ = [
    "BareItem",
    "Date",
    "DisplayString",
    "InnerList",
    "Item",
    "Member",
    "Params",
    "StructuredFieldError",
    "Token",
    "parse_dictionary",
    "parse_item",
    "parse_list",
    "serialize_dictionary",
    "serialize_inner_list",
    "serialize_item",
    "serialize_list",
    "serialize_params",
]


class StructuredFieldError(ValueError, DispatchletError):
    """A field value that does not parse, or a value that cannot be serialized.

    ``position`` is the offset in the field value at which parsing failed, or
    None for serialization failures.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message if position is None else f"{message} at offset {position}")
        self.position = position


class Token(str):
    """A Token bare item; a distinct type so that it is not taken for a String."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Token({str.__repr__(self)})"


class DisplayString(str):
    """A Display String bare item (``%"..."``): Unicode text, percent-encoded on the wire."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"DisplayString({str.__repr__(self)})"


@dataclass(frozen=True)
class Date:
    """A Date bare item (``@1659578233``): whole seconds since the Unix epoch."""

    seconds: int


BareItem: TypeAlias = int | float | str | Token | DisplayString | bytes | bool | Date
Params: TypeAlias = dict[str, BareItem]


@dataclass(frozen=True, slots=True)
class Item:
    """A bare item with its parameters."""

    value: BareItem
    params: Params


@dataclass(frozen=True, slots=True)
class InnerList:
    """A parenthesized list of Items, with parameters of its own."""

    items: list[Item]
    params: Params


Member: TypeAlias = Item | InnerList

# --- Parsing -----------------------------------------------------------------

_KEY: Final = r"[a-z*][a-z0-9_.*-]*"
_TCHAR: Final = r"!#$%&'*+\-.^_`|~0-9A-Za-z:/"  # what a Token may go on with


class _LazyPattern:
    """A regex compiled on its first use: compiling these costs milliseconds of a cold
    start, and a process serving only canonical Dispatch headers never needs them."""

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern

    def __getattr__(self, name: str) -> Any:
        compiled = re.compile(self._pattern)
        # Bound methods kept on the instance: later lookups find them directly.
        for method in ("match", "fullmatch", "search", "sub"):
            setattr(self, method, getattr(compiled, method))
        return getattr(compiled, name)


def _lazy(pattern: str) -> re.Pattern[str]:
    return cast("re.Pattern[str]", _LazyPattern(pattern))


def _bare_item_pattern(paren: str) -> str:
    """The alternatives for a bare item, and one for the parenthesis ``paren``.

    Each kind of bare item starts with its own characters, so at most one
    alternative applies; each starts with a literal or a class rather than a
    group, which lets the regex engine skip it at a glance. The kind is told by
    the last group that takes part in the match (``lastindex``). Strings and
    Display Strings are matched only up to the first character that needs a
    closer look (the closing quote, an escape or an invalid character).
    """
    return (
        r'"([ !#-\[\]-~]*)'  # 1 String
        rf"|[A-Za-z*]([{_TCHAR}]*)"  # 2 Token, after its first character
        r"|[-0-9]([0-9]*)(\.[0-9]*)?"  # 3 Integer, after its first character; 4 fraction
        r"|:()"  # 5 Byte Sequence, decoded separately
        r"|\?([01])"  # 6 Boolean
        r"|@(-?[0-9]+)(\.[0-9]*)?"  # 7 Date; 8 a fraction, which is invalid
        r'|%"([ !#$&-~]*)'  # 9 Display String
        rf"|\{paren}()"  # 10 the parenthesis
    )


_STR, _TOKEN, _INT, _FRAC, _BINARY, _BOOL, _DATE, _DATE_FRAC, _DISPLAY, _PAREN = range(1, 11)

# A List member (or a top-level Item): a bare item or the "(" opening an Inner List.
_LIST_MEMBER: Final = _lazy(_bare_item_pattern("("))
# A Dictionary key. What follows "=" is told by its first character, so the
# usual values (an Inner List, a Byte Sequence) need no second pattern.
_KEY_RE: Final = _lazy(_KEY)
# An Inner List member: the separating spaces, then a bare item or the closing ")".
_INNER_MEMBER: Final = _lazy(rf" *(?:{_bare_item_pattern(')')})")
# One parameter; as in a Dictionary, the value is Boolean true without "=". An
# Inner List is not a valid value, and "(" fails in _bare_item.
_PARAM: Final = _lazy(rf"; *({_KEY})(?:=(?:{_bare_item_pattern('(')}))?")
# What may follow a List or Dictionary member; group 1 is set if there is a comma.
_SEPARATOR: Final = _lazy(r"[ \t]*(?:(,)[ \t]*)?")

# The fast path, for the shape of a Signature-Input member: an Inner List of
# Strings without escapes or parameters, separated by single spaces (group 1,
# from just after the "("), and then a run of parameters whose values are
# Strings without escapes or ";", Integers and Tokens (group 2). Both groups can
# be split with str methods. Each parameter in the run is complete (an Integer
# may not go on as a Decimal), so any parameters after the run are left to the
# general parser.
_PLAIN_INNER_LIST: Final = _lazy(
    r'(?:"([ !#-\[\]-~]*(?:" "[ !#-\[\]-~]*)*)")?\)'
    rf'((?:;{_KEY}=(?:"[ !#-:<-\[\]-~]*"|-?[0-9]{{1,15}}(?![0-9.])|[A-Za-z*][{_TCHAR}]*))*)'
)
_INTEGER_START: Final = "-0123456789"

# A String with escapes and a Display String with percent-encoding, in full.
# Written as runs of plain characters between escapes, so that the engine
# keeps state per escape, not per character.
_ESCAPED_STRING: Final = _lazy(r'"([ !#-\[\]-~]*(?:\\["\\][ !#-\[\]-~]*)*)"')
_ESCAPE: Final = _lazy(r'\\(["\\])')
_ENCODED_DISPLAY_STRING: Final = _lazy(r'%"([ !#$&-~]*(?:%[0-9a-f]{2}[ !#$&-~]*)*)"')
_BASE64: Final = _lazy(r"([A-Za-z0-9+/]*)(={0,2})")
_B64_PADDING: Final = ("", "", "==", "=")

if sys.version_info >= (3, 11):

    def _decode_canonical_base64(content: str) -> bytes:
        """Decode base64 padded as an encoder pads it; raise ValueError for anything else."""
        return binascii.a2b_base64(content, strict_mode=True)

else:

    def _decode_canonical_base64(content: str) -> bytes:
        """Defer to the general rules: binascii cannot validate before Python 3.11."""
        raise ValueError(content)


# A character that no pattern accepts, appended to the input so that looking at
# the character after a match never runs off the end.
_END: Final = "\x00"

# A frozen dataclass's __init__ sets each field through object.__setattr__,
# which more than doubles the cost of building the Items of a field value; the
# parser sets the slots directly instead.
_new: Final = object.__new__
_set_item_value: Final = Item.__dict__["value"].__set__
_set_item_params: Final = Item.__dict__["params"].__set__
_set_inner_items: Final = InnerList.__dict__["items"].__set__
_set_inner_params: Final = InnerList.__dict__["params"].__set__


def _bare_item(s: str, m: re.Match[str], kind: int, base: int) -> tuple[BareItem, int]:
    """Decode the bare item matched by ``m``; return it with the position after it.

    ``base`` is the number of groups before the bare item's in the pattern.
    """
    end = m.end()
    if kind == _STR:
        if s[end] == '"':
            return m[_STR + base], end + 1
        return _escaped_string(s, m.start(_STR + base) - 1)
    if kind == _TOKEN:
        return Token(s[m.start(_TOKEN + base) - 1 : end]), end
    if kind == _INT:
        text = s[m.start(_INT + base) - 1 : end]
        if len(text) > 15 and len(text.lstrip("-")) > 15:
            raise StructuredFieldError("Integer has more than 15 digits", m.start())
        if text == "-":
            raise StructuredFieldError("Number has no digits", end)
        return int(text), end
    if kind == _BINARY:
        return _byte_sequence(s, end)
    if kind == _FRAC:
        fraction_start = m.start(_FRAC + base)
        integer = s[m.start(_INT + base) - 1 : fraction_start]
        if integer == "-":
            raise StructuredFieldError("Number has no digits", fraction_start)
        if end - fraction_start == 1:
            raise StructuredFieldError("Decimal has no fractional digits", end)
        if end - fraction_start > 4:
            raise StructuredFieldError("Decimal has more than 3 fractional digits", m.start())
        if len(integer.lstrip("-")) > 12:
            raise StructuredFieldError("Decimal has more than 12 integer digits", m.start())
        return float(s[fraction_start - len(integer) : end]), end
    if kind == _BOOL:
        return m[_BOOL + base] == "1", end
    if kind == _DATE:
        text = m[_DATE + base]
        if len(text) > 15 and len(text.lstrip("-")) > 15:
            raise StructuredFieldError("Date has more than 15 digits", m.start())
        return Date(int(text)), end
    if kind == _DATE_FRAC:
        raise StructuredFieldError("Date is not an Integer", m.start())
    if kind == _DISPLAY:
        if s[end] == '"':
            return DisplayString(m[_DISPLAY + base]), end + 1
        return _encoded_display_string(s, m.start(_DISPLAY + base) - 2)
    raise StructuredFieldError("Expected a bare item", end - 1)


def _escaped_string(s: str, start: int) -> tuple[str, int]:
    m = _ESCAPED_STRING.match(s, start)
    if m is None:
        raise StructuredFieldError("Invalid or unterminated String", start)
    return _ESCAPE.sub(r"\1", m[1]), m.end()


def _encoded_display_string(s: str, start: int) -> tuple[DisplayString, int]:
    m = _ENCODED_DISPLAY_STRING.match(s, start)
    if m is None:
        raise StructuredFieldError("Invalid or unterminated Display String", start)
    try:
        text = unquote_to_bytes(m[1]).decode("utf-8")
    except UnicodeDecodeError:
        raise StructuredFieldError("Display String is not valid UTF-8", start) from None
    return DisplayString(text), m.end()


def _byte_sequence(s: str, start: int) -> tuple[bytes, int]:
    """Decode the Byte Sequence from just after its opening ":" at ``start``."""
    # Finding the closing ":" and decoding in C is much faster than matching the
    # content with a pattern first. The search cannot go quadratic: what it
    # passes over is consumed.
    close = s.find(":", start)
    if close < 0:
        raise StructuredFieldError("Unterminated Byte Sequence", start - 1)
    content = s[start:close]
    if not len(content) % 4:
        try:
            return _decode_canonical_base64(content), close + 1
        except ValueError:
            pass  # not canonical base64: the rules below decide
    m = _BASE64.fullmatch(content)
    # Padding is optional (RFC 9651 section 4.2.7 asks parsers not to insist on
    # it), so it is dropped and resupplied, but it must be in its place.
    if m is None or (m[2] and not m[1]) or len(m[1]) % 4 == 1:
        raise StructuredFieldError("Invalid base64 in Byte Sequence", start - 1)
    # Checked as it is, the content can only be valid base64 to the lenient
    # decoder, which also accepts non-zero pad bits, as the RFC asks parsers to.
    data = m[1]
    return binascii.a2b_base64(data + _B64_PADDING[len(data) % 4]), close + 1


def _params(s: str, pos: int, params: Params) -> int:
    """Add the parameters starting with the ";" at ``pos``; return the position after them."""
    match = _PARAM.match
    while True:
        m = match(s, pos)
        if m is None:
            raise StructuredFieldError("Expected a parameter key", pos)
        kind = (m.lastindex or 1) - 1
        if kind == _STR and s[m.end()] == '"':  # the usual case, inlined
            params[m[1]] = m[_STR + 1]
            pos = m.end() + 1
        elif kind:
            params[m[1]], pos = _bare_item(s, m, kind, 1)
        else:
            pos = m.end()
            if s[pos] == "=":
                raise StructuredFieldError("Invalid parameter value", pos + 1)
            params[m[1]] = True
        if s[pos] != ";":
            return pos


def _rest_of_inner_list(s: str, pos: int) -> tuple[InnerList, int]:
    """Parse an Inner List from just after its "(" at ``pos``."""
    items: list[Item] = []
    params: Params = {}
    item: Item
    plain = _PLAIN_INNER_LIST.match(s, pos)
    if plain is not None:
        if plain[1] is not None:
            for value in plain[1].split('" "'):  # plain Strings contain no '"'
                item = _new(Item)
                _set_item_value(item, value)
                _set_item_params(item, {})
                items.append(item)
        if plain[2]:
            for param in plain[2][1:].split(";"):  # nor do these ";"
                key, _, text = param.partition("=")
                first = text[0]
                if first == '"':
                    params[key] = text[1:-1]
                elif first in _INTEGER_START:
                    params[key] = int(text)
                else:
                    params[key] = Token(text)
        pos = plain.end()
    else:
        match = _INNER_MEMBER.match
        while True:
            m = match(s, pos)
            if m is None:
                raise StructuredFieldError("Invalid or unterminated Inner List", pos)
            kind = m.lastindex or 0
            if kind == _PAREN:
                pos = m.end()
                break
            value, pos = _bare_item(s, m, kind, 0)
            item = _new(Item)
            _set_item_value(item, value)
            if s[pos] == ";":
                item_params: Params = {}
                pos = _params(s, pos, item_params)
                _set_item_params(item, item_params)
            else:
                _set_item_params(item, {})
            items.append(item)
            if s[pos] != " " and s[pos] != ")":
                raise StructuredFieldError("Inner List members must be separated by spaces", pos)
    if s[pos] == ";":
        pos = _params(s, pos, params)
    inner: InnerList = _new(InnerList)
    _set_inner_items(inner, items)
    _set_inner_params(inner, params)
    return inner, pos


def _item(s: str, value: BareItem, pos: int) -> tuple[Item, int]:
    """Build an Item of ``value``, reading any parameters from ``pos``."""
    params: Params = {}
    if s[pos] == ";":
        pos = _params(s, pos, params)
    item: Item = _new(Item)
    _set_item_value(item, value)
    _set_item_params(item, params)
    return item, pos


def _next_member(s: str, pos: int, end: int) -> int:
    """Move past the comma after a member; return ``end`` if there are no more members."""
    m = _SEPARATOR.match(s, pos)
    assert m is not None  # every part of the pattern is optional
    after = m.end()
    if m.lastindex is None:  # no comma: only whitespace may follow
        if after == end:
            return end
        raise StructuredFieldError("Expected a comma between members", after)
    if after == end:
        raise StructuredFieldError("Trailing comma", pos)
    return after


def parse_dictionary(value: str) -> dict[str, Member]:
    """Parse a Dictionary field value; an empty value is an empty Dictionary.

    A key that appears again replaces the value but keeps its first position.
    """
    s = value + _END
    end = len(value)
    # Trailing SP is taken as the whitespace that may follow a member.
    pos = end - len(value.lstrip(" ")) if s[0] == " " else 0
    result: dict[str, Member] = {}
    if pos == end:
        return result
    item_value: BareItem
    match = _KEY_RE.match
    while True:
        m = match(s, pos)
        if m is None:
            raise StructuredFieldError("Expected a Dictionary key", pos)
        pos = m.end()
        if s[pos] != "=":  # Boolean true
            result[m[0]], pos = _item(s, True, pos)
        elif s[pos + 1] == "(":
            result[m[0]], pos = _rest_of_inner_list(s, pos + 2)
        elif s[pos + 1] == ":":
            item_value, pos = _byte_sequence(s, pos + 2)
            result[m[0]], pos = _item(s, item_value, pos)
        else:
            bare = _LIST_MEMBER.match(s, pos + 1)
            if bare is None:
                raise StructuredFieldError("Invalid Dictionary value", pos + 1)
            item_value, pos = _bare_item(s, bare, bare.lastindex or 0, 0)
            result[m[0]], pos = _item(s, item_value, pos)
        if pos == end:
            return result
        pos = _next_member(s, pos, end)
        if pos == end:
            return result


def parse_list(value: str) -> list[Member]:
    """Parse a List field value; an empty value is an empty List."""
    s = value + _END
    end = len(value)
    # Trailing SP is taken as the whitespace that may follow a member.
    pos = end - len(value.lstrip(" ")) if s[0] == " " else 0
    result: list[Member] = []
    if pos == end:
        return result
    match = _LIST_MEMBER.match
    while True:
        m = match(s, pos)
        if m is None:
            raise StructuredFieldError("Expected a List member", pos)
        member: Member
        if m.lastindex == _PAREN:
            member, pos = _rest_of_inner_list(s, m.end())
        else:
            item_value, pos = _bare_item(s, m, m.lastindex or 0, 0)
            member, pos = _item(s, item_value, pos)
        result.append(member)
        if pos == end:
            return result
        pos = _next_member(s, pos, end)
        if pos == end:
            return result


def parse_item(value: str) -> Item:
    """Parse an Item field value; an empty value is an error."""
    s = value.rstrip(" ")
    end = len(s)
    pos = end - len(s.lstrip(" "))
    s += _END
    m = _LIST_MEMBER.match(s, pos)
    if m is None or m.lastindex == _PAREN:
        raise StructuredFieldError("Empty Item" if pos == end else "Expected a bare item", pos)
    item_value, pos = _bare_item(s, m, m.lastindex or 0, 0)
    item, pos = _item(s, item_value, pos)
    if pos != end:
        raise StructuredFieldError("Unexpected characters after the Item", pos)
    return item


# --- Serialization -----------------------------------------------------------

_TOKEN_RE: Final = _lazy(rf"[A-Za-z*][{_TCHAR}]*")
_STRING_FULL: Final = _lazy(r"[ -~]*")
_MAX_INTEGER: Final = 999_999_999_999_999
# Quantizing to thousandths needs 15 significant digits at most (after the
# magnitude check); a private context keeps the global one from interfering.
# Display String bytes as they are written: printable ASCII other than '"' and
# "%" as is, the rest percent-encoded in lowercase hex.
_DISPLAY_BYTES: Final = tuple(
    chr(b) if 0x20 <= b <= 0x7E and b not in b'"%' else f"%{b:02x}" for b in range(256)
)


# Keys seen valid before: signature parameters repeat the same few on every request.
_VALID_KEYS: Final[set[str]] = set()


def _serialize_key(key: Any) -> str:
    if type(key) is str and key in _VALID_KEYS:
        return key
    if not isinstance(key, str) or _KEY_RE.fullmatch(key) is None:
        raise StructuredFieldError(f"Invalid key {key!r}")
    valid: str = str.__str__(key)
    if len(_VALID_KEYS) < 1024:
        _VALID_KEYS.add(valid)
    return valid


def _serialize_decimal(value: float) -> str:
    # 1e12 has 13 integer digits; the check also excludes inf and nan.
    if not -1e12 < value < 1e12:
        raise StructuredFieldError(f"Decimal out of range: {value!r}")
    # decimal is imported here: parsing never needs it, and it costs cold-start time.
    from decimal import ROUND_HALF_EVEN, Context, Decimal

    # Round the shortest decimal that reads back as this float, not its exact
    # binary value: 0.0025 is 0.002 (ties to even), as a reader would expect.
    rounded = Decimal(float.__repr__(value)).quantize(
        Decimal("0.001"), context=Context(prec=28, rounding=ROUND_HALF_EVEN)
    )
    integer, _, fraction = f"{rounded:f}".partition(".")
    if len(integer.lstrip("-")) > 12:  # rounding carried into a 13th digit
        raise StructuredFieldError(f"Decimal out of range: {value!r}")
    fraction = fraction.rstrip("0") or "0"
    if integer == "-0" and fraction == "0":  # no negative zero
        integer = "0"
    return f"{integer}.{fraction}"


def _serialize_plain_string(value: str) -> str:
    # isascii() and isprintable() together mean exactly the characters %x20-7E.
    if not (value.isascii() and value.isprintable()):
        raise StructuredFieldError(f"String has characters other than printable ASCII: {value!r}")
    if '"' in value or "\\" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


def _serialize_plain_int(value: int) -> str:
    if not -_MAX_INTEGER <= value <= _MAX_INTEGER:
        raise StructuredFieldError(f"Integer out of range: {value}")
    return int.__repr__(value)


# Exact types of the common bare items, served without the isinstance chain below.
_PLAIN_SERIALIZERS: Final[dict[type, Any]] = {
    str: _serialize_plain_string,
    int: _serialize_plain_int,
}


def _serialize_bare_item(value: Any) -> str:
    plain = _PLAIN_SERIALIZERS.get(type(value))
    if plain is not None:
        return plain(value)  # type: ignore[no-any-return]
    # Order matters: bool is an int, Token and DisplayString are strs.
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if not -_MAX_INTEGER <= value <= _MAX_INTEGER:
            raise StructuredFieldError(f"Integer out of range: {value}")
        return int.__repr__(value)
    if isinstance(value, float):
        return _serialize_decimal(value)
    if isinstance(value, Token):
        if _TOKEN_RE.fullmatch(value) is None:
            raise StructuredFieldError(f"Invalid Token {value!r}")
        return str.__str__(value)
    if isinstance(value, DisplayString):
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            raise StructuredFieldError(f"Display String is not valid Unicode: {value!r}") from None
        return '%"' + "".join([_DISPLAY_BYTES[b] for b in encoded]) + '"'
    if isinstance(value, str):
        if _STRING_FULL.fullmatch(value) is None:
            raise StructuredFieldError(
                f"String has characters other than printable ASCII: {value!r}"
            )
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bytes):
        return ":" + binascii.b2a_base64(value, newline=False).decode("ascii") + ":"
    if isinstance(value, Date):
        seconds = value.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise StructuredFieldError(f"Date seconds must be an int: {seconds!r}")
        if not -_MAX_INTEGER <= seconds <= _MAX_INTEGER:
            raise StructuredFieldError(f"Date out of range: {seconds}")
        return "@" + int.__repr__(seconds)
    raise StructuredFieldError(f"Not a bare item: {value!r}")


def serialize_params(params: Mapping[str, BareItem]) -> str:
    """Serialize parameters, each as ``;key=value`` or, for Boolean true, ``;key``."""
    if not params and type(params) is dict:
        return ""
    if type(params) is not dict and not isinstance(params, Mapping):
        raise StructuredFieldError(f"Parameters must be a mapping: {params!r}")
    return "".join(
        [
            ";" + _serialize_key(key) + ("" if value is True else "=" + _serialize_bare_item(value))
            for key, value in params.items()
        ]
    )


def serialize_item(item: Item) -> str:
    """Serialize an Item."""
    if type(item) is not Item and not isinstance(item, Item):
        raise StructuredFieldError(f"Not an Item: {item!r}")
    return _serialize_bare_item(item.value) + serialize_params(item.params)


def serialize_inner_list(inner: InnerList) -> str:
    """Serialize an Inner List."""
    if type(inner) is not InnerList and not isinstance(inner, InnerList):
        raise StructuredFieldError(f"Not an Inner List: {inner!r}")
    if type(inner.items) is not list and not isinstance(inner.items, Sequence):
        raise StructuredFieldError(f"Inner List items must be a sequence: {inner.items!r}")
    members = " ".join([serialize_item(item) for item in inner.items])
    return f"({members}){serialize_params(inner.params)}"


def _serialize_member(member: Member) -> str:
    if isinstance(member, InnerList):
        return serialize_inner_list(member)
    return serialize_item(member)


def serialize_list(members: Sequence[Member]) -> str:
    """Serialize a List; an empty List gives "", meaning the field is to be omitted."""
    if not isinstance(members, Sequence):
        raise StructuredFieldError(f"A List must be a sequence: {members!r}")
    return ", ".join([_serialize_member(member) for member in members])


def serialize_dictionary(d: Mapping[str, Member]) -> str:
    """Serialize a Dictionary; an empty one gives "", meaning the field is to be omitted."""
    if not isinstance(d, Mapping):
        raise StructuredFieldError(f"A Dictionary must be a mapping: {d!r}")
    out = []
    for key, member in d.items():
        if isinstance(member, Item) and member.value is True:
            out.append(_serialize_key(key) + serialize_params(member.params))
        else:
            out.append(_serialize_key(key) + "=" + _serialize_member(member))
    return ", ".join(out)
