"""AWS Lambda adapter: ``handler = lambda_handler(endpoint)``, a ``handler(event, context)``.

It only translates. An invocation is a direct invocation (``direct``: a JSON string, the
base64 of a ``RunRequest``, run through ``Endpoint.run``) or an HTTP event, made into a
``Request`` for ``Endpoint.handle`` and answered in the shape its source requires.
Sources are recognised in this order, the first match wins:

1. VPC Lattice, event version 2 (``vpc_lattice``);
2. Lambda Function URL (``api_gateway``);
3. API Gateway HTTP API, payload 2.0 (``api_gateway``);
4. Application Load Balancer: with or without multi-value headers (``load_balancer``);
5. API Gateway payload 1.0 (REST APIs, and HTTP APIs set to payload 1.0) (``api_gateway``);
6. VPC Lattice, event version 1 (``vpc_lattice``).

Any other payload raises ``UnsupportedEvent``, a function error; a recognised event that
cannot be read is answered 400. What each source's event carries, how paths and
authorities are taken as sent, and the logs and metrics (``telemetry``) are described in
deploy/aws/README.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ...core.endpoint import Endpoint
from ...core.errors import DispatchletError
from ...core.status import Status
from .api_gateway import FunctionUrl, HttpApi, RestApi
from .direct import invoke, trace_context
from .load_balancer import Alb
from .source import EXPECTED, Event, EventSource, UnsupportedEvent
from .telemetry import LoggerLike, Telemetry, metrics_enabled, powertools_metrics
from .vpc_lattice import VpcLatticeV1, VpcLatticeV2

LambdaHandler = Callable[[Any, Any], Any]

# In the order of the module docstring: the first that matches wins.
SOURCES: tuple[EventSource, ...] = (
    VpcLatticeV2(),
    FunctionUrl(),
    HttpApi(),
    Alb(),
    RestApi(),
    VpcLatticeV1(),
)


def event_source(event: Event) -> EventSource:
    """The source of an HTTP event, or ``UnsupportedEvent``."""
    for source in SOURCES:
        if source.matches(event):
            return source
    keys = ", ".join(sorted(str(k)[:40] for k in event)[:12])
    raise UnsupportedEvent(f"unrecognised Lambda event (keys: {keys or 'none'}): {EXPECTED}")


def serve(endpoint: Endpoint, source: EventSource, event: Event) -> tuple[dict[str, Any], int]:
    """The answer to an HTTP event and its status."""
    try:
        request = source.request(event)
    except DispatchletError as exc:
        response = endpoint.reject(exc)
    else:
        response = endpoint.handle(request)
    return source.response(response, event), response.status


def lambda_handler(
    endpoint: Endpoint, *, metrics: bool | None = None, logger: LoggerLike | None = None
) -> LambdaHandler:
    """A Lambda handler serving ``endpoint`` for direct invocations and HTTP events.

    ``metrics``: write CloudWatch embedded metrics (needs aws-lambda-powertools); by
    default on when ``DISPATCHLET_METRICS`` is 1/true/yes/on. ``logger``: where the
    one-line summary of each invocation goes (e.g. a powertools ``Logger``).
    """
    # Direct invocations carry no signature: only HTTP events need the key.
    endpoint.warn_if_no_key("every HTTP event (Function URL, API Gateway, ALB, VPC Lattice)")
    telemetry = Telemetry(
        logger if logger is not None else logging.getLogger("dispatchlet.aws_lambda"),
        powertools_metrics() if metrics_enabled(metrics) else None,
    )

    def handler(event: Any, context: Any) -> Any:
        started = time.perf_counter()
        answer: Any
        status: int | Status
        if isinstance(event, str):
            source = "direct"
            answer, status = invoke(endpoint, event, trace_context(context))
        elif isinstance(event, dict):
            http = event_source(event)
            source = http.name
            answer, status = serve(endpoint, http, event)
        else:
            raise UnsupportedEvent(
                f"unsupported Lambda event of type {type(event).__name__}: {EXPECTED}"
            )
        telemetry.record(context, source, status, time.perf_counter() - started)
        return answer

    return handler


__all__ = [
    "SOURCES",
    "Alb",
    "EventSource",
    "FunctionUrl",
    "HttpApi",
    "LoggerLike",
    "RestApi",
    "UnsupportedEvent",
    "VpcLatticeV1",
    "VpcLatticeV2",
    "event_source",
    "invoke",
    "lambda_handler",
    "serve",
]
