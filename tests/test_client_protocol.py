"""The caller's half of the protocol in core: encoding a Run request, reading the
answer, reading an error, parsing an endpoint URL; round trips through a real Endpoint."""

from __future__ import annotations

import contextlib
import json

import pytest
from dispatchlet import Endpoint
from dispatchlet.core import values
from dispatchlet.core.connect import JSON, PROTO, RUN_PATH
from dispatchlet.core.connect_client import (
    ConnectError,
    InvalidAnswer,
    decode_response,
    encode_request,
    parse_error,
)
from dispatchlet.core.endpoint_url import parse_endpoint_url
from dispatchlet.core.http import Request
from dispatchlet.core.signatures import sign_request
from hypothesis import given
from hypothesis import strategies as st
from support import KEY, PUBLIC_KEY, run_request


@pytest.mark.parametrize("codec", [PROTO, JSON])
def test_a_request_encoded_here_is_run_and_its_answer_decoded(codec: str) -> None:
    target = parse_endpoint_url("https://Example.com/prefix/")
    request = Request(
        "POST",
        target.run_path,
        target.authority,
        [("Content-Type", codec)],
        encode_request(run_request("echo", [1, 2]), codec),
    )
    endpoint = Endpoint(verification_key=PUBLIC_KEY, endpoint_url="https://example.com/prefix")
    endpoint.function(lambda value: {"got": value}, name="echo")
    response = endpoint.handle(sign_request(request, KEY))
    assert response.status == 200
    result = decode_response(response.header("content-type"), response.body)
    assert values.from_any(result.exit.result.output) == {"got": [1, 2]}


def test_errors_of_the_endpoint_are_read_with_their_code() -> None:
    endpoint = Endpoint(verification_key=PUBLIC_KEY)
    request = Request("POST", RUN_PATH, "example.com", [("Content-Type", PROTO)], b"x")
    response = endpoint.handle(request)
    error = parse_error(response.status, response.header("content-type"), response.body)
    assert error.http_status == 401
    assert error.code == "unauthenticated"
    assert "missing request signature" in error.message
    assert str(error).startswith("unauthenticated: ")


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (
            503,
            "text/html",
            b"<h1>down</h1>",
            ConnectError(503, None, "Service Unavailable: <h1>down</h1>"),
        ),
        (502, None, b"", ConnectError(502, None, "Bad Gateway")),
        (599, "application/json", b"{}", ConnectError(599, None, "error: {}")),
        (
            400,
            "application/json; charset=utf-8",
            json.dumps({"code": "x", "message": 'a "q"'}).encode(),
            ConnectError(400, "x", 'a "q"'),
        ),
    ],
)
def test_any_error_body_is_read(
    status: int, content_type: str | None, body: bytes, expected: ConnectError
) -> None:
    assert parse_error(status, content_type, body) == expected


@given(
    status=st.integers(100, 999),
    content_type=st.none() | st.text(max_size=30),
    body=st.binary(max_size=200),
)
def test_parse_error_never_raises(status: int, content_type: str | None, body: bytes) -> None:
    error = parse_error(status, content_type, body)
    assert error.http_status == status
    assert isinstance(error.message, str)


@given(content_type=st.sampled_from([PROTO, JSON, "text/plain", ""]), body=st.binary(max_size=200))
def test_decode_response_raises_only_invalid_answer(content_type: str, body: bytes) -> None:
    with contextlib.suppress(InvalidAnswer):
        decode_response(content_type, body)


@pytest.mark.parametrize(
    ("url", "authority", "run_path"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", RUN_PATH),
        ("https://user:pw@Example.com/a/b/", "Example.com", "/a/b" + RUN_PATH),
        ("https://[::1]:9/x", "[::1]:9", "/x" + RUN_PATH),
    ],
)
def test_endpoint_urls(url: str, authority: str, run_path: str) -> None:
    parsed = parse_endpoint_url(url)
    assert (parsed.authority, parsed.run_path) == (authority, run_path)
    assert parsed.run_url.endswith(run_path)


@pytest.mark.parametrize(
    "url", ["ftp://x", "https://", "example.com", "https://x/?q=1", "http://x/#f"]
)
def test_invalid_endpoint_urls_say_why(url: str) -> None:
    with pytest.raises(ValueError, match="invalid endpoint URL"):
        parse_endpoint_url(url)
