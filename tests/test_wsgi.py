"""The WSGI adapter's translation: the path as sent, bounded bodies, headers."""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from dispatchlet import Endpoint, Response
from dispatchlet.adapters.wsgi import (
    request_authority,
    request_headers,
    request_target,
    wsgi_app,
)
from dispatchlet.core.connect import PROTO, RUN_PATH
from support import PUBLIC_KEY, http_request, output, run_request, signed


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
    ep.function(name="echo")(lambda value: value)
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


@pytest.mark.parametrize(
    ("environ", "target"),
    [
        ({"RAW_URI": "//double//slashes/;p=1/x;q"}, ("//double//slashes/;p=1/x;q", "")),
        ({"REQUEST_URI": "/a%2Fb?"}, ("/a%2Fb", "")),
        ({"RAW_URI": "http://h.example//x%2Fy?q=1"}, ("//x%2Fy", "q=1")),
        ({"RAW_URI": "", "PATH_INFO": "/a;b=1//c"}, ("/a;b=1//c", "")),
    ],
)
def test_request_target_keeps_what_the_client_sent(
    environ: dict[str, Any], target: tuple[str, str]
) -> None:
    assert request_target(environ) == target


@pytest.mark.parametrize(
    ("environ", "authority"),
    [
        ({"HTTP_HOST": "Example.com:8443", "RAW_URI": "/x"}, "Example.com:8443"),
        ({"HTTP_HOST": "proxy", "RAW_URI": "http://fn.example:81/x"}, "fn.example:81"),
        ({"HTTP_HOST": "proxy", "REQUEST_URI": "https://u:p@fn.example/x"}, "fn.example"),
        # The server's own name is not what the client addressed.
        ({"SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "RAW_URI": "/x"}, ""),
        ({"HTTP_HOST": "", "SERVER_NAME": "localhost"}, ""),
    ],
)
def test_request_authority(environ: dict[str, Any], authority: str) -> None:
    assert request_authority(environ) == authority


def signed_environ(value: Any = "hi", **extra: Any) -> dict[str, Any]:
    request = signed(http_request(run_request("echo", value)))
    return environ_for(request.body, [("Host", request.authority), *request.headers], **extra)


def error_of(response: tuple[str, dict[str, str], bytes]) -> tuple[str, str, str]:
    status, headers, body = response
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)
    return status, error["code"], error["message"]


def test_http10_without_host_is_400_even_when_the_server_names_itself() -> None:
    environ = signed_environ(SERVER_PROTOCOL="HTTP/1.0", SERVER_NAME="h", SERVER_PORT="80")
    del environ["HTTP_HOST"]
    status, code, message = error_of(call_app(wsgi_app(endpoint()), environ))
    assert (status, code) == ("400 Bad Request", "invalid_argument")
    assert "Host" in message


def test_absolute_form_target_is_verified_against_its_own_authority() -> None:
    environ = signed_environ(RAW_URI=f"http://example.com{RUN_PATH}", HTTP_HOST="elsewhere")
    status, _, body = call_app(wsgi_app(endpoint()), environ)
    assert status == "200 OK", body
    assert output(Response(200, [("Content-Type", PROTO)], body)) == "hi"


@pytest.mark.parametrize("length", ["abc", "-1", "+5", "1_0", "\u0661\u0662", "5, 5", "0x10"])
def test_invalid_content_length_is_400_and_nothing_is_read(length: str) -> None:
    environ = signed_environ(CONTENT_LENGTH=length)
    status, code, message = error_of(call_app(wsgi_app(endpoint()), environ))
    assert (status, code) == ("400 Bad Request", "invalid_argument")
    assert "Content-Length" in message
    assert environ["wsgi.input"].tell() == 0


def test_zero_content_length_is_an_empty_body() -> None:
    status, _, message = error_of(
        call_app(wsgi_app(endpoint()), signed_environ(CONTENT_LENGTH="0"))
    )
    assert status.startswith("400")
    assert "empty request body" in message


def test_body_shorter_than_announced_is_400_not_a_truncated_request() -> None:
    environ = signed_environ()
    announced = int(environ["CONTENT_LENGTH"])
    environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].getvalue()[:-1])
    status, code, message = error_of(call_app(wsgi_app(endpoint()), environ))
    assert (status, code) == ("400 Bad Request", "invalid_argument")
    assert message == f"incomplete request body: {announced - 1} of {announced} bytes arrived"


class FailingStream:
    """A wsgi.input whose connection breaks after ``good`` bytes."""

    def __init__(self, good: bytes, error: Exception) -> None:
        self.data = io.BytesIO(good)
        self.error = error

    def read(self, size: int) -> bytes:
        chunk = self.data.read(size)
        if not chunk:
            raise self.error
        return chunk


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TimeoutError("timed out"), "it stopped arriving (timed out)"),
        (ConnectionResetError(104, "reset"), "(ConnectionResetError)"),
        (ValueError("invalid chunk size"), "(ValueError)"),
    ],
)
def test_body_that_fails_to_arrive_is_400(error: Exception, reason: str) -> None:
    environ = signed_environ()
    environ["wsgi.input"] = FailingStream(environ["wsgi.input"].getvalue()[:10], error)
    status, _, message = error_of(call_app(wsgi_app(endpoint()), environ))
    assert status == "400 Bad Request"
    assert message.startswith("incomplete request body")
    assert message.endswith(reason)


class EndlessStream:
    """A chunked body that never ends; counts what the application reads."""

    def __init__(self) -> None:
        self.served = 0

    def read(self, size: int) -> bytes:
        self.served += size
        return b"x" * size


def test_chunked_body_stops_being_read_past_the_limit() -> None:
    stream = EndlessStream()
    environ = environ_for(b"", [("Host", "h"), ("Content-Type", PROTO)])
    del environ["CONTENT_LENGTH"]
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    status, _, message = error_of(call_app(wsgi_app(endpoint(max_body_size=200_000)), environ))
    assert status == "400 Bad Request"
    assert "200000 bytes" in message
    assert stream.served == 200_001


def test_chunked_body_of_exactly_the_limit_is_served() -> None:
    environ = signed_environ("limit", **{"wsgi.input_terminated": True})
    size = int(environ.pop("CONTENT_LENGTH"))
    status, _, body = call_app(wsgi_app(endpoint(max_body_size=size)), environ)
    assert status == "200 OK", body


def test_chunked_body_on_a_server_that_cannot_end_it_is_400() -> None:
    environ = signed_environ(HTTP_TRANSFER_ENCODING="chunked")
    del environ["CONTENT_LENGTH"]
    status, _, message = error_of(call_app(wsgi_app(endpoint()), environ))
    assert status == "400 Bad Request"
    assert "without Content-Length" in message
    assert environ["wsgi.input"].tell() == 0


class ClientSocket:
    """Stands in for gunicorn's client socket: records its timeouts."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.set: list[float | None] = []

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, value: float | None) -> None:
        self.set.append(value)
        self.timeout = value


@pytest.mark.parametrize(
    ("protocol", "before", "body_timeout", "set"),
    [
        ("HTTP/1.1", None, 5.0, [5.0, None]),  # bounded while reading, then as it was
        ("HTTP/1.0", 2.0, 5.0, [2.0, 2.0]),  # a shorter timeout of the server's stays
        ("HTTP/1.1", None, None, []),
        ("HTTP/2.0", None, 5.0, []),  # a connection shared by streams is left alone
    ],
)
def test_body_timeout_bounds_reads_from_the_client_socket(
    protocol: str, before: float | None, body_timeout: float | None, set: list[float | None]
) -> None:
    sock = ClientSocket(before)
    environ = signed_environ(SERVER_PROTOCOL=protocol, **{"gunicorn.socket": sock})
    status, _, _ = call_app(wsgi_app(endpoint(), body_timeout=body_timeout), environ)
    assert status == "200 OK"
    assert sock.set == set
    assert sock.timeout == before


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({}, "200 OK"),
        ({"RAW_URI": "/elsewhere"}, "404 Not Found"),
        ({"CONTENT_LENGTH": "100000"}, "400 Bad Request"),
    ],
)
def test_app_passes_the_pep_3333_validator(extra: dict[str, Any], status: str) -> None:
    environ = signed_environ(QUERY_STRING="", **extra)
    setup_testing_defaults(environ)
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(status)
        return lambda data: None

    result = validator(wsgi_app(endpoint()))(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()  # type: ignore[attr-defined]
    assert seen == [status]
    assert body
