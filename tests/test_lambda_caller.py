"""Lambda ARN endpoints: Invoke through a real boto3 client (with botocore's Stubber), and
the scheduler's engine running calls on the Lambda adapter's own handler."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from dispatchlet import Endpoint, RunContext, Status
from dispatchlet.adapters.aws_lambda import lambda_handler
from dispatchlet.core import values
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.scheduler.callers import Callers
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import HttpCaller
from dispatchlet.scheduler.lambda_caller import LambdaCaller
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.store import NewCall
from dispatchlet.scheduler.store.sqlite import SQLiteStore

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

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
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
