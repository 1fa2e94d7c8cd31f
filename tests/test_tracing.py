"""OpenTelemetry spans: a Dispatch, each attempt of its call and the endpoint's run are
one trace, linked across the signed Run request by ``traceparent``; without
opentelemetry, everything works and nothing of it is imported."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.core import tracing, values
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.http import Request
from dispatchlet.core.signatures import sign_request
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.scheduler.concurrency import destination
from dispatchlet.scheduler.store.memory import MemoryStore
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from scheduler_harness import API_KEY
from tracing_scenario import endpoint_with_functions, scheduler_and_endpoint

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"
BOUND = 60.0


class Ended(SpanProcessor):
    """Tells whoever waits that a span ended."""

    def __init__(self) -> None:
        self.condition = threading.Condition()

    def on_end(self, span: ReadableSpan) -> None:
        with self.condition:
            self.condition.notify_all()


EXPORTER = InMemorySpanExporter()
ENDED = Ended()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    """The SDK's provider, set once for the process (the API allows one), exporting to
    ``EXPORTER``."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        sdk = TracerProvider()
        sdk.add_span_processor(SimpleSpanProcessor(EXPORTER))
        sdk.add_span_processor(ENDED)
        trace.set_tracer_provider(sdk)


@pytest.fixture(autouse=True)
def cleared() -> None:
    EXPORTER.clear()


async def spans_until(
    found: Callable[[Sequence[ReadableSpan]], bool],
) -> tuple[ReadableSpan, ...]:
    """The finished spans, once ``found`` says they are all there."""

    def wait() -> bool:
        with ENDED.condition:
            return ENDED.condition.wait_for(lambda: found(EXPORTER.get_finished_spans()), BOUND)

    assert await asyncio.to_thread(wait), f"spans missing: {EXPORTER.get_finished_spans()}"
    return EXPORTER.get_finished_spans()


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_dispatch_attempts_and_runs_are_one_trace(tmp_path: Path) -> None:
    """A client's span (``Client.dispatch`` sends its context), the Dispatch's, each
    attempt's (the first timed out, the second OK) and the endpoint's runs, with the
    right parents and attributes."""

    async def scenario() -> tuple[str, Sequence[ReadableSpan], int, str]:
        async with scheduler_and_endpoint(tmp_path) as s:
            tracer = trace.get_tracer("test")
            flaky = call_pb2.Call(
                function="flaky", endpoint=s.endpoint_url, input=values.to_any("Ann")
            )
            client = Client(api_url=s.harness.url, api_key=API_KEY)
            # The client's span is current in the thread (its context goes with it).
            with tracer.start_as_current_span("client") as client_span:
                (dispatch_id,) = await asyncio.to_thread(client.dispatch, [flaky])
            done = await s.done(dispatch_id)
            assert done.status == Status.OK.value

            def all_there(spans: Sequence[ReadableSpan]) -> bool:
                return len(named(spans, "attempt flaky")) == 2

            spans = await spans_until(all_there)
            return dispatch_id, spans, client_span.get_span_context().trace_id, s.endpoint_url

    dispatch_id, spans, trace_id, endpoint_url = asyncio.run(scenario())
    (client,) = named(spans, "client")
    (dispatch,) = named(spans, "dispatch")
    attempts = sorted(
        named(spans, "attempt flaky"), key=lambda s: s.attributes["dispatchlet.attempt"]
    )
    runs = named(spans, "run flaky")
    assert len(runs) == 2, spans
    assert {span.context.trace_id for span in (dispatch, *attempts, *runs)} == {trace_id}

    assert dispatch.parent is not None
    assert dispatch.parent.span_id == client.context.span_id
    assert dispatch.kind is SpanKind.SERVER
    assert dispatch.attributes["dispatchlet.calls"] == 1
    assert list(dispatch.attributes["dispatchlet.dispatch_ids"]) == [dispatch_id]

    for number, attempt in enumerate(attempts, start=1):
        assert attempt.parent is not None
        assert attempt.parent.span_id == dispatch.context.span_id
        assert attempt.kind is SpanKind.CLIENT
        attributes = attempt.attributes
        assert attributes["dispatchlet.dispatch_id"] == dispatch_id
        assert attributes["dispatchlet.root_dispatch_id"] == dispatch_id
        assert attributes["dispatchlet.function"] == "flaky"
        assert attributes["dispatchlet.attempt"] == number
        assert attributes["dispatchlet.endpoint"] == endpoint_url
        assert attributes["dispatchlet.destination"] == destination(endpoint_url)
    first, second = attempts
    assert first.attributes["dispatchlet.status"] == "TIMEOUT"
    assert first.attributes["error.type"] == "TimeoutError"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["dispatchlet.status"] == "OK"
    assert second.status.status_code is StatusCode.UNSET

    # Each run is the child of its attempt, across the signed HTTP request.
    for attempt in attempts:
        (run,) = [r for r in runs if r.parent and r.parent.span_id == attempt.context.span_id]
        assert run.kind is SpanKind.SERVER
        assert run.attributes["dispatchlet.dispatch_id"] == dispatch_id
        assert run.attributes["dispatchlet.function"] == "flaky"
        assert run.attributes["dispatchlet.status"] == attempt.attributes["dispatchlet.status"]


def test_a_workflows_children_are_in_its_trace(tmp_path: Path) -> None:
    """A workflow's child is dispatched by its Poll: the child's attempt is a child of
    the attempt that made it, its run a child of that attempt; the workflow's resume is
    another attempt under the Dispatch."""

    async def scenario() -> tuple[str, Sequence[ReadableSpan]]:
        async with scheduler_and_endpoint(tmp_path) as s:
            welcome = call_pb2.Call(
                function="welcome", endpoint=s.endpoint_url, input=values.to_any("Ann")
            )
            (dispatch_id,) = await s.harness.dispatch(welcome)
            done = await s.done(dispatch_id)
            assert done.status == Status.OK.value

            def all_there(spans: Sequence[ReadableSpan]) -> bool:
                return len(named(spans, "attempt welcome")) == 2 and bool(
                    named(spans, "attempt greet")
                )

            return dispatch_id, await spans_until(all_there)

    dispatch_id, spans = asyncio.run(scenario())
    (dispatch,) = named(spans, "dispatch")
    suspended, resumed = sorted(named(spans, "attempt welcome"), key=lambda s: s.start_time)
    (child,) = named(spans, "attempt greet")
    (child_run,) = named(spans, "run greet")
    assert {s.context.trace_id for s in spans} == {dispatch.context.trace_id}
    for attempt in (suspended, resumed):
        assert attempt.parent is not None
        assert attempt.parent.span_id == dispatch.context.span_id
    assert child.parent is not None
    assert child.parent.span_id == suspended.context.span_id
    assert child.attributes["dispatchlet.root_dispatch_id"] == dispatch_id
    assert child.attributes["dispatchlet.dispatch_id"] != dispatch_id
    assert child_run.parent is not None
    assert child_run.parent.span_id == child.context.span_id
    assert child_run.attributes["dispatchlet.parent_dispatch_id"] == dispatch_id


def test_the_dispatch_context_is_stored_with_each_call() -> None:
    """What an attempt's span takes as its parent outlives the process that dispatched
    the call: it is stored with it (here the memory store; every store by the contract
    tests), ``tracestate`` too."""
    from dispatchlet.scheduler.store import NewCall
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value")]),
    )

    async def scenario() -> str:
        store = await MemoryStore.open()
        with trace.use_span(NonRecordingSpan(parent)):
            carried = tracing.carried()
        call = NewCall("f", "http://e.test", b"", expires_at=100.0, trace_context=carried)
        (dispatch_id,) = await store.dispatch([call], now=1.0)
        found = await store.get(dispatch_id)
        assert found is not None
        return found.trace_context

    stored = asyncio.run(scenario())
    assert stored == ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nvendor=value")
    span = tracing.start_attempt(
        stored,
        dispatch_id="d",
        root_id="d",
        function="f",
        attempt=1,
        endpoint="http://e.test",
        destination="e.test",
    )
    assert span is not None
    span.end(Status.OK)
    (attempt,) = EXPORTER.get_finished_spans()
    assert attempt.context.trace_id == parent.trace_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == parent.span_id
    assert attempt.context.trace_state.get("vendor") == "value"


def test_a_forged_traceparent_is_refused_with_its_request() -> None:
    """The trace headers are not signed: a request whose signature fails is refused
    before any span is made, whatever parent its headers name."""
    key = Ed25519PrivateKey.generate()
    endpoint = endpoint_with_functions(Ed25519PrivateKey.generate())  # another key
    run = function_pb2.RunRequest(function="greet", dispatch_id="d" * 24)
    run.input.CopyFrom(values.to_any("Ann"))
    headers = [("Content-Type", PROTO), ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    signed = sign_request(
        Request("POST", RUN_PATH, "endpoint.test", headers, run.SerializeToString()), key
    )
    assert endpoint.handle(signed).status == 403
    assert not named(EXPORTER.get_finished_spans(), "run greet")


WITHOUT_OPENTELEMETRY = {
    # Not installed: any import of it fails.
    "absent": 'sys.modules["opentelemetry"] = None',
    # Installed (in this environment) but not used by the program: not loaded either.
    "unused": "",
}


@pytest.mark.slow
@pytest.mark.parametrize("otel", sorted(WITHOUT_OPENTELEMETRY))
def test_without_opentelemetry_everything_works_and_nothing_is_imported(
    tmp_path: Path, otel: str
) -> None:
    """With opentelemetry not importable, or not imported by the program, calls
    dispatched to the scheduler run on a real endpoint over signed HTTP (one retried),
    and no module of opentelemetry is loaded."""
    tests = Path(__file__).parent
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from pathlib import Path
        {WITHOUT_OPENTELEMETRY[otel]}
        sys.path.insert(0, {str(tests)!r})
        from dispatchlet.core import tracing, values
        from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
        from tracing_scenario import scheduler_and_endpoint

        async def scenario():
            async with scheduler_and_endpoint(Path({str(tmp_path)!r})) as s:
                calls = [
                    call_pb2.Call(
                        function=name, endpoint=s.endpoint_url, input=values.to_any("Ann")
                    )
                    for name in ("greet", "flaky")
                ]
                ids = await s.harness.dispatch(*calls)
                return [await s.done(dispatch_id) for dispatch_id in ids]

        done = asyncio.run(scenario())
        loaded = sorted(
            name for name, module in sys.modules.items()
            if name.startswith("opentelemetry") and module is not None
        )
        print(json.dumps({{
            "statuses": [call.status for call in done],
            "outputs": [
                values.from_any(call_pb2.CallResult.FromString(call.result).output)
                for call in done
            ],
            "attempts": [call.attempts for call in done],
            "trace_contexts": [call.trace_context for call in done],
            "enabled": tracing.enabled(),
            "loaded": loaded,
        }}))
        """
    )
    answer = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert answer.returncode == 0, answer.stderr
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [Status.OK.value, Status.OK.value]
    assert result["outputs"] == ["Hello, Ann!", "Hello again, Ann!"]
    assert result["attempts"] == [1, 2]
    assert result["trace_contexts"] == ["", ""]
    assert result["enabled"] is False
    assert result["loaded"] == []
