"""How much of an endpoint's answer the scheduler holds: an output (or error, or Poll
state) over ``--max-output-size`` ends its call INVALID_RESPONSE naming both sizes; the
HTTP caller reads no further than that limit and a margin, holds a large answer once
while it reads it, and reads only the start of an error answer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from dispatchlet.core.errors import ConfigurationError
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.scheduler.http_caller import HttpCaller, Outcome
from dispatchlet.scheduler.outcome import ANSWER_MARGIN
from dispatchlet.scheduler.rules import Finish, Limits, after_attempt
from dispatchlet.scheduler.settings import DEFAULT_MAX_OUTPUT_SIZE, Settings
from dispatchlet.scheduler.store import Call, State
from google.protobuf import any_pb2, wrappers_pb2
from scheduler_harness import call, harness, returned

LIMIT = 1000
NOW = 1_800_000_000.0
RUN = "/dispatch.sdk.v1.FunctionService/Run"


def running() -> Call:
    return Call(
        dispatch_id="d",
        function="f",
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
        created_at=NOW,
        expires_at=NOW + 3600,
        ready_at=NOW,
        finished_at=None,
    )


def answered(output: bytes) -> Outcome:
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.exit.result.output.Pack(wrappers_pb2.BytesValue(value=output))
    return Outcome(Status.OK, response)


def test_an_output_over_the_limit_ends_the_call_naming_both_sizes() -> None:
    limits = Limits(max_output_size=LIMIT)
    fits = answered(b"x" * 900)
    over = answered(b"x" * 2000)
    kept = after_attempt(running(), fits, limits, NOW, jitter=0.5)
    assert isinstance(kept, Finish)
    assert kept.status is Status.OK
    ended = after_attempt(running(), over, limits, NOW, jitter=0.5)
    assert isinstance(ended, Finish)
    assert ended.status is Status.INVALID_RESPONSE  # final: the same answer would come again
    error = call_pb2.CallResult.FromString(ended.result).error
    size = len(over.response.exit.result.SerializeToString()) if over.response else 0
    assert error.type == "InvalidResponse"
    assert error.message == (
        f"the endpoint answered an output of {size} bytes, larger than the scheduler's "
        f"limit of {LIMIT} bytes (--max-output-size)"
    )


def test_a_poll_state_over_the_limit_ends_the_call() -> None:
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.poll.typed_coroutine_state.Pack(wrappers_pb2.BytesValue(value=b"s" * 2000))
    response.poll.max_results = response.poll.min_results = 1
    response.poll.max_wait.seconds = 5
    ended = after_attempt(
        running(), Outcome(Status.OK, response), Limits(max_output_size=LIMIT), NOW, jitter=0
    )
    assert isinstance(ended, Finish)
    assert ended.status is Status.INVALID_RESPONSE
    error = call_pb2.CallResult.FromString(ended.result).error
    assert error.type == "InvalidPoll"
    assert "a Poll state of " in error.message
    assert f"limit of {LIMIT} bytes (--max-output-size)" in error.message


def test_the_engine_ends_a_call_whose_output_is_over_the_limit(tmp_path: Path) -> None:
    async def scenario() -> call_pb2.CallResult:
        async with harness(tmp_path, lambda e, r: returned("x" * 2000)) as h:
            h.engine.max_output_size = LIMIT
            (dispatch_id,) = await h.dispatch(call("big"))
            done = await h.done(dispatch_id)
            assert done.status == Status.INVALID_RESPONSE.value
            return call_pb2.CallResult.FromString(done.result)

    result = asyncio.run(scenario())
    assert not result.HasField("output")  # not stored
    assert f"larger than the scheduler's limit of {LIMIT} bytes" in result.error.message


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def endpoint(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post(RUN, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


# An endpoint in a process of its own, so that what it holds is not traced here: it
# answers every Run request with the status, content type and body it was started with.
ANSWERING = """
import asyncio, sys
from aiohttp import web
status, content_type = int(sys.argv[1]), sys.argv[2]
body = sys.stdin.buffer.read()
async def run(request):
    await request.read()
    return web.Response(status=status, body=body, content_type=content_type)
async def main():
    app = web.Application()
    app.router.add_post("/dispatch.sdk.v1.FunctionService/Run", run)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextmanager
def answering(status: int, content_type: str, body: bytes) -> Iterator[str]:
    """The URL of an endpoint process that answers ``body``."""
    process = subprocess.Popen(
        [sys.executable, "-c", ANSWERING, str(status), content_type],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=False,
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(body)
        process.stdin.close()
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://"), f"the endpoint did not start: {url!r}"
        yield url
    finally:
        process.kill()
        process.wait(timeout=60)


def traced_run(url: str) -> tuple[Outcome, int]:
    """What one attempt on ``url`` came to, and the peak of this process's allocations
    while it ran (a first attempt warms the connection)."""

    async def scenario() -> tuple[Outcome, int]:
        async with HttpCaller(None, insecure=True) as caller:
            await caller.run(url, run_request(), timeout=60)
            tracemalloc.start()
            try:
                outcome = await caller.run(url, run_request(), timeout=60)
                return outcome, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    return asyncio.run(scenario())


def run_request() -> function_pb2.RunRequest:
    return function_pb2.RunRequest(function="f", dispatch_id="d")


def test_an_answer_announced_over_the_limit_is_refused_unread() -> None:
    sent = LIMIT + ANSWER_MARGIN + 1

    async def run(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"\0" * sent, content_type="application/proto")

    async def scenario() -> Outcome:
        async with endpoint(run) as url:
            caller = HttpCaller(None, insecure=True, max_output_size=LIMIT)
            async with caller:
                return await caller.run(url, run_request(), timeout=30)

    outcome = asyncio.run(scenario())
    assert outcome.status is Status.INVALID_RESPONSE
    assert not outcome.status.retryable
    assert outcome.message == (
        f"the endpoint answered {sent} bytes, more than the scheduler reads: an output of "
        f"at most {LIMIT} bytes (--max-output-size) and {ANSWER_MARGIN} bytes around it"
    )


def test_an_endless_answer_is_read_no_further_than_the_limit() -> None:
    """Chunked, with no length: the caller stops at the limit and hangs up."""
    written: list[int] = []

    async def run(request: web.Request) -> web.StreamResponse:
        await request.read()
        answer = web.StreamResponse(headers={"Content-Type": "application/proto"})
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        total = 0
        try:
            while total < 64 * 1024 * 1024:  # far more than the caller reads
                await answer.write(b"\0" * 65536)
                total += 65536
        except (ConnectionError, RuntimeError):
            pass  # the caller hung up
        written.append(total)
        return answer

    async def scenario() -> Outcome:
        async with endpoint(run) as url:
            caller = HttpCaller(None, insecure=True, max_output_size=LIMIT)
            async with caller:
                return await caller.run(url, run_request(), timeout=60)

    outcome = asyncio.run(scenario())
    assert outcome.status is Status.INVALID_RESPONSE
    assert f"answered more than {LIMIT + ANSWER_MARGIN} bytes" in outcome.message
    assert written, "the endpoint never finished writing"
    assert written[0] < 64 * 1024 * 1024, "the caller read the whole answer"


def test_a_large_answer_is_held_once_while_it_is_read() -> None:
    """An 8 MiB output: the caller's own allocations peak near one body (before: the
    chunks read, then their join, two)."""
    size = 8 * 1024 * 1024
    output = any_pb2.Any()
    output.Pack(wrappers_pb2.BytesValue(value=b"x" * size))
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.exit.result.output.CopyFrom(output)
    body = response.SerializeToString()
    del output, response
    with answering(200, "application/proto", body) as url:
        outcome, peak = traced_run(url)
    assert outcome.status is Status.OK
    assert outcome.response is not None
    assert len(outcome.response.exit.result.output.value) > size
    assert peak < 1.5 * len(body), f"{peak} bytes at the peak for an answer of {len(body)}"


def test_an_error_answer_is_read_no_further_than_its_start() -> None:
    page = b"<html>" + b"e" * (8 * 1024 * 1024)
    with answering(502, "text/html", page) as url:
        outcome, peak = traced_run(url)
    assert outcome.status is Status.TEMPORARY_ERROR  # a 502, retried
    assert outcome.message.startswith("HTTP 502 Bad Gateway: <html>eee")
    assert peak < 1024 * 1024, peak


def test_max_output_size_comes_from_the_flag_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatchlet.cli.main import main
    from dispatchlet.scheduler import server

    started: list[Settings] = []

    async def serve(settings: Settings, **options: object) -> None:
        started.append(settings)

    monkeypatch.setattr(server, "serve", serve)
    database = str(tmp_path / "s.db")
    monkeypatch.delenv("DISPATCHLET_MAX_OUTPUT_SIZE", raising=False)
    assert main(["scheduler", "--insecure", "--db", database, "--max-output-size", "100"]) == 0
    assert main(["scheduler", "--insecure", "--db", database]) == 0
    monkeypatch.setenv("DISPATCHLET_MAX_OUTPUT_SIZE", "200")
    assert main(["scheduler", "--insecure", "--db", database]) == 0
    assert main(["scheduler", "--insecure", "--db", database, "--max-output-size", "300"]) == 0
    sizes = [s.max_output_size for s in started]
    assert sizes == [100, DEFAULT_MAX_OUTPUT_SIZE, 200, 300]


@pytest.mark.parametrize("text", ["-5", "0", "lots", "1.5"])
def test_an_unusable_output_limit_names_its_variable(text: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid DISPATCHLET_MAX_OUTPUT_SIZE"):
        Settings.from_env({"DISPATCHLET_MAX_OUTPUT_SIZE": text}, database="x")
