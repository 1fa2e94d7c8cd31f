"""What the scheduler checks and converts of a call, the same for the API (a Dispatch)
and the engine (a Poll's calls, a tail call): the function name and endpoint it accepts,
the input size it stores, the Poll limits, the destination its concurrency limit
applies to, and the one conversion of stored times to and from protobuf."""

from __future__ import annotations

from urllib.parse import urlsplit

from google.protobuf import duration_pb2, timestamp_pb2

from ..core.functions import FUNCTION_NAME
from ..core.limits import MAX_POLL_CALLS, MAX_POLL_RESULTS
from ..proto.dispatch.sdk.v1 import call_pb2
from ..proto.dispatchlet.scheduler.v1 import options_pb2

ENDPOINT_SCHEMES = ("http://", "https://", "arn:aws:lambda:")

__all__ = [
    "ENDPOINT_SCHEMES",
    "MAX_POLL_CALLS",
    "MAX_POLL_RESULTS",
    "call_problem",
    "destination",
    "duration_seconds",
    "oversized_input",
    "timestamp",
]


def call_problem(
    call: call_pb2.Call | options_pb2.Call, *, endpoint_required: bool = True
) -> str | None:
    """Why ``call`` (dispatched, or made by a Poll or a tail call, whose endpoint may be
    left empty for the caller's own) cannot be run, or None."""
    if not FUNCTION_NAME.fullmatch(call.function):
        return (
            f"invalid function name {call.function[:100]!r}: expected ^[a-zA-Z_][a-zA-Z0-9_<>.]*$"
        )
    if (call.endpoint or endpoint_required) and not call.endpoint.startswith(ENDPOINT_SCHEMES):
        return (
            f"invalid endpoint {call.endpoint[:200]!r}: expected an http://, https:// or "
            "arn:aws:lambda: endpoint"
        )
    return None


def oversized_input(size: int, limit: int) -> str | None:
    """Why an input of ``size`` bytes cannot be stored under ``limit``, or None."""
    if size <= limit:
        return None
    return f"input of {size} bytes, larger than the scheduler's limit of {limit} bytes"


def destination(endpoint: str) -> str:
    """What a concurrency limit applies to: an endpoint's scheme and authority, or a
    function ARN."""
    if endpoint.startswith("arn:"):
        return endpoint
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A stored time as a Timestamp; the one conversion, so that what an endpoint is
    told and what the CallService shows are the same to the nanosecond."""
    stamp = timestamp_pb2.Timestamp()
    whole = int(seconds)
    stamp.seconds, stamp.nanos = whole, int((seconds - whole) * 1e9)
    return stamp


def duration_seconds(duration: duration_pb2.Duration) -> float:
    """A Duration (a call's expiration, a Poll's ``max_wait``) in seconds."""
    return duration.seconds + duration.nanos / 1e9
