"""An attempt on a Lambda ARN endpoint carries its span context to the function as
Lambda carries a caller's context (``ClientContext``, read by the function as
``context.client_context.custom``), so that the run's span is the attempt's child, in
one trace, as over a signed HTTP request."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import boto3
from botocore.stub import Stubber
from dispatchlet import Endpoint
from dispatchlet.adapters.aws_lambda import lambda_handler
from dispatchlet.core import values
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler.callers import Callers
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import HttpCaller
from dispatchlet.scheduler.lambda_caller import LambdaCaller
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.store import NewCall
from dispatchlet.scheduler.store.memory import MemoryStore
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from test_lambda_caller import ARN, body
from test_tracing import cleared, named, provider, spans_until

__all__ = ["cleared", "provider"]  # the tracing tests' fixtures, used here too


class LambdaRuntime:
    """A Lambda client whose function is the Lambda adapter's handler, in this process,
    given the invocation's client context as Lambda's Python runtime gives it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.handler = lambda_handler(endpoint)
        self.client_contexts: list[str | None] = []

    def invoke(
        self,
        FunctionName: str,
        InvocationType: str,
        Payload: bytes,
        ClientContext: str | None = None,
    ) -> dict[str, Any]:
        self.client_contexts.append(ClientContext)
        context = SimpleNamespace(client_context=None, aws_request_id="r-1")
        if ClientContext is not None:
            sent = json.loads(base64.b64decode(ClientContext))
            context.client_context = SimpleNamespace(
                custom=sent.get("custom"), env=sent.get("env"), client=sent.get("client")
            )
        answer = self.handler(json.loads(Payload), context)
        return {"StatusCode": 200, "Payload": body(json.dumps(answer).encode())}


def test_an_attempt_on_a_lambda_function_and_its_run_are_one_trace() -> None:
    endpoint = Endpoint(insecure=True)

    @endpoint.function
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    runtime = LambdaRuntime(endpoint)

    async def scenario() -> tuple[str, Sequence[ReadableSpan]]:
        store = MemoryStore()
        callers = Callers(HttpCaller(None, insecure=True), lambda_client=lambda r, t: runtime)
        engine = Engine(store, callers, policy=RetryPolicy(base=0.01, cap=0.05))
        task = asyncio.create_task(engine.run())
        try:
            now = engine.clock()
            (dispatch_id,) = await store.dispatch(
                [NewCall("greet", ARN, values.to_any("Ann").SerializeToString(), now + 3600)],
                now=now,
            )
            engine.wake()

            def both(spans: Sequence[ReadableSpan]) -> bool:
                return bool(named(spans, "attempt greet")) and bool(named(spans, "run greet"))

            spans = await spans_until(both)
            return dispatch_id, spans
        finally:
            engine.stop()
            await task
            await callers.close()

    dispatch_id, spans = asyncio.run(scenario())
    (attempt,) = named(spans, "attempt greet")
    (run,) = named(spans, "run greet")
    assert attempt.kind is SpanKind.CLIENT
    assert run.kind is SpanKind.SERVER
    assert run.parent is not None
    assert run.parent.span_id == attempt.context.span_id
    assert run.context.trace_id == attempt.context.trace_id
    assert run.attributes["dispatchlet.dispatch_id"] == dispatch_id
    assert run.attributes["dispatchlet.status"] == "OK"
    (sent,) = runtime.client_contexts
    assert sent is not None
    custom = json.loads(base64.b64decode(sent))["custom"]
    assert custom["traceparent"].split("-")[2] == format(attempt.context.span_id, "016x")


def test_the_client_context_is_what_lambdas_invoke_accepts() -> None:
    """botocore checks the parameters against Lambda's API model before its stub answers."""
    client = boto3.client(
        "lambda", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.lambda.Invoke", lambda params, **_: sent.append(dict(params))
    )
    answer = function_pb2.RunResponse(status=Status.OK.value)
    encoded = json.dumps(base64.b64encode(answer.SerializeToString()).decode())
    with Stubber(client) as stubber:
        stubber.add_response("invoke", {"StatusCode": 200, "Payload": body(encoded.encode())})
        caller = LambdaCaller(lambda region, timeout: client)
        request = function_pb2.RunRequest(function="greet")
        with trace.get_tracer("test").start_as_current_span("attempt") as span:
            outcome = asyncio.run(caller.run(ARN, request, timeout=10))
        stubber.assert_no_pending_responses()
    assert outcome.status is Status.OK
    (params,) = sent
    custom = json.loads(base64.b64decode(params["ClientContext"]))["custom"]
    assert custom["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")


def test_without_a_span_no_client_context_is_sent() -> None:
    endpoint = Endpoint(insecure=True)

    @endpoint.function
    def greet(name: str) -> str:
        return name

    runtime = LambdaRuntime(endpoint)
    caller = LambdaCaller(lambda region, timeout: runtime)
    request = function_pb2.RunRequest(function="greet", input=values.to_any("x"))
    outcome = asyncio.run(caller.run(ARN, request, timeout=10))
    assert outcome.status is Status.OK
    assert runtime.client_contexts == [None]
