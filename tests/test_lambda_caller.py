"""Lambda ARN endpoints: Invoke through a real boto3 client (with botocore's Stubber), the
scheduler's engine running calls on the Lambda adapter's own handler, and a scheduler
without boto3 refusing ARN endpoints rather than retrying a missing module."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from dispatchlet import Endpoint, RunContext, Status
from dispatchlet.adapters.aws_lambda import lambda_handler
from dispatchlet.core import values
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, function_pb2
from dispatchlet.scheduler import lambda_caller
from dispatchlet.scheduler.callers import Callers
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import HttpCaller, Outcome
from dispatchlet.scheduler.lambda_caller import LambdaCaller
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.store import NewCall
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from scheduler_harness import call as harness_call
from scheduler_harness import harness

ARN = "arn:aws:lambda:eu-west-1:123456789012:function:hello"


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def stubbed(*responses: dict[str, Any]) -> Any:
    """A real Lambda client whose Invoke answers are ``responses``, in order."""
    client = boto3.client(
        "lambda", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(client)
    for response in responses:
        if "error" in response:
            stubber.add_client_error("invoke", service_error_code=response["error"])
        else:
            stubber.add_response("invoke", response)
    stubber.activate()
    return client


def run(caller: LambdaCaller, request: function_pb2.RunRequest | None = None) -> Any:
    request = request or function_pb2.RunRequest(function="greet")
    return asyncio.run(caller.run(ARN, request, timeout=10))


def test_a_run_response_comes_back_from_the_payload() -> None:
    answer = function_pb2.RunResponse(status=Status.OK.value)
    answer.exit.result.output.CopyFrom(values.to_any("hi"))
    encoded = json.dumps(base64.b64encode(answer.SerializeToString()).decode())
    client = stubbed({"StatusCode": 200, "Payload": body(encoded.encode())})
    outcome = run(LambdaCaller(lambda region, timeout: client))
    assert outcome.status is Status.OK
    assert values.from_any(outcome.response.exit.result.output) == "hi"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("TooManyRequestsException", Status.THROTTLED),
        ("ResourceNotFoundException", Status.NOT_FOUND),
        ("AccessDeniedException", Status.PERMISSION_DENIED),
        ("ServiceException", Status.TEMPORARY_ERROR),
    ],
)
def test_lambda_api_errors_map_to_statuses(error: str, status: Status) -> None:
    client = stubbed({"error": error})
    outcome = run(LambdaCaller(lambda region, timeout: client))
    assert (outcome.status, outcome.error_type) == (status, error)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (
            {"errorType": "UnsupportedEvent", "errorMessage": "not a RunRequest"},
            Status.INVALID_ARGUMENT,
        ),
        ({"errorMessage": "2026-12-02 Task timed out after 3.00 seconds"}, Status.TIMEOUT),
        ({"errorType": "Runtime.ExitError", "errorMessage": "exit"}, Status.TEMPORARY_ERROR),
    ],
)
def test_function_errors_map_to_statuses(payload: dict[str, str], status: Status) -> None:
    client = stubbed(
        {
            "StatusCode": 200,
            "FunctionError": "Unhandled",
            "Payload": body(json.dumps(payload).encode()),
        }
    )
    assert run(LambdaCaller(lambda region, timeout: client)).status is status


def test_a_payload_that_is_no_run_response_is_invalid() -> None:
    client = stubbed({"StatusCode": 200, "Payload": body(b'{"not": "a string"}')})
    outcome = run(LambdaCaller(lambda region, timeout: client))
    assert outcome.status is Status.INVALID_RESPONSE


class AdapterClient:
    """A Lambda client whose function is the Lambda adapter's handler, in this process:
    what Lambda's Invoke does with the payload, without AWS."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.handler = lambda_handler(endpoint)
        self.invocations: list[str] = []

    def invoke(
        self,
        FunctionName: str,
        InvocationType: str,
        Payload: bytes,
        ClientContext: str | None = None,  # an attempt's span context, when tracing
    ) -> dict[str, Any]:
        self.invocations.append(FunctionName)
        answer = self.handler(json.loads(Payload), None)
        return {"StatusCode": 200, "Payload": body(json.dumps(answer).encode())}


def test_the_engine_runs_and_retries_calls_on_a_lambda_function(tmp_path: Path) -> None:
    endpoint = Endpoint(insecure=True)
    seen: list[str] = []

    @endpoint.function
    def flaky(name: str, context: RunContext) -> str:
        seen.append(context.dispatch_id)
        if len(seen) == 1:
            raise TimeoutError("slow")
        return f"Hello, {name}!"

    client = AdapterClient(endpoint)

    async def scenario() -> Any:
        store = await SQLiteStore.open(tmp_path / "s.db")
        callers = Callers(HttpCaller(None, insecure=True), lambda_client=lambda r, t: client)
        engine = Engine(store, callers, policy=RetryPolicy(base=0.01, cap=0.05))
        task = asyncio.create_task(engine.run())
        try:
            (dispatch_id,) = await store.dispatch(
                [
                    NewCall(
                        "flaky",
                        ARN,
                        values.to_any("Lambda").SerializeToString(),
                        engine.clock() + 3600,
                    )
                ],
                now=engine.clock(),
            )
            engine.wake()
            for _ in range(200):
                found = await store.get(dispatch_id)
                if found is not None and found.done:
                    return found
                await asyncio.sleep(0.02)
            raise AssertionError("the call did not end")
        finally:
            engine.stop()
            await task
            await callers.close()
            await store.close()

    done = asyncio.run(scenario())
    assert done.status == Status.OK.value
    assert done.attempts == 2
    assert seen == [done.dispatch_id] * 2
    assert client.invocations == [ARN, ARN]
    # The stored result is the exit's CallResult.
    assert values.from_any(call_pb2.CallResult.FromString(done.result).output) == "Hello, Lambda!"


def test_the_scheduler_never_imports_boto3_for_http_endpoints() -> None:
    code = (
        "import sys, dispatchlet.scheduler.server, dispatchlet.scheduler.callers\n"
        "loaded = sorted({'boto3', 'botocore'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- a scheduler without boto3 ----------------------------------------------------------


@pytest.fixture
def without_boto3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as if boto3 were not installed: importing it fails (and what the
    scheduler found out about it before is forgotten, before and after)."""
    monkeypatch.setitem(sys.modules, "boto3", None)
    lambda_caller._has_boto3.cache_clear()
    yield
    lambda_caller._has_boto3.cache_clear()


def test_without_boto3_arn_endpoints_are_refused_at_dispatch(
    tmp_path: Path, without_boto3: None
) -> None:
    async def scenario() -> tuple[int, dict[str, str]]:
        async with harness(tmp_path, running=False) as h:
            request = dispatch_pb2.DispatchRequest(
                calls=[harness_call("f"), harness_call("f", endpoint=ARN)]
            )
            status, answer = await h.post(
                "/dispatch.sdk.v1.DispatchService/Dispatch", request.SerializeToString()
            )
            stored = await h.store.list()
            assert stored == []  # nothing of the request is kept
            return status, json.loads(answer)

    status, error = asyncio.run(scenario())
    assert (status, error["code"]) == (400, "invalid_argument")
    assert error["message"].startswith("call 1: arn:aws:lambda: endpoints need boto3")
    assert "pip install 'dispatchlet[aws]'" in error["message"]


def test_without_boto3_a_poll_or_tail_call_to_an_arn_ends_its_call(
    tmp_path: Path, without_boto3: None
) -> None:
    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        response = function_pb2.RunResponse(status=Status.OK.value)
        if request.function == "poll":
            response.poll.calls.add(function="child", endpoint=ARN)
            response.poll.min_results = response.poll.max_results = 1
        elif request.function == "tail":
            response.exit.tail_call.function = "next"
            response.exit.tail_call.endpoint = ARN
        return Outcome(Status.OK, response)

    async def scenario() -> list[Any]:
        async with harness(tmp_path, answer) as h:
            ids = await h.dispatch(harness_call("poll"), harness_call("tail"))
            done = [await h.done(i) for i in ids]
            assert {r.function for r in h.caller.requests} == {"poll", "tail"}
            return done

    for done in asyncio.run(scenario()):
        assert done.status == Status.INVALID_RESPONSE.value
        error = call_pb2.CallResult.FromString(done.result).error
        assert "pip install 'dispatchlet[aws]'" in error.message, error


def test_without_boto3_a_stored_arn_call_ends_at_its_first_attempt(
    tmp_path: Path, without_boto3: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A call stored before (or by a process with boto3) is not retried for a day with a
    traceback per attempt: a missing module does not appear by retrying."""

    async def scenario() -> Any:
        store = await SQLiteStore.open(tmp_path / "s.db")
        callers = Callers(HttpCaller(None, insecure=True))
        engine = Engine(store, callers, policy=RetryPolicy(base=0.01, cap=0.05))
        task = asyncio.create_task(engine.run())
        try:
            now = engine.clock()
            (dispatch_id,) = await store.dispatch([NewCall("f", ARN, b"", now + 3600)], now=now)
            engine.wake()
            with engine.watching(dispatch_id) as until:
                for _ in range(300):
                    found = await store.get(dispatch_id)
                    assert found is not None
                    if found.done:
                        return found
                    await until(0.1)
            raise AssertionError(f"the call did not end: {found}")
        finally:
            engine.stop()
            await task
            await callers.close()
            await store.close()

    done = asyncio.run(scenario())
    assert (done.status, done.attempts) == (Status.PERMANENT_ERROR.value, 1)
    error = call_pb2.CallResult.FromString(done.result).error
    assert error.type == "ModuleNotFoundError"
    assert "pip install 'dispatchlet[aws]'" in error.message
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
