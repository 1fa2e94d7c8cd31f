"""How large a call's input may be: the scheduler refuses at Dispatch what is over its
limit, ends a call whose Poll or tail call makes one, and an endpoint's 413 is final."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from dispatchlet.core import values
from dispatchlet.core.connect_client import ConnectError
from dispatchlet.core.endpoint import DEFAULT_MAX_BODY_SIZE
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler import http_caller
from dispatchlet.scheduler.http_caller import HttpCaller, Outcome
from dispatchlet.scheduler.server import Settings
from google.protobuf import json_format
from scheduler_harness import ENDPOINT, call, harness, returned

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"
LIMIT = 1000


def test_the_default_limit_is_the_endpoints_default_body_limit() -> None:
    assert Settings(database="x").max_input_size == DEFAULT_MAX_BODY_SIZE


def test_an_input_over_the_limit_is_refused_at_dispatch_naming_the_call(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False, max_input_size=LIMIT) as h:
            fits, big = call("f", "x" * 900), call("f", "x" * 2000)
            size = len(big.input.SerializeToString())
            request = dispatch_pb2.DispatchRequest(calls=[fits, big])
            status, body = await h.post(DISPATCH, request.SerializeToString())
            assert status == 400, body
            error = json.loads(body)
            assert error["code"] == "invalid_argument"
            assert error["message"] == (
                f"call 1: input of {size} bytes, larger than the scheduler's limit of "
                f"{LIMIT} bytes (--max-input-size)"
            )
            # Nothing of the request is kept.
            listed = await h.rpc(
                "/dispatchlet.scheduler.v1.CallService/List",
                calls_pb2.ListRequest(),
                calls_pb2.ListResponse,
            )
            assert list(listed.calls) == []
            assert await h.dispatch(fits)  # at the limit or under: accepted

    asyncio.run(scenario())


def test_a_body_over_the_apis_limit_is_a_clear_413(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            too_large = h.api.max_body_size + 1
            status, body = await h.post(DISPATCH, b"\0" * too_large)
            assert status == 413, body
            error = json.loads(body)
            assert error["code"] == "invalid_argument"
            assert f"request body of {too_large} bytes larger than" in error["message"]
            # One call whose input is at the limit fits, in JSON too (base64).
            big = call("f", b"\xff" * (DEFAULT_MAX_BODY_SIZE - 1000))
            assert len(big.input.SerializeToString()) <= DEFAULT_MAX_BODY_SIZE
            request = dispatch_pb2.DispatchRequest(calls=[big])
            status, body = await h.post(
                DISPATCH,
                json_format.MessageToJson(request).encode(),
                content_type="application/json",
            )
            assert status == 200, body[:300]

    asyncio.run(scenario())


def oversized(kind: str) -> Outcome:
    """A run that answers a Poll, or a tail call, with an input over ``LIMIT``."""
    response = function_pb2.RunResponse(status=Status.OK.value)
    big = values.to_any("x" * 2000)
    if kind == "poll":
        response.poll.calls.add(function="child", endpoint=ENDPOINT).input.CopyFrom(big)
        response.poll.calls.add(function="child", endpoint=ENDPOINT)
        response.poll.min_results, response.poll.max_results = 1, 1
        response.poll.max_wait.FromSeconds(10)
    else:
        response.exit.tail_call.function = "next"
        response.exit.tail_call.input.CopyFrom(big)
    return Outcome(Status.OK, response)


def test_a_poll_or_tail_call_over_the_limit_ends_its_call(tmp_path: Path) -> None:
    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        if request.function in ("poll", "tail"):
            return oversized(request.function)
        return returned("ran")

    async def scenario() -> list[tuple[int | None, call_pb2.CallResult]]:
        async with harness(tmp_path, answer, max_input_size=LIMIT) as h:
            ids = await h.dispatch(call("poll"), call("tail"))
            done = [await h.done(i) for i in ids]
            # Neither the children nor the tail call were stored, let alone run.
            assert {r.function for r in h.caller.requests} == {"poll", "tail"}
            return [(d.status, call_pb2.CallResult.FromString(d.result)) for d in done]

    (poll_status, poll), (tail_status, tail) = asyncio.run(scenario())
    assert (poll_status, poll.error.type) == (Status.INVALID_RESPONSE, "InvalidPoll")
    assert poll.error.message.startswith("call 0: input of ")
    assert f"larger than the scheduler's limit of {LIMIT} bytes" in poll.error.message
    assert (tail_status, tail.error.type) == (Status.INVALID_RESPONSE, "InvalidTailCall")
    assert f"larger than the scheduler's limit of {LIMIT} bytes" in tail.error.message


@asynccontextmanager
async def refusing_bodies_over(limit: int) -> AsyncIterator[str]:
    """An endpoint whose server answers 413 to a body over ``limit`` bytes (aiohttp's
    own error says the limit)."""

    async def run(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    app = web.Application(client_max_size=limit)
    app.router.add_post("/dispatch.sdk.v1.FunctionService/Run", run)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def test_an_endpoints_413_is_final_with_both_sizes() -> None:
    async def scenario() -> tuple[Outcome, int]:
        request = function_pb2.RunRequest(function="f", dispatch_id="d")
        request.input.CopyFrom(values.to_any("x" * 10_000))
        async with refusing_bodies_over(4096) as url, HttpCaller(None, insecure=True) as caller:
            return await caller.run(url, request, timeout=30), request.ByteSize()

    outcome, size = asyncio.run(scenario())
    assert outcome.status is Status.INVALID_ARGUMENT  # not retried: it cannot fit later
    assert not outcome.status.retryable
    assert outcome.message.startswith("HTTP 413 ")
    assert f"the Run request of {size} bytes" in outcome.message
    assert "over the endpoint's limit of 4096 bytes" in outcome.message


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        ("request body exceeds 16777216 bytes", "16777216"),
        ("a body of 20000000 bytes is over 16777216", "16777216"),
        ("too large", None),
        ("request 99999999 is too large", None),  # no number under what was sent
    ],
)
def test_a_413_names_the_limit_its_error_gives(message: str, limit: str | None) -> None:
    text = http_caller._too_large(ConnectError(413, "invalid_argument", message), 20_000_000)
    assert "the Run request of 20000000 bytes" in text
    if limit is None:
        assert "limit of" not in text
    else:
        assert f"over the endpoint's limit of {limit} bytes" in text


def test_max_input_size_reaches_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatchlet.cli.main import main
    from dispatchlet.scheduler import server

    started: list[Settings] = []

    async def serve(settings: Settings, **options: object) -> None:
        started.append(settings)

    monkeypatch.setattr(server, "serve", serve)
    database = str(tmp_path / "s.db")
    assert main(["scheduler", "--insecure", "--db", database, "--max-input-size", "100"]) == 0
    assert main(["scheduler", "--insecure", "--db", database]) == 0
    assert [s.max_input_size for s in started] == [100, DEFAULT_MAX_BODY_SIZE]
