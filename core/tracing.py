"""OpenTelemetry spans of a call's life, when ``opentelemetry-api`` is installed (the
``otel`` extra); nothing at all when it is not.

The only module of dispatchlet that imports opentelemetry, and only once the program
has (``otel``): until then each span site costs one lookup, and neither the endpoint
nor the scheduler imports anything more. With the API and no SDK configured, its spans
are non-recording and cheap. Spans, in one trace:

- ``dispatch`` (the scheduler's Dispatch RPC): a child of the client's ``traceparent``
  if it sent one; its context is stored with each call it dispatched (``carried``);
- ``attempt FUNCTION`` (the scheduler, one per attempt): a child of its call's stored
  context (the dispatch's, or for a workflow's child, the attempt that made it);
- ``run FUNCTION`` (the endpoint, around the user's function): a child of the attempt,
  whose context travels in the Run request's W3C ``traceparent`` and ``tracestate``
  headers (the propagators configured, ``OTEL_PROPAGATORS``: W3C by default).

Those headers are not signed: an endpoint takes them as a span's parent, for tracing
only, and after the request's signature is verified.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING

from ..proto.dispatch.sdk.v1 import function_pb2
from .status import Status

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

TRACER_NAME = "dispatchlet"

# Attribute names; the dispatch ids of one call tree are the keys to look it up by.
DISPATCH_ID = "dispatchlet.dispatch_id"
DISPATCH_IDS = "dispatchlet.dispatch_ids"
CALLS = "dispatchlet.calls"
FUNCTION = "dispatchlet.function"
ROOT_DISPATCH_ID = "dispatchlet.root_dispatch_id"
PARENT_DISPATCH_ID = "dispatchlet.parent_dispatch_id"
ATTEMPT = "dispatchlet.attempt"
ENDPOINT = "dispatchlet.endpoint"
DESTINATION = "dispatchlet.destination"
STATUS = "dispatchlet.status"
ERROR_TYPE = "error.type"

MAX_CARRIED = 1024
"""The longest stored trace context (``traceparent``, then ``tracestate`` after a line
break), in characters: a ``tracestate`` is at most 32 members of 256."""


class _Otel:
    """The parts of opentelemetry-api in use, imported together."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        self.context = context
        self.propagate = propagate
        self.trace = trace
        # What is stored with a call is the W3C trace context, whatever the propagators.
        self.w3c = TraceContextTextMapPropagator()

    def tracer(self) -> Tracer:
        # Asked of the global provider each time: one set after the first span counts.
        return self.trace.get_tracer(TRACER_NAME)


_otel: _Otel | None = None
_unusable = False  # opentelemetry was imported, but its parts in use could not be


def otel() -> _Otel | None:
    """opentelemetry-api's parts, once the program has imported it, else None.

    dispatchlet never imports it first: a program that traces configures an SDK, which
    imports it (or ``opentelemetry-instrument`` does), before spans could be recorded;
    one that does not pays nothing for it, installed or not (cold starts). Until then,
    each call costs one lookup in ``sys.modules``."""
    global _otel, _unusable
    if _otel is None and not _unusable and sys.modules.get("opentelemetry.trace") is not None:
        try:
            _otel = _Otel()
        except ImportError:
            _unusable = True
    return _otel


def enabled() -> bool:
    """Whether spans are made: the program has imported opentelemetry."""
    return otel() is not None


# --- the endpoint ------------------------------------------------------------------


def traced_run(
    request: function_pb2.RunRequest,
    headers: Mapping[str, Sequence[str]] | None,
    run: Callable[[], function_pb2.RunResponse],
) -> function_pb2.RunResponse:
    """``run()`` within the span of the endpoint's run of ``request``: a child of the
    context its (verified) request's ``headers`` carry (field names in lower case, as
    ``signatures.header_fields`` gives them), else of the current one."""
    api = otel()
    if api is None:
        return run()
    parent = None
    if headers is not None:
        parent = api.propagate.extract({k: v[0] for k, v in headers.items() if v})
    attributes = {
        DISPATCH_ID: request.dispatch_id,
        FUNCTION: request.function,
        ROOT_DISPATCH_ID: request.root_dispatch_id,
    }
    if request.parent_dispatch_id:
        attributes[PARENT_DISPATCH_ID] = request.parent_dispatch_id
    kind = api.trace.SpanKind.SERVER
    with api.tracer().start_as_current_span(
        f"run {request.function}", parent, kind, attributes
    ) as span:
        response = run()
        if span.is_recording():
            _set_outcome(api, span, Status.answered(response.status), _error_type(response))
        return response


def _error_type(response: function_pb2.RunResponse) -> str:
    return response.exit.result.error.type if response.HasField("exit") else ""


# --- the scheduler -----------------------------------------------------------------


@contextlib.contextmanager
def dispatch_span(headers: Mapping[str, str], calls: int) -> Iterator[Span | None]:
    """The span of one Dispatch request of ``calls`` calls: a child of the context the
    client's ``headers`` carry, if any. None when there is no tracing."""
    api = otel()
    if api is None:
        yield None
        return
    parent = api.propagate.extract(headers)
    kind = api.trace.SpanKind.SERVER
    with api.tracer().start_as_current_span("dispatch", parent, kind, {CALLS: calls}) as span:
        yield span


def dispatched(span: Span | None, dispatch_ids: Sequence[str]) -> None:
    """Name the calls the Dispatch of ``span`` stored (or found: an idempotent repeat)."""
    if span is not None and span.is_recording():
        span.set_attribute(DISPATCH_IDS, list(dispatch_ids))


def carried() -> str:
    """The current span's context as stored with a call (empty: none to store): its
    ``traceparent``, then its ``tracestate``, if any, after a line break."""
    api = otel()
    if api is None:
        return ""
    carrier: dict[str, str] = {}
    api.w3c.inject(carrier)
    parent = carrier.get("traceparent", "")
    state = carrier.get("tracestate", "")
    text = f"{parent}\n{state}" if parent and state else parent
    return text if len(text) <= MAX_CARRIED else parent


def _stored(api: _Otel, text: str) -> Context | None:
    """The context ``carried`` stored as ``text`` (None: none)."""
    if not text:
        return None
    parent, _, state = text.partition("\n")
    carrier = {"traceparent": parent}
    if state:
        carrier["tracestate"] = state
    return api.w3c.extract(carrier)


class Attempt:
    """An attempt's span, current from ``start_attempt`` until ``end``."""

    def __init__(self, api: _Otel, span: Span, token: Token[Context]) -> None:
        self._api = api
        self.span = span
        self._token = token

    def end(self, status: Status, error_type: str = "") -> None:
        """End the span with the run's ``status`` (and error's type, when not OK)."""
        if self.span.is_recording():
            _set_outcome(self._api, self.span, status, error_type)
        self.span.end()
        self._api.context.detach(self._token)


def start_attempt(
    stored: str,
    *,
    dispatch_id: str,
    root_id: str,
    function: str,
    attempt: int,
    endpoint: str,
    destination: str,
) -> Attempt | None:
    """Start the span of an attempt of a call whose stored context is ``stored``, and
    make it the current one (what the callers' requests carry), until ``Attempt.end``;
    None when there is no tracing."""
    api = otel()
    if api is None:
        return None
    attributes: dict[str, str | int] = {
        DISPATCH_ID: dispatch_id,
        ROOT_DISPATCH_ID: root_id,
        FUNCTION: function,
        ATTEMPT: attempt,
        ENDPOINT: endpoint,
        DESTINATION: destination,
    }
    kind = api.trace.SpanKind.CLIENT
    span = api.tracer().start_span(f"attempt {function}", _stored(api, stored), kind, attributes)
    token = api.context.attach(api.trace.set_span_in_context(span))
    return Attempt(api, span, token)


def inject(headers: MutableMapping[str, str] | list[tuple[str, str]]) -> None:
    """Add the current span's context to a request's ``headers`` (the configured
    propagators': ``traceparent`` and ``tracestate`` by default); nothing without
    tracing or a span."""
    api = otel()
    if api is None:
        return
    if isinstance(headers, list):
        carrier: dict[str, str] = {}
        api.propagate.inject(carrier)
        headers.extend(carrier.items())
    else:
        api.propagate.inject(headers)


def _set_outcome(api: _Otel, span: Span, status: Status, error_type: str) -> None:
    span.set_attribute(STATUS, status.name)
    if status is not Status.OK:
        if error_type:
            span.set_attribute(ERROR_TYPE, error_type)
        span.set_status(api.trace.StatusCode.ERROR, status.name)


__all__ = [
    "Attempt",
    "carried",
    "dispatch_span",
    "dispatched",
    "enabled",
    "inject",
    "start_attempt",
    "traced_run",
]
