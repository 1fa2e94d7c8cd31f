"""The AWS Lambda adapter: each event source brings a signed Run to the core as it was sent.

Events start from the templates in tests/data/lambda_events (see its README); a signed
request is written into a copy the way each platform maps an HTTP request into its event
(REST APIs keep the stage in requestContext.path, HTTP APIs decode rawPath, ALB keeps the
last value of a repeated header, ...).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dispatchlet import Endpoint, Request, Response
from dispatchlet.adapters import aws_lambda
from dispatchlet.adapters.aws_lambda import UnsupportedEvent, event_source, lambda_handler
from dispatchlet.core import values
from dispatchlet.core.connect import JSON, PROTO, RUN_PATH
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    PUBLIC_KEY,
    connect_error,
    http_request,
    independently_signed,
    output,
    run_request,
    signed,
)

EVENTS = Path(__file__).parent / "data" / "lambda_events"


@dataclass
class Context:
    """The attributes of the Lambda context object the adapter reads."""

    aws_request_id: str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
    function_name: str = "dispatch-functions"


ROOT = Path(__file__).resolve().parent.parent
CONTEXT = Context()


class RecordingEndpoint(Endpoint):
    """An Endpoint that keeps every request its core was given."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("verification_key", PUBLIC_KEY)
        super().__init__(**options)
        self.seen: list[Request] = []
        self.function(name="echo")(lambda value: value)

    def handle(self, request: Request) -> Response:
        self.seen.append(request)
        return super().handle(request)


def template(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return event


# --- the platforms: a request as the client sent it, written into each source's event ----


def wire_headers(request: Request) -> list[tuple[str, str]]:
    return [("Host", request.authority), *request.headers]


def merged(existing: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """The template's headers with the request's in place of any of the same name."""
    names = {name.lower() for name in added}
    return {**{k: v for k, v in existing.items() if k.lower() not in names}, **added}


def lists(request: Request, lower: bool = False) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in wire_headers(request):
        grouped.setdefault(name.lower() if lower else name, []).append(value)
    return grouped


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def rest_event(request: Request, *, stage: str = "prod") -> dict[str, Any]:
    event = template("rest-api")
    context = event["requestContext"]
    event["httpMethod"] = context["httpMethod"] = request.method
    context.update(path=request.path, stage=stage, domainName=request.authority)
    # ``path`` is the resource path: the stage the caller addressed is not in it.
    prefix = f"/{stage}"
    event["path"] = request.path.removeprefix(prefix) if stage else request.path
    grouped = lists(request)
    event["multiValueHeaders"] = merged(event["multiValueHeaders"], grouped)
    event["headers"] = merged(event["headers"], {n: v[-1] for n, v in grouped.items()})
    event.update(body=b64(request.body), isBase64Encoded=True)
    return event


def http_api_event(
    request: Request, *, stage: str = "$default", name: str = "http-api"
) -> dict[str, Any]:
    event = template(name)
    context = event["requestContext"]
    # HTTP APIs give the path percent-decoded; Function URLs as sent.
    path = unquote(request.path) if name == "http-api" else request.path
    event["rawPath"] = context["http"]["path"] = path
    context["http"]["method"] = request.method
    context.update(stage=stage, domainName=request.authority)
    context["domainPrefix"] = request.authority.split(".")[0]
    event["rawQueryString"] = request.query
    joined = {n: ",".join(v) for n, v in lists(request, lower=True).items()}
    event["headers"] = merged(event["headers"], joined)
    event.update(body=b64(request.body), isBase64Encoded=True)
    return event


def function_url_event(request: Request) -> dict[str, Any]:
    return http_api_event(request, name="function-url")


def alb_event(request: Request, *, multi: bool = False) -> dict[str, Any]:
    event = template("alb-multi-value-headers" if multi else "alb")
    event.update(httpMethod=request.method, path=request.path)
    grouped = lists(request, lower=True)
    if multi:
        event["multiValueHeaders"] = merged(event["multiValueHeaders"], grouped)
    else:
        event["headers"] = merged(event["headers"], {n: v[-1] for n, v in grouped.items()})
    event.update(body=b64(request.body), isBase64Encoded=True)
    return event


def lattice_v1_event(request: Request) -> dict[str, Any]:
    event = template("vpc-lattice-v1")
    query = f"?{request.query}" if request.query else ""
    event.update(raw_path=request.path + query, method=request.method)
    joined = {n: ",".join(v) for n, v in lists(request, lower=True).items()}
    event["headers"] = merged(event["headers"], joined)
    event.update(body=b64(request.body), is_base64_encoded=True)
    return event


def lattice_v2_event(request: Request) -> dict[str, Any]:
    event = template("vpc-lattice-v2")
    event.update(path=request.path, method=request.method)
    event["headers"] = merged(event["headers"], lists(request, lower=True))
    event.update(body=b64(request.body), isBase64Encoded=True)
    return event


@dataclass(frozen=True)
class Source:
    name: str
    event: Callable[[Request], dict[str, Any]]
    authority: str
    path: str = RUN_PATH
    keys: frozenset[str] = field(
        default=frozenset({"statusCode", "headers", "body", "isBase64Encoded"})
    )


WITH_DESCRIPTION = frozenset(
    {"statusCode", "statusDescription", "headers", "body", "isBase64Encoded"}
)
FUNCTION_URL_DOMAIN = "abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-west-2.on.aws"
LATTICE_DOMAIN = "svc-0a40eebed65f8d69c.7d67968.vpc-lattice-svcs.us-east-2.on.aws"
ALB_DOMAIN = "lambda-alb-123578498.us-east-2.elb.amazonaws.com"

SOURCES = {
    "rest-api": Source(
        "rest-api", rest_event, "1234567890.execute-api.us-east-1.amazonaws.com", "/prod" + RUN_PATH
    ),
    "http-api": Source("http-api", http_api_event, "api-id.execute-api.us-east-1.amazonaws.com"),
    "function-url": Source("function-url", function_url_event, FUNCTION_URL_DOMAIN),
    "alb": Source("alb", alb_event, ALB_DOMAIN, keys=WITH_DESCRIPTION),
    "alb-multi-value-headers": Source(
        "alb",
        lambda r: alb_event(r, multi=True),
        ALB_DOMAIN,
        keys=WITH_DESCRIPTION - {"headers"} | {"multiValueHeaders"},
    ),
    "vpc-lattice-v1": Source(
        "vpc-lattice-v1", lattice_v1_event, LATTICE_DOMAIN, keys=WITH_DESCRIPTION
    ),
    "vpc-lattice-v2": Source(
        "vpc-lattice-v2", lattice_v2_event, LATTICE_DOMAIN, keys=WITH_DESCRIPTION
    ),
}


def signed_run(source: Source, value: Any = "hi", *, path: str | None = None) -> Request:
    request = http_request(run_request("echo", value), path=path or source.path)
    return signed(replace(request, authority=source.authority))


def as_response(answer: dict[str, Any]) -> Response:
    """The HTTP response a source's answer stands for."""
    body = answer["body"]
    data = base64.b64decode(body) if answer["isBase64Encoded"] else body.encode("utf-8")
    headers = answer.get("headers", {}) or {}
    pairs = [(n, v) for n, v in headers.items()]
    pairs += [(n, v) for n, vs in answer.get("multiValueHeaders", {}).items() for v in vs]
    return Response(answer["statusCode"], pairs, data)


def lowered(headers: Any) -> Counter[tuple[str, str]]:
    return Counter((name.lower(), value) for name, value in headers)


# --- every source ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCES)
def test_signed_run_reaches_the_core_as_sent(name: str) -> None:
    source = SOURCES[name]
    endpoint = RecordingEndpoint()
    request = signed_run(source)
    event = source.event(request)
    assert event_source(event).name == source.name

    answer = lambda_handler(endpoint)(event, CONTEXT)

    (seen,) = endpoint.seen
    assert (seen.method, seen.path, seen.authority) == ("POST", request.path, request.authority)
    assert seen.body == request.body
    assert lowered(wire_headers(request)) <= lowered(seen.headers)
    assert set(answer) == source.keys
    assert answer["isBase64Encoded"] is True
    assert output(as_response(answer)) == "hi"
    if "statusDescription" in source.keys:
        assert answer["statusDescription"] == "200 OK"


@pytest.mark.parametrize("name", ["rest-api", "function-url", "alb-multi-value-headers"])
def test_independently_signed_run_verifies(name: str) -> None:
    source = SOURCES[name]
    body = run_request("echo", "interop").SerializeToString()
    request = independently_signed(body, path=source.path, authority=source.authority)
    answer = lambda_handler(RecordingEndpoint())(source.event(request), CONTEXT)
    assert output(as_response(answer)) == "interop"


# --- paths that break signatures in the field --------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("rest-api", "/prod/caf%C3%A9/a%2Fb" + RUN_PATH),
        ("function-url", "/caf%C3%A9/a%2Fb%20c" + RUN_PATH),
        ("alb", "/a%2Fb/%7Euser" + RUN_PATH),
        ("vpc-lattice-v2", "/x%3By" + RUN_PATH),
    ],
)
def test_percent_encoded_path_is_kept_as_sent(name: str, path: str) -> None:
    source = SOURCES[name]
    endpoint = RecordingEndpoint()
    request = signed_run(source, path=path)
    answer = lambda_handler(endpoint)(source.event(request), CONTEXT)
    assert endpoint.seen[0].path == path
    assert output(as_response(answer)) == "hi"


def test_rest_api_path_keeps_its_stage() -> None:
    source = SOURCES["rest-api"]
    endpoint = RecordingEndpoint()
    event = source.event(signed_run(source))
    assert event["path"] == RUN_PATH  # what API Gateway calls the path: no stage
    answer = lambda_handler(endpoint)(event, CONTEXT)
    assert endpoint.seen[0].path == "/prod" + RUN_PATH
    assert answer["statusCode"] == 200


def test_http_api_named_stage_is_part_of_the_path() -> None:
    source = SOURCES["http-api"]
    endpoint = RecordingEndpoint()
    request = signed_run(source, path="/live" + RUN_PATH)
    answer = lambda_handler(endpoint)(http_api_event(request, stage="live"), CONTEXT)
    assert endpoint.seen[0].path == "/live" + RUN_PATH
    assert output(as_response(answer)) == "hi"


def test_http_api_decoded_path_is_encoded_again() -> None:
    source = SOURCES["http-api"]
    path = "/live/caf%C3%A9%20au%20lait/50%25" + RUN_PATH
    endpoint = RecordingEndpoint()
    event = http_api_event(signed_run(source, path=path), stage="live")
    assert event["rawPath"] == "/live/café au lait/50%" + RUN_PATH
    answer = lambda_handler(endpoint)(event, CONTEXT)
    assert endpoint.seen[0].path == path
    assert output(as_response(answer)) == "hi"


def test_http_api_encoded_slash_verifies_with_endpoint_url() -> None:
    # A decoded %2F cannot be told from "/": only endpoint_url restores what was signed.
    source = SOURCES["http-api"]
    path = "/live/a%2Fb" + RUN_PATH
    event = http_api_event(signed_run(source, path=path), stage="live")
    assert lambda_handler(RecordingEndpoint())(event, CONTEXT)["statusCode"] == 403
    endpoint = RecordingEndpoint(endpoint_url=f"https://{source.authority}/live/a%2Fb")
    assert output(as_response(lambda_handler(endpoint)(event, CONTEXT))) == "hi"


@pytest.mark.parametrize("name", ["rest-api", "function-url", "alb", "vpc-lattice-v1"])
def test_trailing_and_double_slashes_reach_the_core_unchanged(name: str) -> None:
    source = SOURCES[name]
    base = "/prod" if name == "rest-api" else ""
    endpoint = RecordingEndpoint()
    handler = lambda_handler(endpoint)
    doubled = signed_run(source, path=f"{base}/{RUN_PATH}")
    assert output(as_response(handler(source.event(doubled), CONTEXT))) == "hi"
    trailing = signed_run(source, path=f"{base}{RUN_PATH}/")
    answer = handler(source.event(trailing), CONTEXT)
    assert [r.path for r in endpoint.seen] == [f"{base}/{RUN_PATH}", f"{base}{RUN_PATH}/"]
    assert connect_error(as_response(answer))[:2] == (404, "not_found")  # the core's routing


CUSTOM_DOMAIN = "api.example.com"
SCHEDULER_URL = f"https://{CUSTOM_DOMAIN}/dispatch"  # base path mapping "dispatch" -> prod


@pytest.mark.parametrize(
    ("name", "authority", "path"),
    [
        # What the function may be told about a call to the custom domain, depending on
        # the mapping and on whether a CDN in front forwards the Host header.
        ("rest-api", CUSTOM_DOMAIN, "/dispatch" + RUN_PATH),
        ("rest-api", CUSTOM_DOMAIN, "/prod" + RUN_PATH),
        ("rest-api", "1234567890.execute-api.us-east-1.amazonaws.com", "/prod" + RUN_PATH),
        ("http-api", CUSTOM_DOMAIN, RUN_PATH),
        ("http-api", "api-id.execute-api.us-east-1.amazonaws.com", "/prod" + RUN_PATH),
    ],
)
def test_custom_domain_with_base_path_verifies_with_endpoint_url(
    name: str, authority: str, path: str
) -> None:
    sent = signed(
        http_request(
            run_request("echo", "hi"), path="/dispatch" + RUN_PATH, authority=CUSTOM_DOMAIN
        )
    )
    stage = "prod" if path.startswith("/prod/") else ""
    received = replace(sent, authority=authority, path=path)
    event = (
        rest_event(received, stage=stage)
        if name == "rest-api"
        else http_api_event(received, stage=stage or "$default")
    )
    answer = lambda_handler(RecordingEndpoint(endpoint_url=SCHEDULER_URL))(event, CONTEXT)
    assert output(as_response(answer)) == "hi"
    if (authority, path) != (sent.authority, sent.path):
        without = lambda_handler(RecordingEndpoint())(event, CONTEXT)
        assert connect_error(as_response(without))[:2] == (403, "permission_denied")


# --- what each source carries ------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("body", [None, "", "absent"])
def test_empty_body_in_any_form_is_empty(name: str, body: str | None) -> None:
    source = SOURCES[name]
    event = source.event(signed_run(source))
    body_key = "body"
    flag_key = "is_base64_encoded" if name == "vpc-lattice-v1" else "isBase64Encoded"
    event[flag_key] = False
    if body == "absent":
        del event[body_key]
    else:
        event[body_key] = body
    endpoint = RecordingEndpoint()
    answer = lambda_handler(endpoint)(event, CONTEXT)
    assert endpoint.seen[0].body == b""
    status, code, message = connect_error(as_response(answer))
    assert (status, code) == (400, "invalid_argument")
    assert "empty request body" in message
    assert answer["isBase64Encoded"] is False  # JSON errors travel as text


def test_repeated_headers_become_repeated_fields() -> None:
    source = SOURCES["alb-multi-value-headers"]
    request = signed_run(source)
    request = replace(request, headers=[*request.headers, ("X-Trace", "a"), ("X-Trace", "b")])
    for event in (alb_event(request, multi=True), rest_event(request)):
        endpoint = RecordingEndpoint()
        lambda_handler(endpoint)(event, CONTEXT)
        traces = [v for n, v in endpoint.seen[0].headers if n.lower() == "x-trace"]
        assert traces == ["a", "b"]


def test_http_api_joined_headers_and_cookies() -> None:
    source = SOURCES["http-api"]
    event = source.event(signed_run(source))
    event["headers"]["x-multi"] = "a,b"
    endpoint = RecordingEndpoint()
    lambda_handler(endpoint)(event, CONTEXT)
    fields = endpoint.seen[0].headers
    assert ("x-multi", "a,b") in fields
    assert ("cookie", "cookie1; cookie2") in fields  # payload 2.0 moves Cookie out


def test_header_names_are_matched_case_insensitively() -> None:
    source = SOURCES["vpc-lattice-v2"]
    event = source.event(signed_run(source))
    event["headers"] = {
        ("HOST" if k == "host" else k.upper()): v for k, v in event["headers"].items()
    }
    endpoint = RecordingEndpoint()
    answer = lambda_handler(endpoint)(event, CONTEXT)
    assert endpoint.seen[0].authority == LATTICE_DOMAIN
    assert output(as_response(answer)) == "hi"


def test_authority_falls_back_to_the_domain_name() -> None:
    source = SOURCES["function-url"]
    event = source.event(signed_run(source))
    del event["headers"]["host"]
    endpoint = RecordingEndpoint()
    assert output(as_response(lambda_handler(endpoint)(event, CONTEXT))) == "hi"
    assert endpoint.seen[0].authority == FUNCTION_URL_DOMAIN


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("http-api", "a=1&a=2&b=x%20y"),
        ("function-url", "a=1&a=2&b=x%20y"),
        ("vpc-lattice-v1", "a=1&b=x%20y"),
    ],
)
def test_raw_query_is_passed_through(name: str, query: str) -> None:
    source = SOURCES[name]
    endpoint = RecordingEndpoint()
    lambda_handler(endpoint)(source.event(replace(signed_run(source), query=query)), CONTEXT)
    assert endpoint.seen[0].query == query


def test_query_is_rebuilt_where_no_raw_one_is_kept() -> None:
    endpoint = RecordingEndpoint()
    handler = lambda_handler(endpoint)
    rest = rest_event(signed_run(SOURCES["rest-api"]))
    rest["multiValueQueryStringParameters"] = {"a": ["1", "2"], "b": ["x y"]}
    handler(rest, CONTEXT)
    alb = alb_event(signed_run(SOURCES["alb"]))
    alb["queryStringParameters"] = {"b": "x%20y"}  # ALB leaves them encoded
    handler(alb, CONTEXT)
    lattice = lattice_v2_event(signed_run(SOURCES["vpc-lattice-v2"]))
    handler(lattice, CONTEXT)
    assert [r.query for r in endpoint.seen] == [
        "a=1&a=2&b=x%20y",
        "b=x%20y",
        "order-id=1&multi=x&multi=y",
    ]


def test_json_codec_is_answered_as_text() -> None:
    source = SOURCES["function-url"]
    request = signed(
        replace(
            http_request(
                json_format.MessageToJson(run_request("echo", "hi")).encode(), content_type=JSON
            ),
            authority=source.authority,
        )
    )
    event = source.event(request)
    event.update(body=request.body.decode(), isBase64Encoded=False)  # text stays text
    answer = lambda_handler(RecordingEndpoint())(event, CONTEXT)
    assert answer["statusCode"] == 200
    assert answer["isBase64Encoded"] is False
    result = json_format.Parse(answer["body"], function_pb2.RunResponse())
    assert result.status == 1
    assert values.from_any(result.exit.result.output) == "hi"


def test_rest_api_without_binary_media_types_is_told_how_to_fix_it() -> None:
    source = SOURCES["rest-api"]
    request = signed_run(source)
    event = source.event(request)
    # Without binaryMediaTypes API Gateway hands a binary body over as (mangled) text.
    event.update(body=request.body.decode("utf-8", "replace"), isBase64Encoded=False)
    endpoint = RecordingEndpoint()
    answer = lambda_handler(endpoint)(event, CONTEXT)
    assert endpoint.seen == []
    status, code, message = connect_error(as_response(answer))
    assert (status, code) == (400, "invalid_argument")
    assert 'BinaryMediaTypes: ["*~1*"]' in message
    assert '["application/proto"]' in message
    assert set(answer) == source.keys
    assert answer["isBase64Encoded"] is False  # readable whatever the API's media types


def test_invalid_base64_body_is_400() -> None:
    source = SOURCES["alb"]
    event = source.event(signed_run(source))
    event["body"] = "not base64!"
    status, code, message = connect_error(
        as_response(lambda_handler(RecordingEndpoint())(event, CONTEXT))
    )
    assert (status, code) == (400, "invalid_argument")
    assert "base64" in message


@pytest.mark.parametrize(
    ("name", "key"),
    [("http-api", "rawPath"), ("rest-api", "body"), ("alb", "path"), ("vpc-lattice-v1", "method")],
)
def test_lone_surrogates_are_answered_not_raised(name: str, key: str) -> None:
    source = SOURCES[name]
    event = source.event(signed_run(source))
    event[key] = "/\ud800" + RUN_PATH
    event["isBase64Encoded"] = False
    answer = lambda_handler(RecordingEndpoint())(event, CONTEXT)
    assert 400 <= answer["statusCode"] < 500
    assert set(answer) == source.keys


# --- response shapes ---------------------------------------------------------------------


def test_method_not_allowed_keeps_the_core_headers() -> None:
    source = SOURCES["alb-multi-value-headers"]
    request = replace(signed_run(source), method="GET")
    answer = lambda_handler(RecordingEndpoint())(source.event(request), CONTEXT)
    assert answer["statusCode"] == 405
    assert answer["statusDescription"] == "405 Method Not Allowed"
    assert answer["multiValueHeaders"]["Allow"] == ["POST"]


def test_repeated_response_headers_per_source() -> None:
    response = Response(
        200,
        [("Content-Type", PROTO), ("X-A", "1"), ("x-a", "2"), ("Set-Cookie", "s=1")],
        b"\x00\xff",
    )
    rest = aws_lambda.RestApi().response(response, {})
    assert rest["headers"] == {"Content-Type": PROTO, "Set-Cookie": "s=1"}
    assert rest["multiValueHeaders"] == {"X-A": ["1", "2"]}
    assert (rest["body"], rest["isBase64Encoded"]) == ("AP8=", True)
    http = aws_lambda.HttpApi().response(response, {})
    assert http["headers"] == {"Content-Type": PROTO, "X-A": "1,2"}
    assert http["cookies"] == ["s=1"]
    alb = aws_lambda.Alb().response(response, {"multiValueHeaders": {}})
    assert alb["multiValueHeaders"]["X-A"] == ["1", "2"]
    lattice = aws_lambda.VpcLatticeV1().response(replace(response, status=299), {})
    assert lattice["headers"]["X-A"] == "1, 2"
    assert lattice["statusDescription"] == "299 Unknown"


# --- detection ---------------------------------------------------------------------------


def test_function_url_is_told_from_http_api_by_its_domain() -> None:
    event = function_url_event(signed_run(SOURCES["function-url"]))
    assert aws_lambda.HttpApi().matches(event)  # same payload format...
    assert event_source(event).name == "function-url"  # ...but checked first
    event["requestContext"]["domainName"] = "api.example.com"
    assert event_source(event).name == "http-api"


def test_detection_order_is_the_documented_one() -> None:
    assert [s.name for s in aws_lambda.SOURCES] == [
        "vpc-lattice-v2",
        "function-url",
        "http-api",
        "alb",
        "rest-api",
        "vpc-lattice-v1",
    ]
    # The package's docstring and the user guide both list them in this order.
    guide = (ROOT / "deploy" / "aws" / "README.md").read_text()
    for text in (aws_lambda.__doc__ or "", guide[guide.index("## How the adapter reads") :]):
        positions = [
            text.index(label)
            for label in (
                "VPC Lattice, event version 2",
                "Lambda Function URL",
                "HTTP API, payload 2.0",
                "Application Load Balancer:",
                "payload 1.0 (REST",
                "VPC Lattice, event version 1",
            )
        ]
        assert positions == sorted(positions)


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"Records": [{"eventSource": "aws:sqs"}]},
        {"version": "2.0", "rawPath": "/", "requestContext": {"routeKey": "$connect"}},
        {"httpMethod": "POST", "path": "/"},
    ],
)
def test_unrecognised_event_is_a_function_error(event: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedEvent, match="unrecognised Lambda event") as info:
        lambda_handler(RecordingEndpoint())(event, CONTEXT)
    assert "API Gateway" in str(info.value)
    assert "base64" in str(info.value)


# --- direct invocation -------------------------------------------------------------------


def direct(endpoint: Endpoint, request: function_pb2.RunRequest) -> function_pb2.RunResponse:
    answer = lambda_handler(endpoint)(b64(request.SerializeToString()), CONTEXT)
    assert isinstance(answer, str)
    return function_pb2.RunResponse.FromString(base64.b64decode(answer, validate=True))


def test_direct_invocation_round_trip() -> None:
    endpoint = RecordingEndpoint()
    result = direct(endpoint, run_request("echo", {"a": [1, 2]}))
    assert output(Response(200, [("Content-Type", PROTO)], result.SerializeToString())) == {
        "a": [1, 2]
    }
    assert endpoint.seen == []  # no HTTP, no signature: IAM decides who may invoke


def test_direct_invocation_of_an_unknown_function_is_a_run_status() -> None:
    result = direct(RecordingEndpoint(), run_request("nope", 1))
    assert result.status == 15  # NOT_FOUND, decided by the core


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not base64!", "direct invocation payload is not standard base64"),
        ("é", "direct invocation payload is not standard base64"),
        ("YQ", "direct invocation payload is not standard base64"),  # missing padding
        (b64(b"\xff\xff\xff"), "is not a serialized dispatch.sdk.v1.RunRequest"),
        (b64(b"\x0a\x05ab"), "is not a serialized dispatch.sdk.v1.RunRequest"),
        (42, "unsupported Lambda event of type int"),
        (None, "unsupported Lambda event of type NoneType"),
        ([b64(b"")], "unsupported Lambda event of type list"),
    ],
)
def test_malformed_direct_payload_names_what_was_expected(payload: Any, message: str) -> None:
    with pytest.raises(UnsupportedEvent, match=message) as info:
        lambda_handler(RecordingEndpoint())(payload, CONTEXT)
    assert "RunRequest" in str(info.value)


# --- fuzzing -----------------------------------------------------------------------------


FUZZ_ENDPOINTS = (RecordingEndpoint(max_body_size=4096), RecordingEndpoint(insecure=True))
# Any code point, lone surrogates too: JSON events can carry "\ud800".
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
header_maps = st.dictionaries(
    st.sampled_from(["host", "Content-Type", "signature", "x-forwarded-proto"])
    | st.text(max_size=10),
    texts | st.lists(texts, max_size=3) | json_values,
    max_size=5,
)
bodies = st.none() | texts | st.binary(max_size=60).map(b64) | json_values
FUZZED_KEYS = {
    "headers": header_maps,
    "multiValueHeaders": header_maps,
    "body": bodies,
    "isBase64Encoded": st.none() | st.booleans() | st.text(max_size=5),
    "is_base64_encoded": st.none() | st.booleans(),
    "path": st.none() | texts | json_values,
    "rawPath": st.none() | texts | json_values,
    "raw_path": st.none() | texts,
    "httpMethod": st.sampled_from(["POST", "GET"]) | json_values,
    "method": st.sampled_from(["POST", "PUT"]) | json_values,
    "cookies": json_values,
    "rawQueryString": json_values,
    "queryStringParameters": json_values,
    "multiValueQueryStringParameters": json_values,
    "requestContext": json_values,
    "version": st.sampled_from(["2.0", "1.0"]) | json_values,
}


def fuzzed_answer(event: dict[str, Any], insecure: bool) -> dict[str, Any] | None:
    """The handler's answer to ``event``, or None when no source recognises it any more
    (the handler must then raise UnsupportedEvent)."""
    handler = lambda_handler(FUZZ_ENDPOINTS[insecure])
    if not any(s.matches(event) for s in aws_lambda.SOURCES):
        with pytest.raises(UnsupportedEvent):
            handler(event, CONTEXT)
        return None
    answer: dict[str, Any] = handler(event, CONTEXT)
    return answer


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)
@given(
    name=st.sampled_from(sorted(SOURCES)),
    changes=st.dictionaries(st.sampled_from(sorted(FUZZED_KEYS)), st.none(), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: FUZZED_KEYS[k] for k in keys})
    ),
    removed=st.lists(st.sampled_from(sorted(FUZZED_KEYS)), max_size=2),
    insecure=st.booleans(),
)
def test_arbitrary_events_get_a_well_shaped_answer(
    name: str, changes: dict[str, Any], removed: list[str], insecure: bool
) -> None:
    """A 200 or 4xx in the source's shape, or UnsupportedEvent when the event no longer
    carries the marks of any source; never another exception, never a 5xx."""
    source = SOURCES[name]
    event = source.event(signed_run(source))
    event.update(changes)
    for key in removed:
        event.pop(key, None)
    answer = fuzzed_answer(event, insecure)
    if answer is None:
        return
    detected = event_source(event).name
    expected = next(s.keys for s in SOURCES.values() if s.name == detected)
    if detected == "alb":
        multi = "multiValueHeaders" in event
        expected = SOURCES["alb-multi-value-headers" if multi else "alb"].keys
    assert set(answer) == expected
    assert answer["statusCode"] == 200 or 400 <= answer["statusCode"] < 500, answer
    assert isinstance(answer["body"], str)
    assert isinstance(answer["isBase64Encoded"], bool)
    as_response(answer)  # the body decodes as it says


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value nested in a JSON event, containers included."""
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        items: Any = value.items()
    else:
        items = enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(leaf_paths(child, (*prefix, key)))
    return found


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)
@given(name=st.sampled_from(sorted(SOURCES)), data=st.data(), insecure=st.booleans())
def test_any_field_of_a_real_event_replaced_by_any_json_value(
    name: str, data: st.DataObject, insecure: bool
) -> None:
    """What a fuzzing campaign found: a lone surrogate in a query parameter, a field of
    the wrong type anywhere in the event. Recognised events get a 4xx, never a raise."""
    source = SOURCES[name]
    event = source.event(signed_run(source))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = leaf_paths(event)
        path = data.draw(st.sampled_from(paths))
        parent = event
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(json_values)
    answer = fuzzed_answer(event, insecure)
    if answer is not None:
        assert answer["statusCode"] == 200 or 400 <= answer["statusCode"] < 500, answer
        as_response(answer)


@pytest.mark.parametrize("name", ["rest-api", "vpc-lattice-v1", "vpc-lattice-v2"])
@pytest.mark.parametrize("where", ["name", "value"])
def test_lone_surrogate_in_a_query_parameter_is_400(name: str, where: str) -> None:
    source = SOURCES[name]
    event = source.event(signed_run(source))
    key = {"vpc-lattice-v1": "query_string_parameters"}.get(name, "queryStringParameters")
    params = {"q\ud800": "x"} if where == "name" else {"q": "\ud800"}
    event[key] = params
    if name == "rest-api":
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in params.items()}
    answer = lambda_handler(RecordingEndpoint())(event, CONTEXT)
    status, code, message = connect_error(as_response(answer))
    assert (status, code) == (400, "invalid_argument")
    assert "not valid text" in message


@settings(max_examples=200, deadline=None)
@given(payload=st.text(max_size=40) | st.binary(max_size=40).map(b64))
def test_arbitrary_direct_payloads_answer_or_name_what_was_expected(payload: str) -> None:
    handler = lambda_handler(FUZZ_ENDPOINTS[0])
    try:
        answer = handler(payload, CONTEXT)
    except UnsupportedEvent:
        with pytest.raises(UnsupportedEvent, match="RunRequest"):
            handler(payload, CONTEXT)
    else:
        function_pb2.RunResponse.FromString(base64.b64decode(answer))


# --- logs and metrics --------------------------------------------------------------------


def test_each_invocation_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatchlet.aws_lambda")
    endpoint = RecordingEndpoint()
    handler = lambda_handler(endpoint, metrics=False)
    handler(b64(run_request("echo", 1).SerializeToString()), CONTEXT)
    source = SOURCES["function-url"]
    handler(source.event(replace(signed_run(source), method="GET")), CONTEXT)
    records = [r for r in caplog.records if r.name == "dispatchlet.aws_lambda"]
    assert [(r.event_source, r.status, r.cold_start) for r in records] == [  # type: ignore[attr-defined]
        ("direct", "OK", True),
        ("function-url", "405", False),
    ]
    for record in records:
        assert record.function_request_id == CONTEXT.aws_request_id  # type: ignore[attr-defined]
        assert record.function_name == CONTEXT.function_name  # type: ignore[attr-defined]
        assert record.duration_ms >= 0  # type: ignore[attr-defined]


def test_powertools_logger_writes_structured_lines(capsys: pytest.CaptureFixture[str]) -> None:
    powertools = pytest.importorskip("aws_lambda_powertools")
    handler = lambda_handler(RecordingEndpoint(), logger=powertools.Logger(service="dispatch"))
    source = SOURCES["rest-api"]
    handler(source.event(signed_run(source)), CONTEXT)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "200"
    assert line["function_request_id"] == CONTEXT.aws_request_id
    assert line["cold_start"] is True
    assert line["service"] == "dispatch"


def emf_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_metrics_count_runs_by_status(
    how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("aws_lambda_powertools")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "dispatch-test")
    if how == "environment":
        monkeypatch.setenv("DISPATCHLET_METRICS", "1")
    handler = lambda_handler(RecordingEndpoint(), metrics=True if how == "argument" else None)
    handler(b64(run_request("nope").SerializeToString()), CONTEXT)
    source = SOURCES["vpc-lattice-v2"]
    handler(source.event(signed_run(source)), CONTEXT)
    metrics = emf_lines(capsys.readouterr().out)
    assert [m["status"] for m in metrics] == ["NOT_FOUND", "200"]
    for metric in metrics:
        (directive,) = metric["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "dispatch-test"
        assert ["status", "service"] in directive["Dimensions"]
        assert {m["Name"] for m in directive["Metrics"]} == {"Runs", "Latency"}
        assert metric["Runs"] == [1.0]


def test_metrics_off_by_argument_despite_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISPATCHLET_METRICS", "1")
    handler = lambda_handler(RecordingEndpoint(), metrics=False)
    handler(b64(run_request("echo", 1).SerializeToString()), CONTEXT)
    assert emf_lines(capsys.readouterr().out) == []


def test_without_powertools_logs_work_and_metrics_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("aws_lambda_powertools", "aws_lambda_powertools.metrics"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RuntimeError, match=r"pip install 'dispatchlet\[lambda\]'"):
        lambda_handler(RecordingEndpoint(), metrics=True)
    caplog.set_level(logging.INFO, logger="dispatchlet.aws_lambda")
    answer = lambda_handler(RecordingEndpoint())(
        b64(run_request("echo", 1).SerializeToString()), CONTEXT
    )
    assert isinstance(answer, str)
    assert any(r.name == "dispatchlet.aws_lambda" for r in caplog.records)


# --- imports -----------------------------------------------------------------------------


def powertools_installed() -> bool:
    try:
        import aws_lambda_powertools  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_adapter_never_imports_boto3_botocore_or_flask(tmp_path: Path) -> None:
    # Importable stand-ins (the Lambda runtime ships boto3 and botocore): any import of
    # them by the adapter, or by what it imports, would show in sys.modules.
    for name in ("boto3", "botocore", "flask"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    source = SOURCES["function-url"]
    (tmp_path / "event.json").write_text(json.dumps(source.event(signed_run(source))))
    code = textwrap.dedent(
        f"""
        import json, sys
        from dispatchlet import Endpoint
        from dispatchlet.adapters.aws_lambda import lambda_handler
        endpoint = Endpoint()
        endpoint.function(lambda value: value, name="echo")
        endpoint.function(lambda: None, name="nightly", schedule="0 9 * * *")
        handler = lambda_handler(endpoint, metrics={powertools_installed()})
        with open(sys.argv[1]) as file:
            answer = handler(json.load(file), None)
        assert answer["statusCode"] == 200, answer
        loaded = sorted({{"boto3", "botocore", "flask"}} & set(sys.modules))
        assert not loaded, loaded
        # Nor the client or the scheduler, their HTTP libraries, and the cron parser
        # (a schedule= of @endpoint.function is only kept, for a sync): serving needs none.
        unused = {{
            "dispatchlet.client", "dispatchlet.scheduler", "aiohttp", "http.client", "croniter"
        }}
        loaded = sorted(unused & set(sys.modules))
        assert not loaded, loaded
        import botocore  # still there for the application
        print("served")
        """
    )
    raw = PUBLIC_KEY.public_bytes(Encoding.Raw, PublicFormat.Raw)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "DISPATCH_VERIFICATION_KEY": b64(raw),
    }
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "event.json")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("served")


# --- pickles on the unsigned path -----------------------------------------------------


UNPICKLED: list[str] = []


def record_unpickling(what: str) -> None:
    UNPICKLED.append(what)


class Unpickled:
    """Unpickling it records that it happened: what a malicious pickle would exploit."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (record_unpickling, ("unpickled",))


def test_direct_invocation_refuses_pickles_even_with_allow_pickle() -> None:
    endpoint = Endpoint(insecure=True, allow_pickle=True)
    endpoint.function(lambda value: "ran", name="take")
    request = run_request("take")
    request.input.CopyFrom(values.to_any(Unpickled(), allow_pickle=True))
    UNPICKLED.clear()
    result = direct(endpoint, request)
    assert result.status == 4  # INVALID_ARGUMENT
    assert "allow_unsigned_pickle" in result.exit.result.error.message
    assert UNPICKLED == []


def test_direct_invocation_unpickles_with_the_explicit_opt_in() -> None:
    endpoint = Endpoint(insecure=True, allow_pickle=True, allow_unsigned_pickle=True)
    endpoint.function(lambda value: "ran", name="take")
    request = run_request("take")
    request.input.CopyFrom(values.to_any(Unpickled(), allow_pickle=True))
    UNPICKLED.clear()
    result = direct(endpoint, request)
    assert result.status == 1
    assert UNPICKLED == ["unpickled"]


FUNCTION_URL_PATTERN = re.compile(r"\.lambda-url\.[a-z0-9-]+\.on\.aws\Z")


@given(
    domain=st.lists(
        st.sampled_from(["lambda-url", "on", "aws", "us-east-1", "x", "", "US", "a.b", "-"]),
        max_size=6,
    ).map(".".join)
    | st.text(st.sampled_from("al.-ambdurlonws1"), max_size=30)
)
def test_function_url_domains_are_told_as_the_documented_pattern_says(domain: str) -> None:
    from dispatchlet.adapters.aws_lambda.api_gateway import is_function_url_domain

    assert is_function_url_domain(domain) == (FUNCTION_URL_PATTERN.search(domain) is not None)
