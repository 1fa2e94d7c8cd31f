"""Concurrency and rate limits at Dispatch, in process: the limits a call's options ask
for are stored with it and hold its claims; limits no call can have are refused with a
400 naming the call and the reason, in proto and in Connect JSON, storing nothing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.core.call_options import set_call_options
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2
from dispatchlet.scheduler.call_limits import LimitsInvalid, limits_of
from dispatchlet.scheduler.store.limits import Limits
from google.protobuf import duration_pb2
from scheduler_harness import API_KEY, ENDPOINT, Harness, call, harness

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"


def limited(function: str, **options: Any) -> call_pb2.Call:
    built = call(function)
    set_call_options(built, options_pb2.CallOptions(**options))
    return built


async def post(h: Harness, body: bytes, content_type: str) -> tuple[int, Any]:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {API_KEY}"}
    async with h.session.post(h.url + DISPATCH, data=body, headers=headers) as answer:
        data = await answer.read()
        if answer.status != 200:
            return answer.status, json.loads(data)
        if content_type == "application/json":
            return answer.status, json.loads(data)["dispatchIds"]
        return answer.status, list(dispatch_pb2.DispatchResponse.FromString(data).dispatch_ids)


async def dispatch(h: Harness, *calls: call_pb2.Call) -> tuple[int, Any]:
    request = dispatch_pb2.DispatchRequest(calls=calls).SerializeToString()
    return await post(h, request, "application/proto")


def scenario(tmp_path: Path, body: Any) -> None:
    async def run() -> None:
        async with harness(tmp_path, running=False) as h:
            await body(h)

    asyncio.run(run())


def seconds(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value)


def test_dispatched_limits_hold_the_calls_claims(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        calls = [limited("charge", concurrency=3) for _ in range(4)]
        calls += [limited("charge", concurrency_key="c-17", concurrency_per_key=1)] * 2
        status, ids = await dispatch(h, *calls, call("other"))
        assert status == 200
        now = time.time() + 1
        claimed = await h.store.claim(owner="t", now=now, limit=10, lease_seconds=30)
        # Three of the four with the function's limit, one of the key, and the other
        # function's call.
        assert [c.call.dispatch_id for c in claimed] == [*ids[:3], ids[4], ids[6]]

    scenario(tmp_path, body)


def test_json_clients_give_limits_in_dispatchlet_options(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        options = {"rateLimit": {"count": 1, "period": "60s"}}
        members = [
            {"function": "f", "endpoint": ENDPOINT, "dispatchletOptions": options} for _ in range(2)
        ]
        status, ids = await post(h, json.dumps({"calls": members}).encode(), "application/json")
        assert status == 200
        now = time.time() + 1
        claimed = await h.store.claim(owner="t", now=now, limit=10, lease_seconds=30)
        assert [c.call.dispatch_id for c in claimed] == ids[:1]
        assert await h.store.finish(claimed[0].lease, 1, b"", now=now + 1)
        later = await h.store.claim(owner="t", now=now + 61, limit=10, lease_seconds=30)
        assert [c.call.dispatch_id for c in later] == ids[1:]

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"rate_limit": options_pb2.RateLimit(count=0, period=seconds(60))},
            "call 1: a rate limit of 0 calls per period: give a count of at least 1",
        ),
        (
            {"rate_limit": options_pb2.RateLimit(count=0)},
            "call 1: a rate limit of 0 calls per period",
        ),
        (
            {"rate_limit": options_pb2.RateLimit(count=5)},
            "call 1: a rate limit of 5 calls without a period: give a period above 0",
        ),
        (
            {"rate_limit": options_pb2.RateLimit(count=5, period=seconds(-1))},
            "call 1: a negative rate limit period",
        ),
        (
            {"rate_limit": options_pb2.RateLimit(count=5, period=seconds(86_401))},
            "call 1: a rate limit period beyond 86400 seconds (a day)",
        ),
        (
            {"concurrency_key": "k" * 257, "concurrency_per_key": 1},
            "call 1: a concurrency key longer than 256 characters",
        ),
        (
            {"concurrency_key": "a\x00b", "concurrency_per_key": 1},
            "call 1: a concurrency key with a control character",
        ),
    ],
)
def test_limits_no_call_can_have_are_refused(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    async def body(h: Harness) -> None:
        status, error = await dispatch(h, call("a"), limited("b", **options))
        assert (status, error["code"]) == (400, "invalid_argument")
        assert message in error["message"]
        assert await h.store.list(limit=10) == []

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": -1}, "concurrency"),
        ({"concurrencyPerKey": -3, "concurrencyKey": "k"}, "concurrencyPerKey"),
        ({"rateLimit": {"count": -1, "period": "1s"}}, "count"),
        ({"rateLimit": {"count": 0, "period": "10s"}}, "a rate limit of 0 calls per period"),
        ({"rateLimit": {"count": 2, "period": "-10s"}}, "a negative rate limit period"),
    ],
)
def test_json_limits_that_are_negative_or_zero_are_refused(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    async def body(h: Harness) -> None:
        member = {"function": "f", "endpoint": ENDPOINT, "dispatchletOptions": options}
        body = json.dumps({"calls": [member]}).encode()
        status, error = await post(h, body, "application/json")
        assert (status, error["code"]) == (400, "invalid_argument")
        assert message in error["message"]
        assert await h.store.list(limit=10) == []

    scenario(tmp_path, body)


def test_a_call_without_options_has_no_limits() -> None:
    assert limits_of(options_pb2.CallOptions()) == Limits()
    assert not limits_of(options_pb2.CallOptions(concurrency_key="k")).limited
    with pytest.raises(LimitsInvalid):
        limits_of(options_pb2.CallOptions(rate_limit=options_pb2.RateLimit()))


def test_the_cli_dispatches_calls_with_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatchlet.cli.main import main

    async def cli(*arguments: str) -> str:
        status = await asyncio.to_thread(main, ["dispatch", *arguments, "--endpoint", ENDPOINT])
        printed = capsys.readouterr()
        assert status == 0, printed
        return printed.out.strip()

    async def body(h: Harness) -> None:
        monkeypatch.setenv("DISPATCH_API_URL", h.url)
        monkeypatch.setenv("DISPATCH_API_KEY", API_KEY)
        limited = [await cli("charge", "--concurrency", "2", "--rate-limit", "5/1m")]
        limited += [await cli("charge", "--concurrency", "2") for _ in range(2)]
        keyed = [
            await cli("notify", "--concurrency-key", "c-17", "--concurrency-per-key", "1")
            for _ in range(2)
        ]
        stored = await h.store.get(limited[0])
        assert stored is not None
        assert stored.limits == Limits(concurrency=2, rate_count=5, rate_period=60.0)
        now = time.time() + 1
        claimed = await h.store.claim(owner="t", now=now, limit=10, lease_seconds=30)
        # Two of charge's three, one of the key's two.
        assert {c.call.dispatch_id for c in claimed} == {*limited[:2], keyed[0]}
        # What each carries, as `calls show` tells it.
        shown = await show(limited[0])
        assert "limits       2 of charge at once, 5 starts per 1m00s" in shown
        assert "policy" not in shown
        shown = await show(keyed[1])
        assert "limits       1 at once with key 'c-17'" in shown
        policed = await cli(
            "charge", "--max-attempts", "3", "--timeout", "30s", "--backoff", "2s",
            "--backoff-cap", "1m",
        )  # fmt: skip
        assert (
            "policy       at most 3 attempts, 30.0s per attempt, backoff from 2.0s, times 2 "
            "each retry, at most 1m00s"
        ) in await show(policed)
        assert "limits" not in await show(policed)
        assert json.loads(await show(policed, "--json"))["backoff"] == {
            "initial": 2.0,
            "maximum": 60.0,
            "multiplier": 2.0,
        }
        fields = json.loads(await show(limited[0], "--json"))
        assert {k: fields[k] for k in ("concurrency", "rate_limit", "max_attempts")} == {
            "concurrency": 2,
            "rate_limit": {"count": 5, "period": 60.0},
            "max_attempts": None,
        }

    async def show(dispatch_id: str, *options: str) -> str:
        status = await asyncio.to_thread(main, ["calls", "show", dispatch_id, *options])
        printed = capsys.readouterr()
        assert status == 0, printed
        return printed.out

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rate-limit", "10"], "'10' is not COUNT/PERIOD: write it as 10/1s"),
        (["--rate-limit", "0/1m"], "0 is not in 1.."),
        (["--rate-limit", "5/0s"], "a rate limit's period is above 0 and at most a day"),
        (["--rate-limit", "5/2d"], "a rate limit's period is above 0 and at most a day"),
        (["--rate-limit", "5/soon"], "invalid duration 'soon'"),
        (["--concurrency", "0"], "0 is not in 1.."),
        (["--backoff", "0"], "a wait between attempts must be positive"),
        (["--backoff-cap", "5s"], "--backoff-cap needs --backoff"),
        (["--backoff", "1m", "--backoff-cap", "5s"], "--backoff-cap (5.0 s) is below its"),
        (["--concurrency-key", "c-17"], "--concurrency-key and --concurrency-per-key go together"),
        (["--concurrency-per-key", "1"], "--concurrency-key and --concurrency-per-key go together"),
        (
            ["--concurrency-key", "k" * 300, "--concurrency-per-key", "1"],
            "concurrency_key: a concurrency key longer than 256 characters",
        ),
    ],
)
def test_the_cli_refuses_limits_no_call_can_have(
    arguments: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dispatchlet.cli.main import main

    # Refused before any scheduler is asked: none listens at this address.
    monkeypatch.setenv("DISPATCH_API_URL", "http://127.0.0.1:9")
    try:
        status = main(["dispatch", "f", *arguments, "--endpoint", "http://127.0.0.1:9"])
    except SystemExit as exited:
        status = exited.code
    assert status == 2
    assert message in capsys.readouterr().err
