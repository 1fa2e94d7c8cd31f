"""Endpoint.handle and Endpoint.run: routing, errors, codecs and running functions."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import (
    Endpoint,
    Function,
    InvalidArgument,
    RunContext,
    Status,
    TailCall,
    TemporaryError,
    Throttled,
    register_error_status,
)
from dispatchlet.core import values
from dispatchlet.core.connect import JSON, RUN_PATH
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from google.protobuf import json_format, timestamp_pb2
from support import (
    PUBLIC_KEY,
    call,
    connect_error,
    http_request,
    output,
    run_request,
    run_response,
    signed,
)


@pytest.fixture
def endpoint() -> Endpoint:
    ep = Endpoint(verification_key=PUBLIC_KEY)

    @ep.function
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    @ep.function
    def add(a: int, b: int = 0) -> int:
        return a + b

    return ep


# Routing and HTTP errors, each with its exact status and Connect code.


def test_unknown_path_is_404(endpoint: Endpoint) -> None:
    request = signed(
        http_request(run_request("greet", "x"), path="/dispatch.sdk.v1.FunctionService/Nope")
    )
    assert connect_error(endpoint.handle(request))[:2] == (404, "not_found")


def test_trailing_slash_is_not_the_rpc(endpoint: Endpoint) -> None:
    request = signed(http_request(run_request("greet", "x"), path=RUN_PATH + "/"))
    assert endpoint.handle(request).status == 404


def test_stage_prefix_is_routed(endpoint: Endpoint) -> None:
    request = signed(http_request(run_request("greet", "x"), path="/prod" + RUN_PATH))
    assert output(endpoint.handle(request)) == "Hello, x!"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "HEAD"])
def test_other_methods_are_405(endpoint: Endpoint, method: str) -> None:
    response = endpoint.handle(signed(http_request(run_request("greet", "x"), method=method)))
    assert connect_error(response)[0] == 405
    assert response.header("allow") == "POST"


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/grpc", "application/protobuf"]
)
def test_other_content_types_are_415(endpoint: Endpoint, content_type: str | None) -> None:
    request = http_request(run_request("greet", "x"), content_type=content_type)
    response = endpoint.handle(request if content_type is None else signed(request))
    assert connect_error(response)[0] == 415
    assert response.header("accept-post") == "application/proto, application/json"


def test_content_type_parameters_are_accepted(endpoint: Endpoint) -> None:
    request = signed(
        http_request(run_request("greet", "x"), content_type="Application/Proto; charset=binary")
    )
    assert endpoint.handle(request).status == 200


def test_compressed_body_is_415(endpoint: Endpoint) -> None:
    request = signed(
        http_request(run_request("greet", "x"), headers=[("Content-Encoding", "gzip")])
    )
    assert connect_error(endpoint.handle(request))[0] == 415


def test_empty_body_is_400(endpoint: Endpoint) -> None:
    assert connect_error(endpoint.handle(signed(http_request(b""))))[:2] == (
        400,
        "invalid_argument",
    )


def test_undecodable_body_is_400(endpoint: Endpoint) -> None:
    response = endpoint.handle(signed(http_request(b"\xff\xff\xff\xff")))
    assert connect_error(response)[:2] == (400, "invalid_argument")


def test_undecodable_json_is_400(endpoint: Endpoint) -> None:
    for body in (b"{", b"[]", b'{"function": 3}', b'{"input": {"@type": "nope/x"}}'):
        response = endpoint.handle(signed(http_request(body, content_type=JSON)))
        assert connect_error(response)[:2] == (400, "invalid_argument"), body


def test_missing_function_name_is_400(endpoint: Endpoint) -> None:
    response = endpoint.handle(signed(http_request(run_request("", "x"))))
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument")
    assert "function name" in message


def test_invalid_function_name_is_400(endpoint: Endpoint) -> None:
    response = endpoint.handle(signed(http_request(run_request("no spaces", "x"))))
    assert connect_error(response)[:2] == (400, "invalid_argument")


def test_body_over_limit_is_400() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY, max_body_size=100)
    ep.function(lambda value: value, name="echo")
    response = ep.handle(signed(http_request(run_request("echo", "x" * 200))))
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument")
    assert "100 bytes" in message


def test_too_many_headers_is_400(endpoint: Endpoint) -> None:
    headers = [(f"x-h{i}", "v") for i in range(200)]
    request = signed(http_request(run_request("greet", "x"), headers=headers))
    assert connect_error(endpoint.handle(request))[0] == 400


def test_missing_host_is_400(endpoint: Endpoint) -> None:
    request = replace(signed(http_request(run_request("greet", "x"))), authority="")
    assert connect_error(endpoint.handle(request))[:2] == (400, "invalid_argument")


def test_unknown_function_is_404(endpoint: Endpoint) -> None:
    status, code, message = connect_error(call(endpoint, "nope", "x"))
    assert (status, code) == (404, "not_found")
    assert "nope" in message


def test_error_messages_are_real_json() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)
    response = ep.handle(signed(http_request(run_request('say "hi"\\', "x"))))
    _, _, message = connect_error(response)
    assert 'say "hi"\\' in message


# Secure by default.


def test_no_key_refuses_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCH_VERIFICATION_KEY", raising=False)
    ep = Endpoint()
    ep.function(lambda value: value, name="echo")
    for request in (
        http_request(run_request("echo", 1)),
        signed(http_request(run_request("echo", 1))),
    ):
        status, code, message = connect_error(ep.handle(request))
        assert (status, code) == (401, "unauthenticated")
        assert "DISPATCH_VERIFICATION_KEY" in message


def start_warnings(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "dispatchlet" and "DISPATCH_VERIFICATION_KEY" in r.getMessage()
    ]


def test_an_adapter_built_without_a_key_warns_once_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dispatchlet.adapters.aws_lambda import lambda_handler
    from dispatchlet.adapters.cloud_functions import cloud_function
    from dispatchlet.adapters.wsgi import wsgi_app

    monkeypatch.delenv("DISPATCH_VERIFICATION_KEY", raising=False)
    for build, refused in (
        (wsgi_app, "every request will be refused with 401"),
        (cloud_function, "every request will be refused with 401"),
        (lambda_handler, "every HTTP event (Function URL, API Gateway, ALB, VPC Lattice)"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dispatchlet"):
            ep = Endpoint()
            assert start_warnings(caplog.records) == []  # a key may still be set
            build(ep)  # type: ignore[operator]
            build(ep)  # type: ignore[operator]
        (warning,) = start_warnings(caplog.records)
        assert refused in warning
        assert "scheduler's public key" in warning
        assert "dispatchlet scheduler" in warning


def test_no_start_warning_with_a_key_or_insecure_or_turned_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dispatchlet.adapters.wsgi import wsgi_app

    monkeypatch.delenv("DISPATCH_VERIFICATION_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="dispatchlet"):
        wsgi_app(Endpoint(verification_key=PUBLIC_KEY))
        wsgi_app(Endpoint(insecure=True))
        later = Endpoint()
        later.set_verification_key(PUBLIC_KEY)  # as the command line does
        wsgi_app(later)
        monkeypatch.setattr(Endpoint, "warn_without_key", False)
        wsgi_app(Endpoint())
    assert start_warnings(caplog.records) == []


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatchlet.core.keys import public_key_pem

    monkeypatch.setenv("DISPATCH_VERIFICATION_KEY", public_key_pem(PUBLIC_KEY).replace("\n", "\\n"))
    ep = Endpoint()
    ep.function(lambda value: value, name="echo")
    assert output(call(ep, "echo", 5)) == 5


def test_endpoint_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_ENDPOINT_URL", "https://public.example.com")
    ep = Endpoint(verification_key=PUBLIC_KEY)
    assert ep.endpoint_url == "https://public.example.com"


def test_insecure_serves_unsigned_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCH_VERIFICATION_KEY", raising=False)
    ep = Endpoint(insecure=True)
    ep.function(lambda value: value, name="echo")
    assert output(ep.handle(http_request(run_request("echo", 7)))) == 7


# Codecs.


def test_json_codec_in_and_out(endpoint: Endpoint) -> None:
    body = json_format.MessageToJson(run_request("greet", "json")).encode()
    response = endpoint.handle(signed(http_request(body, content_type=JSON)))
    assert response.status == 200
    assert response.header("content-type") == JSON
    message = json_format.Parse(response.body, function_pb2.RunResponse())
    assert message.status == Status.OK
    assert values.from_any(message.exit.result.output) == "Hello, json!"
    assert json.loads(response.body)["status"] == "STATUS_OK"


def test_json_codec_hand_written(endpoint: Endpoint) -> None:
    body = json.dumps(
        {
            "function": "add",
            "input": {
                "@type": "type.googleapis.com/google.protobuf.Value",
                "value": {"a": 2, "b": 3},
            },
        }
    ).encode()
    response = endpoint.handle(signed(http_request(body, content_type=JSON)))
    message = json.loads(response.body)
    assert message["exit"]["result"]["output"] == {
        "@type": "type.googleapis.com/google.protobuf.Int64Value",
        "value": "5",
    }


# Functions: registration and the input rule.


def test_duplicate_names_are_refused(endpoint: Endpoint) -> None:
    with pytest.raises(ValueError, match="already registered"):

        @endpoint.function(name="greet")
        def other(name: str) -> str:
            return name


def test_custom_name_and_plain_call(endpoint: Endpoint) -> None:
    @endpoint.function(name="math.double")
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8  # still callable as itself
    assert double.name == "math.double"
    assert output(call(endpoint, "math.double", 21)) == 42


def test_async_function(endpoint: Endpoint) -> None:
    @endpoint.function
    async def slow_greet(name: str) -> str:
        await asyncio.sleep(0)
        return f"hi {name}"

    assert output(call(endpoint, "slow_greet", "a")) == "hi a"
    assert output(call(endpoint, "slow_greet", "b")) == "hi b"


def test_async_function_times_out_at_expiration(endpoint: Endpoint) -> None:
    @endpoint.function
    async def sleepy() -> None:
        await asyncio.sleep(60)

    deadline = timestamp_pb2.Timestamp()
    deadline.FromNanoseconds(time.time_ns() + 200_000_000)
    started = time.monotonic()
    result = run_response(call(endpoint, "sleepy", expiration_time=deadline))
    assert result.status == Status.TIMEOUT
    assert time.monotonic() - started < 30  # at its expiration, not when it would return


def test_several_parameters_by_name_or_position(endpoint: Endpoint) -> None:
    assert output(call(endpoint, "add", {"a": 1, "b": 2})) == 3
    assert output(call(endpoint, "add", [4, 5])) == 9
    assert output(call(endpoint, "add", {"a": 1})) == 1


@pytest.mark.parametrize(
    ("function", "value", "fragment"),
    [
        ("greet", 42, "parameter 'name' expects str, got int"),
        ("add", {"a": "x"}, "parameter 'a' expects int, got str"),
        ("add", {"b": 1}, "'a'"),
        ("add", {"a": 1, "c": 2}, "'c'"),
        ("add", "text", "object of named parameters or a list"),
        ("add", [1, 2, 3], "too many"),
    ],
)
def test_wrong_input_is_invalid_argument(
    endpoint: Endpoint, function: str, value: object, fragment: str
) -> None:
    result = run_response(call(endpoint, function, value))
    assert result.status == Status.INVALID_ARGUMENT
    assert fragment in result.exit.result.error.message


def test_missing_input_for_required_parameter(endpoint: Endpoint) -> None:
    result = run_response(call(endpoint, "greet"))
    assert result.status == Status.INVALID_ARGUMENT
    assert "'name'" in result.exit.result.error.message


def test_no_parameters() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)

    @ep.function
    def ping() -> str:
        return "pong"

    assert output(call(ep, "ping")) == "pong"
    assert output(call(ep, "ping", None)) == "pong"
    assert run_response(call(ep, "ping", 3)).status == Status.INVALID_ARGUMENT


def test_optional_and_container_annotations() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)

    @ep.function
    def total(items: list[int], scale: float | None = None) -> float:
        return sum(items) * (scale or 1)

    assert output(call(ep, "total", {"items": [1, 2, 3], "scale": 2})) == 12
    result = run_response(call(ep, "total", {"items": [1, "2"]}))
    assert result.status == Status.INVALID_ARGUMENT
    assert "list[int]" in result.exit.result.error.message


def test_protobuf_message_input_and_output() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)

    @ep.function
    def retarget(c: call_pb2.Call) -> call_pb2.Call:
        return call_pb2.Call(function=c.function + "_v2", correlation_id=c.correlation_id + 1)

    request = run_request("retarget")
    request.input.Pack(call_pb2.Call(function="f", correlation_id=41))
    response = run_response(ep.handle(signed(http_request(request))))
    out = call_pb2.Call()
    assert response.exit.result.output.Unpack(out)
    assert (out.function, out.correlation_id) == ("f_v2", 42)
    assert response.exit.result.output.type_url == "type.googleapis.com/dispatch.sdk.v1.Call"


# Errors and statuses.


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (TimeoutError("slow"), Status.TIMEOUT),
        (ConnectionRefusedError("nope"), Status.TCP_ERROR),
        (socket.gaierror(-2, "Name or service not known"), Status.DNS_ERROR),
        (ssl.SSLError("bad cert"), Status.TLS_ERROR),
        (PermissionError("denied"), Status.PERMISSION_DENIED),
        (FileNotFoundError("gone"), Status.NOT_FOUND),
        (ValueError("bad"), Status.INVALID_ARGUMENT),
        (TypeError("bad"), Status.INVALID_ARGUMENT),
        (KeyError("k"), Status.PERMANENT_ERROR),
        (RuntimeError("boom"), Status.PERMANENT_ERROR),
        (TemporaryError("later"), Status.TEMPORARY_ERROR),
        (Throttled("slow down"), Status.THROTTLED),
        (InvalidArgument("no"), Status.INVALID_ARGUMENT),
    ],
)
def test_exceptions_become_statuses(exc: Exception, status: Status) -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)

    @ep.function
    def fail() -> None:
        raise exc

    response = call(ep, "fail")
    result = run_response(response)  # a function that raised is still HTTP 200
    assert result.status == status
    error = result.exit.result.error
    assert error.type == type(exc).__qualname__ or error.type.endswith(type(exc).__qualname__)
    assert error.message == str(exc)
    assert b"raise exc" in error.traceback


def test_registered_error_types() -> None:
    class QuotaExceeded(Exception):
        pass

    class HttpFailure(Exception):
        def __init__(self, code: int) -> None:
            super().__init__(f"HTTP {code}")
            self.code = code

    register_error_status(QuotaExceeded, Status.THROTTLED)
    register_error_status(
        HttpFailure,
        lambda e: Status.THROTTLED if e.code == 429 else Status.HTTP_ERROR,  # type: ignore[attr-defined]
    )
    ep = Endpoint(verification_key=PUBLIC_KEY)

    @ep.function
    def fail(kind: str) -> None:
        if kind == "quota":
            raise QuotaExceeded("over")
        raise HttpFailure(429 if kind == "429" else 500)

    assert run_response(call(ep, "fail", "quota")).status == Status.THROTTLED
    assert run_response(call(ep, "fail", "429")).status == Status.THROTTLED
    assert run_response(call(ep, "fail", "500")).status == Status.HTTP_ERROR
    with pytest.raises(TypeError):
        register_error_status("nope", Status.OK)  # type: ignore[arg-type]


def test_unencodable_output_is_permanent_error() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)
    ep.function(lambda: object(), name="weird")
    result = run_response(call(ep, "weird"))
    assert result.status == Status.PERMANENT_ERROR
    assert "cannot encode" in result.exit.result.error.message


# Tail calls, context, expiration, poll results.


def test_tail_call(endpoint: Endpoint) -> None:
    @endpoint.function
    def relay(name: str) -> TailCall:
        return endpoint.functions["greet"].tail_call(name.upper())

    @endpoint.function
    def elsewhere() -> TailCall:
        return TailCall("remote.fn", {"x": 1}, endpoint="https://other.example.com")

    result = run_response(call(endpoint, "relay", "bob"))
    assert result.status == Status.OK
    assert result.exit.HasField("result")
    assert result.exit.tail_call.function == "greet"
    assert values.from_any(result.exit.tail_call.input) == "BOB"
    remote = run_response(call(endpoint, "elsewhere")).exit.tail_call
    assert (remote.function, remote.endpoint) == ("remote.fn", "https://other.example.com")
    assert values.from_any(remote.input) == {"x": 1}


def test_a_tail_call_carries_its_functions_defaults_and_its_options(endpoint: Endpoint) -> None:
    """As a dispatch of the function would: its declared policy and limits, and those
    of ``options``, over them; a key, delay or expiration asks nothing of a hand-over."""
    from dispatchlet.core.call_options import call_options

    @endpoint.function(max_attempts=3, timeout=20, concurrency=2, concurrency_per_key=1)
    def capped(name: str) -> str:
        return name

    @endpoint.function
    def relay(name: str) -> TailCall:
        return capped.tail_call(name)

    @endpoint.function
    def relay_keyed(name: str) -> TailCall:
        return capped.options(max_attempts=5, concurrency_key=name).tail_call(name)

    plain = run_response(call(endpoint, "relay", "bob")).exit.tail_call
    options = call_options(plain)
    assert (plain.function, options.max_attempts, options.concurrency) == ("capped", 3, 2)
    assert options.attempt_timeout.ToSeconds() == 20
    assert (options.concurrency_per_key, options.concurrency_key) == (1, "")
    keyed = call_options(run_response(call(endpoint, "relay_keyed", "ada")).exit.tail_call)
    assert (keyed.max_attempts, keyed.concurrency, keyed.concurrency_key) == (5, 2, "ada")
    # A function without defaults hands over a call without options, as before.
    bare = endpoint.functions["greet"].tail_call("x")
    assert not bare.settings
    with pytest.raises(ValueError, match=r"options\(key, delay=...\)\.tail_call\(\)"):
        capped.options(key="k", delay=5).tail_call("x")


def test_tail_call_input_follows_the_input_rule(endpoint: Endpoint) -> None:
    add = endpoint.functions["add"]
    assert add.tail_call(1, b=2).input == {"a": 1, "b": 2}
    assert add.tail_call(a=1).input == {"a": 1}
    assert add.tail_call(1, 2).input == [1, 2]
    assert endpoint.functions["greet"].tail_call("x").input == "x"


class Recorder:
    """A dispatcher that keeps the calls it is given."""

    def __init__(self) -> None:
        self.calls: list[call_pb2.Call] = []

    def dispatch(self, calls: Sequence[call_pb2.Call]) -> list[str]:
        self.calls.extend(calls)
        return [f"id-{n}" for n in range(len(calls))]


def test_dispatch_refuses_arguments_that_do_not_bind() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY, endpoint_url="https://functions.example.com")
    sent = ep.client = Recorder()

    @ep.function
    def greet(name: str) -> str:
        return name

    @ep.function
    def add(a: int, b: int = 0) -> int:
        return a + b

    def batch_with_a_bad_call() -> None:
        with ep.batch() as batch:
            batch.add(greet, "Ada")
            batch.add(add, 1, c=2)

    refused: list[tuple[Callable[[], object], str]] = [
        (lambda: add.dispatch(1, 2, 3), "add(): too many positional arguments"),
        (lambda: add.dispatch(1, c=2), "add(): got an unexpected keyword argument 'c'"),
        (lambda: add.dispatch(1, a=2), "add(): multiple values for argument 'a'"),
        (lambda: add.dispatch(b=2), "add(): missing a required argument: 'a'"),
        (lambda: add.build_call(1, 2, 3), "add(): too many positional arguments"),
        (lambda: greet.dispatch("A", nam="A"), "greet(): got an unexpected keyword argument 'nam'"),
        (lambda: greet.dispatch(nam="A"), "greet(): missing a required argument: 'name'"),
        (batch_with_a_bad_call, "add(): got an unexpected keyword argument 'c'"),
    ]
    for attempt, message in refused:
        with pytest.raises(TypeError) as raised:
            attempt()
        assert str(raised.value) == message
    assert sent.calls == []  # nothing was dispatched, not even the batch's good call

    add.dispatch(1)
    add.dispatch(1, 2)
    add.dispatch(1, b=2)
    greet.dispatch(name="Ada")
    assert [values.from_any(c.input) for c in sent.calls] == [[1], [1, 2], {"a": 1, "b": 2}, "Ada"]


def test_the_client_is_a_client_from_the_environment_unless_one_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dispatchlet import Client
    from dispatchlet.core import dispatching

    monkeypatch.setattr(dispatching, "_default", None)  # made afresh, from this environment
    monkeypatch.setenv("DISPATCH_API_URL", "http://scheduler.example.com:4450")
    monkeypatch.setenv("DISPATCH_API_KEY", "current,previous")
    ep, other = Endpoint(insecure=True), Endpoint(insecure=True)
    default = ep.client
    assert isinstance(default, Client)
    assert (default.api_url, default.api_key) == ("http://scheduler.example.com:4450", "current")
    assert other.client is default  # one, shared
    mine = Client("http://127.0.0.1:4451")
    ep.client = mine
    assert (ep.client, other.client) == (mine, default)
    ep.client = None
    assert ep.client is default


def positional_only(a: int, /, b: int = 0) -> None: ...
def keyword_only(a: int, *, b: int, c: int = 0) -> None: ...
def variadic(a: int, *rest: int, **named: int) -> None: ...
def plain(a: int, b: int, c: int = 0) -> None: ...
def with_context(context: RunContext, a: int, b: int = 0) -> None: ...


def type_error(attempt: Callable[[], object]) -> str | None:
    try:
        attempt()
    except TypeError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("fn", [positional_only, keyword_only, variadic, plain, with_context])
def test_arguments_are_checked_as_signature_bind_checks_them(fn: Callable[..., None]) -> None:
    function = Function(fn, fn.__name__)
    signature = inspect.signature(fn)
    inputs = [p for p in signature.parameters.values() if p.name != "context"]
    bindable = signature.replace(parameters=inputs)
    keywords = itertools.chain.from_iterable(itertools.combinations("abcd", n) for n in range(4))
    for count, names in itertools.product(range(4), list(keywords)):
        args, kwargs = tuple(range(count)), dict.fromkeys(names, 9)
        expected = type_error(lambda: bindable.bind(*args, **kwargs))  # noqa: B023
        refusal = type_error(lambda: function.input_for(*args, **kwargs))  # noqa: B023
        if expected is not None:
            assert refusal == f"{fn.__name__}(): {expected}", (args, kwargs)
        elif refusal is not None:  # bound, but the input rule cannot carry it: said so
            assert "mix positional and keyword" in refusal, (args, kwargs)


def test_run_context() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)
    seen: list[RunContext] = []

    @ep.function
    def whoami(ctx: RunContext, name: str) -> str:
        seen.append(ctx)
        return name

    created = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    expires = timestamp_pb2.Timestamp()
    expires.FromSeconds(int(time.time()) + 3600)
    assert (
        output(
            call(
                ep,
                "whoami",
                "z",
                dispatch_id="d1",
                parent_dispatch_id="p1",
                root_dispatch_id="r1",
                creation_time=created,
                expiration_time=expires,
            )
        )
        == "z"
    )
    (ctx,) = seen
    assert (ctx.function, ctx.dispatch_id, ctx.parent_dispatch_id, ctx.root_dispatch_id) == (
        "whoami",
        "d1",
        "p1",
        "r1",
    )
    assert ctx.creation_time == datetime.fromtimestamp(1_700_000_000, timezone.utc)
    remaining = ctx.time_remaining()
    assert remaining is not None
    assert 3500 < remaining.total_seconds() <= 3600


def test_expired_request_is_timeout_without_running(endpoint: Endpoint) -> None:
    ran: list[int] = []

    @endpoint.function
    def side_effect() -> None:
        ran.append(1)

    past = timestamp_pb2.Timestamp(seconds=int(time.time()) - 10)
    result = run_response(call(endpoint, "side_effect", expiration_time=past))
    assert result.status == Status.TIMEOUT
    assert ran == []


def test_poll_result_for_a_plain_function_is_incompatible_state(endpoint: Endpoint) -> None:
    request = run_request("greet")
    request.poll_result.SetInParent()
    result = run_response(endpoint.handle(signed(http_request(request))))
    assert result.status == Status.INCOMPATIBLE_STATE


# Endpoint.run: the protobuf-level entry without HTTP.


def test_run_without_http(endpoint: Endpoint) -> None:
    result = endpoint.run(run_request("greet", "run"))
    assert result.status == Status.OK
    assert values.from_any(result.exit.result.output) == "Hello, run!"
    assert endpoint.run(run_request("nope", "x")).status == Status.NOT_FOUND
    assert endpoint.run(run_request("", "x")).status == Status.INVALID_ARGUMENT


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


class Bomb:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("raise SystemExit('unpickled!')",))


def test_pickle_is_refused_unless_opted_in() -> None:
    for allow in (False, True):
        ep = Endpoint(verification_key=PUBLIC_KEY, allow_pickle=allow)
        ep.function(lambda p: p.x, name="getx")
        request = run_request("getx")
        request.input.CopyFrom(values.to_any(Point(3), allow_pickle=True))
        result = run_response(ep.handle(signed(http_request(request))))
        if allow:
            assert values.from_any(result.exit.result.output) == 3
        else:
            assert result.status == Status.INVALID_ARGUMENT
            assert "allow_pickle" in result.exit.result.error.message


def test_pickle_never_before_verification() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY, allow_pickle=True)
    ep.function(lambda p: p, name="take")
    request = run_request("take")
    request.input.CopyFrom(values.to_any(Bomb(), allow_pickle=True))
    unsigned = http_request(request)
    assert connect_error(ep.handle(unsigned))[0] == 401
    forged = signed(http_request(request), key=Ed25519PrivateKey.generate())
    assert connect_error(ep.handle(forged))[0] == 403


def test_json_caller_gets_an_error_for_an_output_json_cannot_show() -> None:
    from google.protobuf import any_pb2

    ep = Endpoint(verification_key=PUBLIC_KEY)
    ep.function(
        lambda: any_pb2.Any(type_url="type.googleapis.com/x.Unknown", value=b"\x08\x01"), name="odd"
    )
    body = json_format.MessageToJson(run_request("odd")).encode()
    response = ep.handle(signed(http_request(body, content_type=JSON)))
    assert response.status == 200
    message = json.loads(response.body)
    assert message["status"] == "STATUS_PERMANENT_ERROR"
    assert "JSON" in message["exit"]["result"]["error"]["message"]
    # The proto codec carries it unchanged.
    result = run_response(call(ep, "odd"))
    assert result.exit.result.output.type_url == "type.googleapis.com/x.Unknown"


def test_insecure_endpoint_never_unpickles_without_the_unsigned_opt_in() -> None:
    ep = Endpoint(insecure=True, allow_pickle=True)
    ep.function(lambda p: p.x, name="getx")
    request = run_request("getx")
    request.input.CopyFrom(values.to_any(Point(3), allow_pickle=True))
    result = run_response(ep.handle(http_request(request)))
    assert result.status == Status.INVALID_ARGUMENT
    assert "no verified signature" in result.exit.result.error.message
    # Output may still be pickled: that is no risk to the endpoint.
    ep.function(lambda: Point(4), name="point")
    out = run_response(ep.handle(http_request(run_request("point"))))
    assert values.from_any(out.exit.result.output, allow_pickle=True).x == 4
    trusting = Endpoint(insecure=True, allow_pickle=True, allow_unsigned_pickle=True)
    trusting.function(lambda p: p.x, name="getx")
    assert (
        values.from_any(run_response(trusting.handle(http_request(request))).exit.result.output)
        == 3
    )


def test_unsigned_pickle_opt_in_needs_allow_pickle() -> None:
    with pytest.raises(ValueError, match="allow_pickle"):
        Endpoint(insecure=True, allow_unsigned_pickle=True)


def test_timestamps_out_of_range_are_the_callers_mistake() -> None:

    ep = Endpoint(insecure=True)

    @ep.function
    def when(context: RunContext) -> str:
        return str(context.expiration_time)

    request = run_request("when")
    request.expiration_time.seconds = 10**12  # past year 9999: no datetime holds it
    result = ep.run(request)
    assert result.status == Status.INVALID_ARGUMENT
    assert "expiration_time is out of range" in result.exit.result.error.message
