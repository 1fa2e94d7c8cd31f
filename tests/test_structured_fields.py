"""Conformance of core.structured_fields to the httpwg structured-field-tests suite.

Every case of every file in tests/data/structured-field-tests (parsing) and its
serialisation-tests directory (serialization) runs as its own test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.core.structured_fields import (
    Date,
    DisplayString,
    InnerList,
    Item,
    Member,
    Params,
    StructuredFieldError,
    Token,
    parse_dictionary,
    parse_item,
    parse_list,
    serialize_dictionary,
    serialize_inner_list,
    serialize_item,
    serialize_list,
    serialize_params,
)
from typed_structures import typed

SUITE = Path(__file__).parent / "data" / "structured-field-tests"

PARSERS: dict[str, Callable[[str], Any]] = {
    "dictionary": parse_dictionary,
    "list": parse_list,
    "item": parse_item,
}
SERIALIZERS: dict[str, Callable[[Any], str]] = {
    "dictionary": serialize_dictionary,
    "list": serialize_list,
    "item": serialize_item,
}


def _cases(directory: Path) -> list[Any]:
    cases = []
    for path in sorted(directory.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            cases.append(pytest.param(case, id=f"{path.stem}: {case['name']}"))
    return cases


PARSE_CASES = _cases(SUITE)
SERIALIZE_CASES = _cases(SUITE / "serialisation-tests")


# --- From the suite's JSON to the module's types --------------------------------


def bare_from_json(value: Any) -> Any:
    """A bare item from the suite's JSON (``__type`` objects for the non-JSON types)."""
    if isinstance(value, dict):
        kind, inner = value["__type"], value["value"]
        if kind == "token":
            return Token(inner)
        if kind == "binary":
            return base64.b32decode(inner)
        if kind == "date":
            return Date(inner)
        if kind == "displaystring":
            return DisplayString(inner)
        raise AssertionError(f"unknown __type {kind!r}")
    return value


def params_from_json(params: list[Any]) -> dict[str, Any]:
    return {key: bare_from_json(value) for key, value in params}


def member_from_json(member: list[Any]) -> Member:
    """An Item (``[bare, params]``) or an Inner List (``[[items...], params]``)."""
    value, params = member
    if isinstance(value, list):
        return InnerList([item_from_json(i) for i in value], params_from_json(params))
    return item_from_json(member)


def item_from_json(item: list[Any]) -> Item:
    value, params = item
    return Item(bare_from_json(value), params_from_json(params))


def from_json(header_type: str, expected: Any) -> Any:
    if header_type == "dictionary":
        return {key: member_from_json(member) for key, member in expected}
    if header_type == "list":
        return [member_from_json(member) for member in expected]
    return item_from_json(expected)


# --- The suite ------------------------------------------------------------------


@pytest.mark.parametrize("case", PARSE_CASES)
def test_parse(case: dict[str, Any]) -> None:
    raw = ", ".join(case["raw"])
    parse = PARSERS[case["header_type"]]
    if case.get("must_fail"):
        with pytest.raises(StructuredFieldError):
            parse(raw)
        return
    try:
        parsed = parse(raw)
    except StructuredFieldError:
        if case.get("can_fail"):
            return
        raise
    assert typed(parsed) == typed(from_json(case["header_type"], case["expected"]))
    canonical = ", ".join(case.get("canonical", case["raw"]))
    assert SERIALIZERS[case["header_type"]](parsed) == canonical


@pytest.mark.parametrize("case", [c for c in PARSE_CASES if not c.values[0].get("must_fail")])
def test_serialize_expected(case: dict[str, Any]) -> None:
    """The expected structure serializes to the canonical form, even where parsing may fail."""
    expected = from_json(case["header_type"], case["expected"])
    canonical = ", ".join(case.get("canonical", case["raw"]))
    assert SERIALIZERS[case["header_type"]](expected) == canonical


@pytest.mark.parametrize("case", SERIALIZE_CASES)
def test_serialize(case: dict[str, Any]) -> None:
    serialize = SERIALIZERS[case["header_type"]]
    expected = from_json(case["header_type"], case["expected"])
    if case.get("must_fail"):
        with pytest.raises(StructuredFieldError):
            serialize(expected)
        return
    assert serialize(expected) == ", ".join(case["canonical"])


def test_suite_is_present() -> None:
    assert len(PARSE_CASES) > 1000
    assert len(SERIALIZE_CASES) > 500


# --- Beyond the suite -------------------------------------------------------------

SIGNATURE_INPUT = (
    'sig=("@method" "@path" "@authority" "content-type" "content-digest")'
    ';created=1618884473;keyid="default";alg="ed25519"'
)


def test_signature_input_equals_constructed_objects() -> None:
    parsed = parse_dictionary(SIGNATURE_INPUT)
    names = ["@method", "@path", "@authority", "content-type", "content-digest"]
    params: Params = {"created": 1618884473, "keyid": "default", "alg": "ed25519"}
    assert parsed == {"sig": InnerList([Item(name, {}) for name in names], params)}
    assert serialize_dictionary(parsed) == SIGNATURE_INPUT


def test_parsed_objects_are_frozen() -> None:
    inner = parse_dictionary(SIGNATURE_INPUT)["sig"]
    assert isinstance(inner, InnerList)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inner.items = []  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        inner.items[0].value = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Parameters the fast path leaves to the general parser, after ones it takes.
        (
            'a=("x" "y");n=1;t=rsa-pss-sha512;d=0.5;s="p;q";e="\\"";b;n=2',
            InnerList(
                [Item("x", {}), Item("y", {})],
                {"n": 2, "t": Token("rsa-pss-sha512"), "d": 0.5, "s": "p;q", "e": '"', "b": True},
            ),
        ),
        # Inner Lists the fast path does not take.
        ('a=("x"  "y")', InnerList([Item("x", {}), Item("y", {})], {})),
        ('a=( "x" "y" )', InnerList([Item("x", {}), Item("y", {})], {})),
        ('a=("x";sf "y")', InnerList([Item("x", {"sf": True}), Item("y", {})], {})),
        ('a=("x\\\\" y)', InnerList([Item("x\\", {}), Item(Token("y"), {})], {})),
        ('a=(")" "(")', InnerList([Item(")", {}), Item("(", {})], {})),
        ("a=()", InnerList([], {})),
        ("a=();n=-0", InnerList([], {"n": 0})),
        ("a=();n=123456789012345", InnerList([], {"n": 123456789012345})),
    ],
)
def test_inner_list_shapes(value: str, expected: InnerList) -> None:
    assert typed(parse_dictionary(value)) == typed({"a": expected})


@pytest.mark.parametrize(
    "value",
    [
        'a=("x""y")',  # members must be separated by a space
        'a=("x")y',
        'a=("x");n=1234567890123456',  # too many digits, after the fast path gives up
        'a=("x");n=1.2345',
        'a=("x");n=-',
        'a=("x");n=1;',
        'a=("x" "y"',
        'a=("x" "y;n=1',
        'a=("x")\t;n=1',
        'a=("é")',
        'a=("x");k="é"',
        "a=1\u0663",  # a digit, but not an ASCII one
        "a=\u0663",
        "a=to\u212aen",  # KELVIN SIGN, which case-insensitive matching would take for k
        "a=:aGVsbG8\u00e9:",
        "a=?1\u00a0",
        "\u00e9=1",
    ],
)
def test_invalid_dictionaries(value: str) -> None:
    with pytest.raises(StructuredFieldError):
        parse_dictionary(value)


@pytest.mark.parametrize(
    ("parse", "value", "ok"),
    [
        (parse_dictionary, "  a=1  ", True),
        (parse_dictionary, "a=1 \t", True),  # whitespace after a member
        (parse_dictionary, "\ta=1", False),  # only SP is discarded up front
        (parse_dictionary, " \t", False),
        (parse_dictionary, "   ", True),
        (parse_list, "1\t", True),
        (parse_item, "1\t", False),
        (parse_item, " 1 ", True),
        (parse_item, "   ", False),
    ],
)
def test_surrounding_whitespace(parse: Callable[[str], Any], value: str, ok: bool) -> None:
    if ok:
        parse(value)
    else:
        with pytest.raises(StructuredFieldError):
            parse(value)


def test_error_position_refers_to_the_value_as_given() -> None:
    with pytest.raises(StructuredFieldError) as excinfo:
        parse_dictionary("  a=1, b=?2")
    assert excinfo.value.position == 9  # the start of the invalid value


@pytest.mark.parametrize(
    ("item", "text"),
    [
        (Item(True, {}), "?1"),
        (Item(False, {"a": True, "b": False}), "?0;a;b=?0"),
        (Item(1, {"a": 1.0}), "1;a=1.0"),
        (Item(-0.0, {}), "0.0"),
        (Item(-0.0001, {}), "0.0"),
        (Item(0.0005, {}), "0.0"),
        (Item(0.0015, {}), "0.002"),
        (Item(-1.5, {}), "-1.5"),
        (Item(1e-07, {}), "0.0"),
        (Item(999_999_999_999.999, {}), "999999999999.999"),
        (Item(999_999_999_999_999, {}), "999999999999999"),
        (Item(Date(-5), {}), "@-5"),
        (Item(DisplayString('é%"'), {}), '%"%c3%a9%25%22"'),
        (Item(b"", {}), "::"),
        (Item(Token("*a/b:c"), {}), "*a/b:c"),
    ],
)
def test_serialize_item(item: Item, text: str) -> None:
    assert serialize_item(item) == text


@pytest.mark.parametrize(
    "item",
    [
        Item(1e12, {}),
        Item(999_999_999_999.9996, {}),  # rounds up to 13 integer digits
        Item(float("nan"), {}),
        Item(float("inf"), {}),
        Item(10**15, {}),
        Item(Date(10**15), {}),
        Item(DisplayString("\ud800"), {}),
        Item(Token(""), {}),
        Item(Token("1a"), {}),
        Item("\t", {}),
        Item("é", {}),
        Item(None, {}),  # type: ignore[arg-type]
        Item([1], {}),  # type: ignore[arg-type]
        Item(1, {"A": 1}),
        Item(1, {"": 1}),
        Item(1, {1: 1}),  # type: ignore[dict-item]
        Item(1, []),  # type: ignore[arg-type]
    ],
)
def test_serialize_item_fails(item: Item) -> None:
    with pytest.raises(StructuredFieldError):
        serialize_item(item)


def test_serialize_containers() -> None:
    assert serialize_dictionary({}) == ""
    assert serialize_list([]) == ""
    inner = InnerList([Item(1, {}), Item(Token("a"), {"b": True})], {"c": "d"})
    assert serialize_inner_list(inner) == '(1 a;b);c="d"'
    assert serialize_params({"a": True, "b": 2}) == ";a;b=2"
    assert serialize_dictionary({"a": Item(True, {"p": 1}), "b": inner}) == 'a;p=1, b=(1 a;b);c="d"'
    with pytest.raises(StructuredFieldError):
        serialize_inner_list(InnerList([inner], {}))  # type: ignore[list-item]
    with pytest.raises(StructuredFieldError):
        serialize_list([1])  # type: ignore[list-item]
    with pytest.raises(StructuredFieldError):
        serialize_dictionary({"A": Item(1, {})})


HOSTILE = {
    "unterminated string": 'a="' + "x" * 100_000,
    "unterminated escapes": 'a="' + '\\"' * 50_000,
    "spaces in an inner list": "a=(" + " " * 100_000,
    "plain strings, unterminated": "a=(" + '"x" ' * 25_000,
    "plain strings, then a parameter": "a=(" + '"x" ' * 25_000 + '"y";p)',
    "parameters, then a bad one": 'a=("x")' + ";b=2" * 25_000 + ";c=1.5;",
    "digits": "a=" + "1" * 100_000,
    "fraction digits": "a=1." + "1" * 100_000,
    "unterminated byte sequence": "a=:" + "A" * 100_000,
    "percent escapes, unterminated": 'a=%"' + "%41" * 33_000,
    "members without values": "a, " * 33_000 + "a",
    "inner lists with parentheses in strings": ", ".join(['(")" x)'] * 12_000),
    "opening parentheses": "(" * 100_000,
    "semicolons": "a" + ";" * 100_000,
    "tabs": "a=1" + "\t" * 100_000 + ",",
}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_linear(value: str) -> None:
    # Linear parsing takes tens of milliseconds here; quadratic would take minutes.
    for parse in PARSERS.values():
        start = time.perf_counter()
        with contextlib.suppress(StructuredFieldError):
            parse(value)
        assert time.perf_counter() - start < 10
