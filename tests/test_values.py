"""The value codec: round trips, the wire format other languages see, and errors."""

from __future__ import annotations

import contextlib
import datetime
import math
import pickle
from typing import Any

import pytest
from dispatchlet.core import values
from dispatchlet.core.values import (
    LEGACY_TYPE_URL_PREFIX,
    MAX_DEPTH,
    TYPE_URL_PREFIX,
    DecodeError,
    EncodeError,
    from_any,
    to_any,
    type_name,
)
from dispatchlet.proto.dispatch.sdk.python.v1.pickled_pb2 import Pickled
from dispatchlet.proto.dispatch.sdk.v1.call_pb2 import Call
from google.protobuf import (
    any_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UTC = datetime.timezone.utc
DURATION_MAX = 315_576_000_000
PICKLED_URL = "type.googleapis.com/dispatch.sdk.python.v1.Pickled"


def roundtrip(value: object, **kwargs: bool) -> object:
    return from_any(to_any(value, **kwargs), **kwargs)


def packed(msg: Any, prefix: str = TYPE_URL_PREFIX) -> any_pb2.Any:
    """An Any holding ``msg`` under ``prefix``, built with protobuf itself."""
    result = any_pb2.Any()
    result.Pack(msg, type_url_prefix=prefix)
    return result


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def json_expected(value: object) -> object:
    """What a JSON-like value decodes to: tuples are lists, integral numbers ints."""
    if isinstance(value, float) and math.isfinite(value) and abs(value) <= 2**53:
        return int(value) if value.is_integer() else value
    if isinstance(value, (list, tuple)):
        return [json_expected(item) for item in value]
    if isinstance(value, dict):
        return {key: json_expected(item) for key, item in value.items()}
    return value


def assert_same(got: object, want: object) -> None:
    """Equal, of exactly the same types throughout, NaN equal to NaN."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float)
        assert math.isnan(got)
    elif isinstance(want, list):
        assert isinstance(got, list)
        assert len(got) == len(want)
        for got_item, want_item in zip(got, want, strict=True):
            assert_same(got_item, want_item)
    elif isinstance(want, dict):
        assert isinstance(got, dict)
        assert got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key])
    else:
        assert got == want


# --- Round trips ------------------------------------------------------------

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
offsets = st.timedeltas(
    min_value=datetime.timedelta(hours=-23, minutes=-59),
    max_value=datetime.timedelta(hours=23, minutes=59),
)
timezones = st.just(UTC) | st.builds(datetime.timezone, offsets)
# A day off either end, so that any offset keeps the instant within years 1-9999.
naive_datetimes = st.datetimes(
    min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30)
)
aware_datetimes = st.datetimes(
    min_value=datetime.datetime(1, 1, 2),
    max_value=datetime.datetime(9999, 12, 30),
    timezones=timezones,
)
durations = st.timedeltas(
    min_value=datetime.timedelta(seconds=-DURATION_MAX),
    max_value=datetime.timedelta(seconds=DURATION_MAX),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats()
    | st.text()
)
json_like = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
json_containers = st.lists(json_like, max_size=5) | st.dictionaries(
    st.text(max_size=8), json_like, max_size=5
)
calls = st.builds(
    Call,
    correlation_id=st.integers(min_value=0, max_value=2**64 - 1),
    endpoint=st.text(),
    function=st.text(),
    input=st.one_of(st.text(), int64s, st.none()).map(to_any),
    expiration=st.builds(
        duration_pb2.Duration,
        seconds=st.integers(min_value=0, max_value=DURATION_MAX),
        nanos=st.integers(min_value=0, max_value=999_999_999),
    ),
    version=st.text(),
)


@given(st.none() | st.booleans() | int64s | st.text() | st.binary())
def test_scalars_round_trip(value: object) -> None:
    assert_same(roundtrip(value), value)


@given(st.floats())
def test_floats_round_trip(value: float) -> None:
    assert_same(roundtrip(value), value)


@given(st.binary())
def test_bytes_like_round_trip_as_bytes(value: bytes) -> None:
    assert_same(roundtrip(bytearray(value)), value)
    assert_same(roundtrip(memoryview(value)), value)


@given(aware_datetimes)
def test_aware_datetimes_round_trip_as_utc(value: datetime.datetime) -> None:
    result = roundtrip(value)
    assert isinstance(result, datetime.datetime)
    assert result.tzinfo is UTC
    assert result == value  # the same instant


@given(naive_datetimes)
def test_naive_datetimes_are_taken_as_utc(value: datetime.datetime) -> None:
    assert roundtrip(value) == value.replace(tzinfo=UTC)


@given(durations)
def test_timedeltas_round_trip(value: datetime.timedelta) -> None:
    assert_same(roundtrip(value), value)


@given(json_containers)
def test_json_like_containers_round_trip(value: object) -> None:
    # assert_same checks types exactly: ints stay ints at every depth.
    assert_same(roundtrip(value), json_expected(value))


@given(st.lists(st.integers(min_value=-(2**53), max_value=2**53)))
def test_ints_inside_lists_stay_ints(value: list[int]) -> None:
    result = roundtrip({"items": value})
    assert isinstance(result, dict)
    assert all(type(item) is int for item in result["items"])
    assert result == {"items": value}


@given(calls)
def test_messages_round_trip_as_themselves(value: Call) -> None:
    encoded = to_any(value)
    assert encoded.type_url == "type.googleapis.com/dispatch.sdk.v1.Call"
    assert roundtrip(value) == value


def test_message_without_native_form_comes_back_as_message() -> None:
    mask = field_mask_pb2.FieldMask(paths=["a.b", "c"])
    assert roundtrip(mask) == mask


@given(st.integers(min_value=-62_135_596_800, max_value=253_402_300_799), st.integers(0, 10**9 - 1))
def test_timestamp_message_comes_back_as_datetime(seconds: int, nanos: int) -> None:
    message = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    expected = datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(
        seconds=seconds, microseconds=nanos // 1000
    )
    assert roundtrip(message) == expected


def test_any_passes_through_unchanged() -> None:
    value = any_pb2.Any(type_url="type.googleapis.com/some.Unknown", value=b"\x01\x02")
    assert to_any(value) is value


# --- The wire format, as other languages see it ------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "google.protobuf.Empty"),
        (True, "google.protobuf.BoolValue"),
        (42, "google.protobuf.Int64Value"),
        (1.5, "google.protobuf.DoubleValue"),
        ("x", "google.protobuf.StringValue"),
        (b"x", "google.protobuf.BytesValue"),
        (datetime.datetime(2024, 1, 1, tzinfo=UTC), "google.protobuf.Timestamp"),
        (datetime.timedelta(seconds=1), "google.protobuf.Duration"),
        ([1, 2], "google.protobuf.Value"),
        ((1, 2), "google.protobuf.Value"),
        ({"a": 1}, "google.protobuf.Value"),
        (Call(function="f"), "dispatch.sdk.v1.Call"),
    ],
)
def test_type_urls(value: object, name: str) -> None:
    assert to_any(value).type_url == "type.googleapis.com/" + name


def test_wrapper_bytes_are_protobufs() -> None:
    assert to_any("x").value == wrappers_pb2.StringValue(value="x").SerializeToString()
    assert to_any(-5).value == wrappers_pb2.Int64Value(value=-5).SerializeToString()
    assert to_any(None).value == b""


@pytest.mark.parametrize(
    ("value", "seconds", "nanos"),
    [
        (datetime.timedelta(microseconds=-1), 0, -1000),
        (datetime.timedelta(days=-1, seconds=1), -86_399, 0),
        (datetime.timedelta(seconds=-1, microseconds=-500_000), -1, -500_000_000),
        (datetime.timedelta(seconds=1, microseconds=500_000), 1, 500_000_000),
        (datetime.timedelta(seconds=DURATION_MAX), DURATION_MAX, 0),
        (-datetime.timedelta(seconds=DURATION_MAX), -DURATION_MAX, 0),
    ],
)
def test_duration_fields(value: datetime.timedelta, seconds: int, nanos: int) -> None:
    duration = duration_pb2.Duration.FromString(to_any(value).value)
    assert (duration.seconds, duration.nanos) == (seconds, nanos)


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (0, -1500, datetime.timedelta(microseconds=-1)),  # truncated toward zero
        (0, 1500, datetime.timedelta(microseconds=1)),
        (-2, -999_999_999, datetime.timedelta(seconds=-2, microseconds=-999_999)),
        (-86_399, 0, datetime.timedelta(days=-1, seconds=1)),
    ],
)
def test_duration_decoding(seconds: int, nanos: int, expected: datetime.timedelta) -> None:
    assert from_any(packed(duration_pb2.Duration(seconds=seconds, nanos=nanos))) == expected


def test_timestamp_fields_are_utc() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))
    value = datetime.datetime(2024, 3, 1, 1, 2, 3, 456789, tzinfo=tz)
    ts = timestamp_pb2.Timestamp.FromString(to_any(value).value)
    assert ts.seconds == int(datetime.datetime(2024, 3, 1, 6, 32, 3, tzinfo=UTC).timestamp())
    assert ts.nanos == 456_789_000


def test_timestamp_nanos_are_truncated() -> None:
    result = from_any(packed(timestamp_pb2.Timestamp(seconds=-1, nanos=999_999_999)))
    assert result == datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


def reference_value(value: object) -> struct_pb2.Value:
    """The Value of a JSON-like ``value``, built through protobuf's own API."""
    result = struct_pb2.Value()
    if value is None:
        result.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        result.bool_value = value
    elif isinstance(value, (int, float)):
        result.number_value = value
    elif isinstance(value, str):
        result.string_value = value
    elif isinstance(value, dict):
        result.struct_value.SetInParent()
        for key, item in value.items():
            result.struct_value.fields[key].CopyFrom(reference_value(item))
    else:
        assert isinstance(value, (list, tuple))
        result.list_value.SetInParent()
        for item in value:
            result.list_value.values.add().CopyFrom(reference_value(item))
    return result


no_nan_json = st.recursive(
    json_scalars.filter(lambda x: not (isinstance(x, float) and math.isnan(x))),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(no_nan_json)
def test_value_bytes_are_what_protobuf_means(value: object) -> None:
    # The Value is written by hand: protobuf must read the same thing from it.
    encoded = to_any(value) if isinstance(value, (list, dict)) else to_any([value])
    expected = reference_value(value if isinstance(value, (list, dict)) else [value])
    assert struct_pb2.Value.FromString(encoded.value) == expected


@given(no_nan_json)
def test_values_serialized_by_protobuf_decode(value: object) -> None:
    encoded = packed(reference_value(value))
    assert_same(from_any(encoded), json_expected(value))


def test_number_without_fraction_in_value_is_int() -> None:
    value = struct_pb2.Value()
    value.list_value.values.add().number_value = 3.0
    value.list_value.values.add().number_value = 2.5
    value.list_value.values.add().number_value = 2.0**60
    value.list_value.values.add().number_value = math.inf
    result = from_any(packed(value))
    assert isinstance(result, list)
    assert_same(result, [3, 2.5, 2.0**60, math.inf])


def test_struct_built_by_protobuf_decodes() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": 1, "b": [1, 2.5, None, True, "x"], "c": {"d": {}}})
    assert_same(from_any(packed(struct)), {"a": 1, "b": [1, 2.5, None, True, "x"], "c": {"d": {}}})
    lst = struct_pb2.ListValue()
    lst.extend([1, "a"])
    assert_same(from_any(packed(lst)), [1, "a"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (struct_pb2.Value(number_value=3.0), 3),
        (struct_pb2.Value(number_value=-0.5), -0.5),
        (struct_pb2.Value(string_value="s"), "s"),
        (struct_pb2.Value(bool_value=False), False),
        (struct_pb2.Value(null_value=struct_pb2.NULL_VALUE), None),
        (struct_pb2.Value(), None),  # unset
    ],
)
def test_top_level_values(value: struct_pb2.Value, expected: object) -> None:
    assert_same(from_any(packed(value)), expected)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (wrappers_pb2.Int32Value(value=-7), -7),
        (wrappers_pb2.UInt32Value(value=2**32 - 1), 2**32 - 1),
        (wrappers_pb2.UInt64Value(value=2**64 - 1), 2**64 - 1),
        (wrappers_pb2.FloatValue(value=1.5), 1.5),
        (wrappers_pb2.Int64Value(value=-(2**63)), -(2**63)),
    ],
)
def test_other_languages_wrappers_decode(message: Any, expected: object) -> None:
    assert_same(from_any(packed(message)), expected)


def test_legacy_prefix_decodes() -> None:
    assert from_any(packed(wrappers_pb2.StringValue(value="x"), LEGACY_TYPE_URL_PREFIX)) == "x"
    call = Call(function="f", correlation_id=3)
    assert from_any(packed(call, LEGACY_TYPE_URL_PREFIX)) == call
    assert type_name(packed(call, LEGACY_TYPE_URL_PREFIX)) == "dispatch.sdk.v1.Call"
    assert from_any(packed(empty_pb2.Empty(), LEGACY_TYPE_URL_PREFIX)) is None


def test_unknown_type_is_returned_unchanged() -> None:
    value = any_pb2.Any(type_url="type.googleapis.com/acme.v1.Widget", value=b"\x08\x01")
    assert from_any(value) is value


def test_unset_any_is_none() -> None:
    assert from_any(any_pb2.Any()) is None


def test_subclasses_encode_as_their_base() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    assert_same(roundtrip(Color.RED), 1)
    assert_same(roundtrip(Name("n")), "n")
    assert_same(roundtrip({Name("k"): [Color.RED]}), {"k": [1]})


# --- Errors -----------------------------------------------------------------


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ({1, 2}, "set"),
        (object(), "object"),
        (2**63, "int"),
        (-(2**63) - 1, "int"),
        ([2**53 + 1], "list"),
        ({1: "a"}, "dict"),
        ({"a": [{"b": {1}}]}, "dict"),
        (Point(1), f"{Point.__module__}.Point"),
        (complex(1, 2), "complex"),
    ],
)
def test_unencodable_without_pickle(value: object, label: str) -> None:
    with pytest.raises(EncodeError, match=r"Endpoint\(allow_pickle=True\)") as info:
        to_any(value)
    assert f"type {label}" in str(info.value)
    assert isinstance(info.value, TypeError)


def test_encode_error_says_where_and_why() -> None:
    with pytest.raises(EncodeError, match=r"\['a'\]\[0\]\['b'\].*set"):
        to_any({"a": [{"b": {1}}]})
    with pytest.raises(EncodeError, match=r"2\*\*53"):
        to_any({"n": 2**60})


@pytest.mark.parametrize(
    "value",
    [{1, 2}, 2**63, -(2**63) - 1, [2**53 + 1], {1: "a"}, {"a": [{"b": {1}}]}, Point(1), 3j],
)
def test_unencodable_round_trip_with_pickle(value: object) -> None:
    encoded = to_any(value, allow_pickle=True)
    assert encoded.type_url == PICKLED_URL
    assert roundtrip(value, allow_pickle=True) == value


def test_pickle_does_not_replace_well_known_types() -> None:
    assert to_any("x", allow_pickle=True).type_url.endswith("StringValue")
    assert to_any({"a": [1]}, allow_pickle=True).type_url.endswith("protobuf.Value")


def test_unpicklable_value() -> None:
    with pytest.raises(EncodeError, match="pickling it failed"):
        to_any(lambda: None, allow_pickle=True)


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        datetime.timedelta(seconds=DURATION_MAX + 1),
        -datetime.timedelta(seconds=DURATION_MAX + 1),
        datetime.timedelta.max,
    ],
)
def test_out_of_range_times(value: object) -> None:
    with pytest.raises(EncodeError, match="outside the range"):
        to_any(value, allow_pickle=True)


def test_nesting_depth() -> None:
    assert roundtrip(nested_lists(MAX_DEPTH)) == nested_lists(MAX_DEPTH)
    with pytest.raises(EncodeError, match="nested more than"):
        to_any(nested_lists(MAX_DEPTH + 1))
    assert roundtrip(nested_lists(MAX_DEPTH + 1), allow_pickle=True) == nested_lists(MAX_DEPTH + 1)
    deep: dict[str, Any] = {}
    for _ in range(MAX_DEPTH - 1):
        deep = {"k": deep}
    assert roundtrip(deep) == deep


def test_cycles_are_errors_not_recursion() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(EncodeError):
        to_any(cycle)
    result = roundtrip(cycle, allow_pickle=True)
    assert isinstance(result, list)
    assert result[0] is result


def test_very_deep_values_are_errors_not_recursion() -> None:
    deep = nested_lists(100_000)
    with pytest.raises(EncodeError):
        to_any(deep)
    with pytest.raises(EncodeError, match="pickling it failed"):
        to_any(deep, allow_pickle=True)


def deep_value(depth: int, kind: str) -> struct_pb2.Value:
    root = struct_pb2.Value()
    current = root
    for _ in range(depth):
        if kind == "list":
            current = current.list_value.values.add()
        else:
            current = current.struct_value.fields["k"]
    current.null_value = struct_pb2.NULL_VALUE
    return root


@pytest.mark.parametrize(("depth", "kind"), [(40, "list"), (33, "struct"), (200, "list")])
def test_deep_input_is_decode_error(depth: int, kind: str) -> None:
    with pytest.raises(DecodeError):
        from_any(packed(deep_value(depth, kind)))


def test_depth_limit_matches_on_both_sides() -> None:
    expected: Any = None
    for _ in range(MAX_DEPTH):
        expected = [expected]
    assert from_any(packed(deep_value(MAX_DEPTH, "list"))) == expected
    with pytest.raises(DecodeError, match="nested more than"):
        from_any(packed(deep_value(MAX_DEPTH + 1, "list")))


def test_pickled_input_refused_without_opt_in() -> None:
    encoded = to_any({1, 2}, allow_pickle=True)
    with pytest.raises(DecodeError, match=r"Endpoint\(allow_pickle=True\)"):
        from_any(encoded)
    legacy = any_pb2.Any(type_url=LEGACY_TYPE_URL_PREFIX + "dispatch.sdk.python.v1.Pickled")
    legacy.value = encoded.value
    with pytest.raises(DecodeError, match="refusing"):
        from_any(legacy)


@pytest.mark.parametrize(
    "value",
    [
        any_pb2.Any(type_url="type.googleapis.com/google.protobuf.StringValue", value=b"\n\x05ab"),
        any_pb2.Any(
            type_url="type.googleapis.com/google.protobuf.StringValue", value=b"\n\x01\xff"
        ),
        any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Value", value=b"\x1a\x01\xff"),
        any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Value", value=b"\x2a\x05\x0a"),
        any_pb2.Any(type_url="type.googleapis.com/dispatch.sdk.v1.Call", value=b"\xff"),
        any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Empty", value=b"\x0a\x09"),
        any_pb2.Any(type_url="nonsense", value=b""),
        any_pb2.Any(type_url="type.googleapis.com/", value=b""),
        any_pb2.Any(type_url="", value=b"\x08\x01"),
        packed(timestamp_pb2.Timestamp(seconds=253_402_300_800)),
        packed(timestamp_pb2.Timestamp(seconds=0, nanos=-1)),
        packed(duration_pb2.Duration(seconds=1, nanos=-1)),
        packed(duration_pb2.Duration(seconds=-1, nanos=1)),
        packed(duration_pb2.Duration(seconds=DURATION_MAX + 1)),
        packed(duration_pb2.Duration(nanos=10**9)),
    ],
)
def test_malformed_inputs(value: any_pb2.Any) -> None:
    with pytest.raises(DecodeError):
        from_any(value, allow_pickle=True)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff",  # not a Pickled message
        Pickled(pickled_value=b"not a pickle").SerializeToString(),
        Pickled(pickled_value=pickle.dumps({1, 2})[:-3]).SerializeToString(),
        Pickled(pickled_value=b"cnonexistent_module_x\nthing\n.").SerializeToString(),
    ],
)
def test_corrupt_pickles(data: bytes) -> None:
    with pytest.raises(DecodeError):
        from_any(any_pb2.Any(type_url=PICKLED_URL, value=data), allow_pickle=True)


@pytest.mark.parametrize("value", ["\ud800", ["\udfff"], {"\ud800": 1}])
def test_surrogates_cannot_be_encoded(value: object) -> None:
    with pytest.raises(EncodeError, match="not valid Unicode"):
        to_any(value)


def test_type_name() -> None:
    assert type_name(to_any("x")) == "google.protobuf.StringValue"
    with pytest.raises(DecodeError, match="malformed type URL"):
        type_name(any_pb2.Any(type_url="no-slash"))


def test_error_types() -> None:
    assert issubclass(EncodeError, TypeError)
    assert issubclass(DecodeError, ValueError)


# --- Fuzzing ----------------------------------------------------------------

KNOWN_NAMES = [
    "google.protobuf.Empty",
    "google.protobuf.BoolValue",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.Value",
    "google.protobuf.Struct",
    "google.protobuf.ListValue",
    "google.protobuf.Any",
    "google.protobuf.FieldMask",
    "dispatch.sdk.python.v1.Pickled",
    "dispatch.sdk.v1.Call",
]
type_urls = st.one_of(
    st.tuples(
        st.sampled_from([TYPE_URL_PREFIX, LEGACY_TYPE_URL_PREFIX]), st.sampled_from(KNOWN_NAMES)
    ).map("".join),
    st.text(max_size=40),
    st.just(""),
)


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a byte replaced, inserted or removed, or cut short."""
    if not data:
        return st.binary(max_size=4)
    index = st.integers(min_value=0, max_value=len(data) - 1)
    return st.one_of(
        st.tuples(index, st.integers(0, 255)).map(
            lambda p: data[: p[0]] + bytes((p[1],)) + data[p[0] + 1 :]
        ),
        st.tuples(index, st.integers(0, 255)).map(
            lambda p: data[: p[0]] + bytes((p[1],)) + data[p[0] :]
        ),
        index.map(lambda i: data[:i] + data[i + 1 :]),
        index.map(lambda i: data[:i]),
    )


fuzz_bytes = st.binary(max_size=64) | json_containers.map(lambda v: to_any(v).value).flatmap(
    mutations
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(type_urls, fuzz_bytes)
def test_from_any_raises_only_decode_error(url: str, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        from_any(any_pb2.Any(type_url=url, value=data))


@settings(max_examples=500)
@given(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1))
def test_times_with_any_fields_decode_or_raise_decode_error(seconds: int, nanos: int) -> None:
    for message in (
        timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        duration_pb2.Duration(seconds=seconds, nanos=nanos),
    ):
        try:
            result = from_any(packed(message))
        except DecodeError:
            continue
        assert isinstance(result, (datetime.datetime, datetime.timedelta))


def slow_decode(data: bytes) -> object:
    """How protobuf's objects read a Value; the direct reader must agree with it."""
    return values._from_value(values._parse(struct_pb2.Value, data), 0)


def outcome(decode: Any, data: bytes) -> tuple[str, object]:
    try:
        return "ok", decode(data)
    except DecodeError:
        return "error", None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_bytes)
def test_direct_value_reader_agrees_with_protobuf(data: bytes) -> None:
    got_kind, got = outcome(values._decode_value, data)
    want_kind, want = outcome(slow_decode, data)
    assert got_kind == want_kind
    assert_same(got, want)


def test_repeated_struct_key_last_wins_like_protobuf() -> None:
    first = to_any({"k": 1}).value[2:]  # the Struct body: one map entry
    second = to_any({"k": 2}).value[2:]
    body = first + second
    data = bytes((0x2A, len(body))) + body
    assert values._decode_value(data) == slow_decode(data) == {"k": 2}


junk = st.recursive(
    st.none()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.builds(object)
    | st.frozensets(st.integers(), max_size=3),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.integers() | st.text(max_size=4), children, max_size=4)
        | st.sets(st.integers(), max_size=3)
    ),
    max_leaves=15,
)


@given(junk)
def test_to_any_raises_only_encode_error(value: object) -> None:
    with contextlib.suppress(EncodeError):
        to_any(value)
