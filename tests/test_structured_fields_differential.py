"""Differential tests of core.structured_fields against the http-sf package.

(a) Generated structures are serialized by our serializer, then parsed by both
parsers: both must give back the structure. (b) Generated text, valid or not,
is parsed by both: they must agree on accepting it and, if they do, on the value.

One documented difference is excluded: http-sf represents a Date as a
``datetime`` and so rejects Dates outside years 1 to 9999, which RFC 9651 does
not restrict (the httpwg suite marks such Dates ``can_fail``); we accept them.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import http_sf
from dispatchlet.core.structured_fields import (
    Date,
    DisplayString,
    InnerList,
    Item,
    Member,
    StructuredFieldError,
    Token,
    parse_dictionary,
    parse_item,
    parse_list,
    serialize_dictionary,
    serialize_item,
    serialize_list,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from typed_structures import typed

EXAMPLES = settings(max_examples=500, deadline=None)
# Nested structures are slow to draw; fewer of them keep the file to seconds.
STRUCTURE_EXAMPLES = settings(max_examples=300, deadline=None)

PARSERS: dict[str, Callable[[str], Any]] = {
    "dictionary": parse_dictionary,
    "list": parse_list,
    "item": parse_item,
}

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The Dates a datetime can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
DATETIME_MIN = -62135596800
DATETIME_MAX = 253402300799
MAX_INTEGER = 999_999_999_999_999


# --- http-sf's representation, converted to ours -----------------------------
# http-sf gives (value, params) tuples for Items, (list of Items, params) for Inner
# Lists, Decimal for Decimals, datetime for Dates and its own UserString-based
# Token and DisplayString.


def bare_from_http_sf(value: Any) -> Any:
    if isinstance(value, http_sf.Token):
        return Token(str(value))
    if isinstance(value, http_sf.DisplayString):
        return DisplayString(str(value))
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return Date((value - EPOCH) // timedelta(seconds=1))
    return value


def params_from_http_sf(params: dict[str, Any]) -> dict[str, Any]:
    return {key: bare_from_http_sf(value) for key, value in params.items()}


def item_from_http_sf(item: Any) -> Item:
    value, params = item
    return Item(bare_from_http_sf(value), params_from_http_sf(params))


def member_from_http_sf(member: Any) -> Member:
    value, params = member
    if isinstance(value, list):
        return InnerList([item_from_http_sf(item) for item in value], params_from_http_sf(params))
    return item_from_http_sf(member)


def from_http_sf(structure: Any) -> Any:
    if isinstance(structure, dict):
        return {key: member_from_http_sf(member) for key, member in structure.items()}
    if isinstance(structure, list):
        return [member_from_http_sf(member) for member in structure]
    return member_from_http_sf(structure)


def parse_ours(text: str, tltype: str) -> Any:
    """Our parse as a typed structure, or None if it fails."""
    try:
        return typed(PARSERS[tltype](text))
    except StructuredFieldError:
        return None


def parse_theirs(text: str, tltype: str) -> Any:
    """http-sf's parse as a typed structure, or None if it fails."""
    # Callers decode field bytes as latin-1; text beyond it is fed as UTF-8,
    # which both parsers must reject (it is not ASCII).
    try:
        data = text.encode("latin-1")
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    try:
        return typed(from_http_sf(http_sf.parse(data, tltype=tltype)))
    except http_sf.StructuredFieldError:
        return None


def has_date_beyond_datetime(structure: Any) -> bool:
    """Whether a typed structure holds a Date that http-sf cannot represent."""
    if isinstance(structure, (list, tuple)):
        if len(structure) == 2 and structure[0] == "Date":
            return not DATETIME_MIN <= structure[1].seconds <= DATETIME_MAX
        return any(has_date_beyond_datetime(part) for part in structure)
    return False


def assert_agree(text: str) -> None:
    for tltype in PARSERS:
        ours = parse_ours(text, tltype)
        theirs = parse_theirs(text, tltype)
        if ours is not None and theirs is None and has_date_beyond_datetime(ours):
            continue  # the documented difference
        assert ours == theirs, (tltype, text)


# --- Strategies -----------------------------------------------------------------

# Built from alphabets rather than from_regex, which is much slower to draw from.
KEYS = st.builds(
    str.__add__,
    st.sampled_from("abz*"),
    st.text(string.ascii_lowercase[:3] + "z09_-.*", max_size=5),
)
TOKENS = st.builds(
    lambda first, rest: Token(first + rest),
    st.sampled_from("aZ*"),
    st.text(string.ascii_letters[:2] + "Z09:/!#$%&'*+-.^_`|~", max_size=8),
)
STRINGS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
INTEGERS = st.integers(-MAX_INTEGER, MAX_INTEGER)
# Exactly representable as Decimals: up to 12 integer and 3 fractional digits.
DECIMALS = st.integers(-MAX_INTEGER, MAX_INTEGER).map(lambda n: n / 1000)
DISPLAY_STRINGS = st.text(st.characters(codec="utf-8"), max_size=8).map(DisplayString)
DATES = st.integers(DATETIME_MIN, DATETIME_MAX).map(Date)

BARE_ITEMS = st.one_of(
    INTEGERS,
    DECIMALS,
    STRINGS,
    TOKENS,
    st.binary(max_size=24),
    st.booleans(),
    DATES,
    DISPLAY_STRINGS,
)
PARAMS = st.dictionaries(KEYS, BARE_ITEMS, max_size=2)
ITEMS = st.builds(Item, BARE_ITEMS, PARAMS)
INNER_LISTS = st.builds(InnerList, st.lists(ITEMS, max_size=3), PARAMS)
# The shape of Signature-Input members, which the parser has a fast path for.
SIGNATURE_INPUTS = st.builds(
    InnerList,
    st.lists(st.builds(Item, STRINGS, st.just({})), max_size=5),
    st.dictionaries(KEYS, st.one_of(INTEGERS, STRINGS, TOKENS), max_size=4),
)
MEMBERS = st.one_of(ITEMS, INNER_LISTS, SIGNATURE_INPUTS)
DICTIONARIES = st.dictionaries(KEYS, MEMBERS, max_size=3)
LISTS = st.lists(MEMBERS, max_size=3)

# The characters that matter to the grammar, for text that gets deep into it.
GRAMMAR = '=();,:"*?@%\\ \t-._/+' + string.digits + "abcxyzABXZ"
VALID_TEXT = st.one_of(
    DICTIONARIES.map(serialize_dictionary),
    LISTS.map(serialize_list),
    ITEMS.map(serialize_item),
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid field value with a few characters inserted, deleted or replaced."""
    text = draw(VALID_TEXT)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(GRAMMAR))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        if edit == "insert":
            text = text[:at] + char + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at + 1 :]
    return text


# --- (a) Round trips ------------------------------------------------------------


@STRUCTURE_EXAMPLES
@given(DICTIONARIES)
def test_dictionary_round_trip(d: dict[str, Member]) -> None:
    text = serialize_dictionary(d)
    assert typed(parse_dictionary(text)) == typed(d)
    assert parse_theirs(text, "dictionary") == typed(d)


@STRUCTURE_EXAMPLES
@given(LISTS)
def test_list_round_trip(members: list[Member]) -> None:
    text = serialize_list(members)
    assert typed(parse_list(text)) == typed(members)
    assert parse_theirs(text, "list") == typed(members)


@EXAMPLES
@given(ITEMS)
def test_item_round_trip(item: Item) -> None:
    text = serialize_item(item)
    assert parse_item(text) == item  # dataclass equality
    assert typed(parse_item(text)) == typed(item)
    assert parse_theirs(text, "item") == typed(item)


@EXAMPLES
@given(st.integers(-MAX_INTEGER, MAX_INTEGER))
def test_dates_beyond_datetime_round_trip(seconds: int) -> None:
    item = Item(Date(seconds), {})
    assert parse_item(serialize_item(item)) == item


@EXAMPLES
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_serializes_rounded_or_fails(value: float) -> None:
    # Rounded to thousandths (ties to even) as written, it must have at most 12
    # integer digits.
    fits = math.isfinite(value) and abs(value) < 1e13
    if fits:
        rounded = Decimal(repr(value)).quantize(Decimal("0.001"), ROUND_HALF_EVEN)
        fits = abs(rounded) < 10**12
    try:
        text = serialize_item(Item(value, {}))
    except StructuredFieldError:
        assert not fits
        return
    assert fits
    parsed = parse_item(text).value
    assert isinstance(parsed, float)
    assert abs(parsed - value) <= 0.0005 + 1e-9 * abs(value)
    assert text == serialize_item(Item(parsed, {}))  # canonical


# --- (b) Arbitrary text ---------------------------------------------------------


@EXAMPLES
@given(st.text(st.sampled_from(GRAMMAR), max_size=30))
def test_grammar_text_agrees(text: str) -> None:
    assert_agree(text)


@STRUCTURE_EXAMPLES
@given(mutated())
def test_mutated_valid_text_agrees(text: str) -> None:
    assert_agree(text)


@EXAMPLES
@given(st.text(max_size=20))
def test_unicode_text_agrees(text: str) -> None:
    assert_agree(text)


@EXAMPLES
@given(st.text(st.characters(max_codepoint=0xFF), max_size=20))
def test_latin1_text_agrees(text: str) -> None:
    assert_agree(text)
