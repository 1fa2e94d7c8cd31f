"""The body policy every adapter follows, decided in the core without I/O."""

from __future__ import annotations

import pytest
from dispatchlet import Endpoint, InvalidArgument
from dispatchlet.core.body import BodyReader
from hypothesis import given
from hypothesis import strategies as st
from support import connect_error

LIMIT = 100


def reader(length: str | int | None, **options: bool) -> BodyReader:
    options.setdefault("ends_without_length", False)
    return BodyReader(LIMIT, length, **options)


@pytest.mark.parametrize("length", ["+1", "1_0", "٣", "-1", "1.0", "0x10", "1 2"])
def test_invalid_content_length_is_refused_before_reading(length: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid Content-Length"):
        reader(length)


def test_announced_oversized_body_is_refused_before_reading() -> None:
    with pytest.raises(InvalidArgument, match=f"exceeds {LIMIT} bytes"):
        reader(str(LIMIT + 1))
    assert reader(str(LIMIT)).size == LIMIT


def test_a_body_cut_short_is_never_passed_on() -> None:
    with pytest.raises(InvalidArgument, match="incomplete request body: 3 of 10 bytes"):
        reader("10").complete(b"abc")
    assert reader(" 3 ").complete(b"abc") == b"abc"


def test_without_a_length_read_only_a_body_the_server_ends() -> None:
    assert reader(None).size == 0
    assert reader("").size == 0
    terminated = reader(None, ends_without_length=True)
    assert terminated.size == LIMIT + 1  # one past the limit shows an oversized body
    assert terminated.complete(b"x" * LIMIT) == b"x" * LIMIT
    with pytest.raises(InvalidArgument, match="exceeds"):
        terminated.complete(b"x" * (LIMIT + 1))
    with pytest.raises(InvalidArgument, match="without Content-Length"):
        reader(None, chunked=True)


def test_stalled_and_broken_bodies_have_their_errors() -> None:
    assert "timed out" in str(BodyReader.stalled())
    assert "ConnectionResetError" in str(BodyReader.broken(ConnectionResetError()))


def test_endpoint_rejects_with_a_connect_error() -> None:
    endpoint = Endpoint(insecure=True, max_body_size=LIMIT)
    with pytest.raises(InvalidArgument) as info:
        endpoint.body_reader(str(LIMIT + 1), ends_without_length=False)
    assert connect_error(endpoint.reject(info.value)) == (
        400,
        "invalid_argument",
        f"request body exceeds {LIMIT} bytes",
    )


@given(
    length=st.none() | st.text(max_size=6) | st.integers(0, 3 * LIMIT).map(str),
    arrived=st.integers(0, 3 * LIMIT),
    ends=st.booleans(),
    chunked=st.booleans(),
)
def test_any_length_and_any_arrival(
    length: str | None, arrived: int, ends: bool, chunked: bool
) -> None:
    """Either an InvalidArgument, or exactly the announced body within the limit."""
    try:
        policy = reader(length, ends_without_length=ends, chunked=chunked)
        body = policy.complete(b"x" * min(arrived, policy.size))
    except InvalidArgument:
        return
    assert len(body) <= LIMIT
    if policy.length is not None:
        assert len(body) == policy.length
