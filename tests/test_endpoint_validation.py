"""Endpoints no attempt could use are refused where they enter: a Dispatch answers 400
naming the call, a Poll's child or a tail call ends its call with the reason. What the
check accepts, the HTTP caller can send a request to."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from dispatchlet.core.endpoint_url import parse_endpoint_url
from dispatchlet.core.http import Request
from dispatchlet.core.signatures import sign_request
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, poll_pb2
from dispatchlet.scheduler import rules
from dispatchlet.scheduler.calls import endpoint_problem
from dispatchlet.scheduler.rules import Finish, Limits
from dispatchlet.scheduler.store import Call, State
from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler_harness import harness
from support import KEY
from yarl import URL

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"

UNUSABLE = [
    ("http://127.0.0.1:99999", "port"),
    ("http://127.0.0.1:0", "port"),
    ("http://host.test:http", "port"),
    ("http://host.test/caf\u00e9", "ASCII"),
    ("http://h\u00f4te.test", "xn--"),
    ("http:///path", "host"),
    ("http://", "host"),
    ("http://host.test/a b", "spaces"),
    ("http://host.test/a\tb", "control"),
    ("http://user:secret@host.test", "user information"),
    ("http://host.test/%zz", "percent-encoded"),
    ("http://host.test/a<b>", "percent-encoded"),
    ("http://[zz]/", "IPv6"),
    ("http://-host.test", "host name"),
    ("http://host.test/?query", "query"),
    ("arn:aws:lambda:us-east-1", "ARN"),
    ("ftp://host.test", "http://"),
]
USABLE = [
    "http://127.0.0.1:8080",
    "https://host.test/prefix/stage",
    "http://[::1]:4450/a%20b",
    "https://xn--hte-ona.test",
    "http://host.test:65535/",
    "arn:aws:lambda:us-east-1:123456789012:function:f:live",
]


@pytest.mark.parametrize(("endpoint", "reason"), UNUSABLE)
def test_an_unusable_endpoint_is_refused_with_its_reason(endpoint: str, reason: str) -> None:
    problem = endpoint_problem(endpoint)
    assert problem is not None
    assert reason in problem, problem


@pytest.mark.parametrize("endpoint", USABLE)
def test_a_usable_endpoint_is_accepted(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


def test_a_dispatch_with_an_unusable_endpoint_is_a_400_naming_the_call(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, dict[str, str]]:
        async with harness(tmp_path, running=False) as h:
            request = dispatch_pb2.DispatchRequest(
                calls=[
                    call_pb2.Call(function="f", endpoint="http://127.0.0.1:8080"),
                    call_pb2.Call(function="f", endpoint="http://127.0.0.1:99999"),
                ]
            )
            status, body = await h.post(DISPATCH, request.SerializeToString())
            assert await h.store.list() == [], "no call of a refused Dispatch is stored"
            return status, json.loads(body)

    status, answer = asyncio.run(scenario())
    assert (status, answer["code"]) == (400, "invalid_argument")
    assert answer["message"].startswith("call 1: invalid endpoint 'http://127.0.0.1:99999'")
    assert "port" in answer["message"]


def running_call() -> Call:
    return Call(
        dispatch_id="d",
        function="parent",
        endpoint="http://endpoint.test",
        input=b"",
        version="",
        correlation_id=0,
        parent_id=None,
        root_id="d",
        state=State.RUNNING,
        status=None,
        result=b"",
        attempts=1,
        created_at=1.0,
        expires_at=1e10,
        ready_at=1.0,
        finished_at=None,
    )


def error_of(decision: object) -> tuple[str, str]:
    assert isinstance(decision, Finish), decision
    result = call_pb2.CallResult.FromString(decision.result)
    return result.error.type, result.error.message


def test_a_poll_child_with_an_unusable_endpoint_ends_its_call() -> None:
    poll = poll_pb2.Poll(min_results=1, max_results=1)
    poll.calls.add(function="child", endpoint="http://127.0.0.1:8080")
    poll.calls.add(function="child", endpoint="http://host.test/caf\u00e9")
    decision = rules.suspension(running_call(), poll, Limits(), now=2.0)
    kind, message = error_of(decision)
    assert kind == "InvalidPoll"
    assert message.startswith("call 1: invalid endpoint")
    assert decision.status is Status.INVALID_RESPONSE  # type: ignore[union-attr]


def test_a_tail_call_to_an_unusable_endpoint_ends_its_call() -> None:
    tail = call_pb2.Call(function="next", endpoint="http://[zz]/")
    kind, message = error_of(rules.tail_call(running_call(), tail, Limits(), now=0.0))
    assert kind == "InvalidTailCall"
    assert "invalid endpoint" in message


# Endpoints built from parts that are often wrong: odd ports, hosts and paths.
_hosts = st.one_of(
    st.text(min_size=0, max_size=12),
    st.from_regex(r"[a-z0-9.\-_]{1,12}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.sampled_from(["[::1]", "[zz]", "a@b", "x.test", "."]),
)
_ports = st.one_of(
    st.just(""),
    st.integers(min_value=-5, max_value=70000).map(lambda p: f":{p}"),
    st.text(max_size=4).map(lambda t: ":" + t),
)
_paths = st.one_of(st.just(""), st.text(max_size=16).map(lambda t: "/" + t))
_endpoints = st.one_of(
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["http", "https"]),
        _hosts,
        _ports,
        _paths,
    ),
    st.text(max_size=40),
)


def _usable_by_the_caller(endpoint: str) -> None:
    """What the HTTP caller does with an endpoint before it sends anything: parse it,
    sign the request for its authority and path, and build aiohttp's request."""
    target = parse_endpoint_url(endpoint)
    request = Request(
        "POST", target.run_path, target.authority, [("Content-Type", "application/proto")], b"x"
    )
    signed = sign_request(request, KEY)
    url = URL(target.run_url, encoded=True)
    assert url.host
    assert url.port
    assert 0 < url.port < 65536
    assert url.raw_path == target.run_path

    async def build() -> None:
        built = aiohttp.ClientRequest(
            "POST",
            url,
            headers=signed.headers,
            data=signed.body,
            loop=asyncio.get_running_loop(),
        )
        assert built.url.raw_host == url.raw_host

    asyncio.run(build())


@settings(max_examples=400, deadline=None)
@given(_endpoints)
def test_any_endpoint_accepted_is_usable_by_the_http_caller(endpoint: str) -> None:
    if endpoint_problem(endpoint) is None and not endpoint.startswith("arn:"):
        _usable_by_the_caller(endpoint)


@pytest.mark.parametrize("endpoint", [u for u in USABLE if not u.startswith("arn:")])
def test_the_usable_examples_are_usable_by_the_http_caller(endpoint: str) -> None:
    _usable_by_the_caller(endpoint)


def test_verdicts_are_kept_for_few_endpoints_of_bounded_length() -> None:
    from dispatchlet.scheduler import calls

    for n in range(calls.CHECKED_ENDPOINTS + 50):
        assert endpoint_problem(f"http://host-{n}.test:8000/") is None
        assert endpoint_problem(f"http://host-{n}.test:0/") is not None
    kept = calls._kept_endpoint_problem.cache_info()
    assert kept.currsize == calls.CHECKED_ENDPOINTS
    # A long one is checked each time, never looked for among the kept ones.
    long = "http://example.test/" + "a" * 5000
    assert endpoint_problem(long) is None
    assert endpoint_problem(long + "%zz") is not None
    after = calls._kept_endpoint_problem.cache_info()
    assert (after.hits, after.misses) == (kept.hits, kept.misses)
