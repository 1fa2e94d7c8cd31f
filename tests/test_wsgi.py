"""The WSGI adapter's translation: the path as sent, bounded bodies, headers."""

from __future__ import annotations

import io
from typing import Any

import pytest
from dispatchlet import Endpoint
from dispatchlet.adapters.wsgi import request_headers, request_target, wsgi_app
from dispatchlet.core.connect import RUN_PATH
from support import PUBLIC_KEY, http_request, run_request, signed


@pytest.mark.parametrize(
    ("environ", "target"),
    [
        ({"RAW_URI": "/a%2Fb/x?y=1", "PATH_INFO": "/a/b/x"}, ("/a%2Fb/x", "y=1")),
        ({"REQUEST_URI": "/p%20q", "PATH_INFO": "/p q"}, ("/p%20q", "")),
        ({"RAW_URI": "http://h.example/abs/path?q"}, ("/abs/path", "q")),
        ({"SCRIPT_NAME": "/app", "PATH_INFO": "/p q", "QUERY_STRING": "z"}, ("/app/p%20q", "z")),
        ({"PATH_INFO": "caf\xc3\xa9"}, ("caf%C3%A9", "")),
        ({}, ("/", "")),
    ],
)
def test_request_target(environ: dict[str, Any], target: tuple[str, str]) -> None:
    assert request_target(environ) == target


def test_request_headers() -> None:
    environ = {
        "HTTP_HOST": "h",
        "HTTP_SIGNATURE_INPUT": "x",
        "CONTENT_TYPE": "application/proto",
        "CONTENT_LENGTH": "3",
        "wsgi.input": None,
    }
    assert sorted(request_headers(environ)) == [
        ("content-length", "3"),
        ("content-type", "application/proto"),
        ("host", "h"),
        ("signature-input", "x"),
    ]


def call_app(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def environ_for(body: bytes, headers: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": RUN_PATH,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "CONTENT_LENGTH": str(len(body)),
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    environ.update(extra)
    return environ


def endpoint(**options: Any) -> Endpoint:
    ep = Endpoint(verification_key=PUBLIC_KEY, **options)
    ep.function(lambda value: value, name="echo")
    return ep


def test_signed_request_through_the_app() -> None:
    request = signed(http_request(run_request("echo", "hi")))
    headers = [("Host", request.authority), *request.headers]
    status, response_headers, body = call_app(
        wsgi_app(endpoint()), environ_for(request.body, headers)
    )
    assert status == "200 OK"
    assert response_headers["Content-Length"] == str(len(body))


def test_oversized_body_is_refused_without_reading_it() -> None:
    stream = io.BytesIO(b"x" * 1000)
    environ = environ_for(b"", [("Host", "h"), ("Content-Type", "application/proto")])
    environ.update({"wsgi.input": stream, "CONTENT_LENGTH": "1000"})
    status, _, body = call_app(wsgi_app(endpoint(max_body_size=100)), environ)
    assert status.startswith("400")
    assert b"100 bytes" in body
    assert stream.tell() == 0


def test_chunked_body_only_when_input_is_terminated() -> None:
    request = signed(http_request(run_request("echo", "hi")))
    headers = [("Host", request.authority), *request.headers]
    environ = environ_for(request.body, headers)
    del environ["CONTENT_LENGTH"]
    # Without wsgi.input_terminated the body cannot be read safely: it is taken as empty.
    assert call_app(
        wsgi_app(endpoint()), dict(environ, **{"wsgi.input": io.BytesIO(request.body)})
    )[0].startswith("400")
    environ["wsgi.input_terminated"] = True
    assert call_app(wsgi_app(endpoint()), environ)[0] == "200 OK"


def test_missing_host_is_400() -> None:
    request = signed(http_request(run_request("echo", "hi")))
    status, _, _ = call_app(wsgi_app(endpoint()), environ_for(request.body, list(request.headers)))
    assert status.startswith("400")
