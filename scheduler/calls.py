"""What the scheduler checks and converts of a call, the same for the API (a Dispatch)
and the engine (a Poll's calls, a tail call): the function name and endpoint it accepts,
the input size it stores, the Poll limits, the destination its concurrency limit
applies to, and the one conversion of stored times to and from protobuf."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from google.protobuf import duration_pb2, timestamp_pb2

from ..core.call_options import key_problem
from ..core.dispatch_options import MAX_COUNT
from ..core.endpoint_url import parse_endpoint_url
from ..core.functions import FUNCTION_NAME
from ..core.limits import MAX_POLL_CALLS, MAX_POLL_RESULTS
from ..proto.dispatch.sdk.v1 import call_pb2
from ..proto.dispatchlet.scheduler.v1 import options_pb2
from .store import CallPolicy
from .store.limits import Limits

ENDPOINT_SCHEMES = ("http://", "https://", "arn:aws:lambda:")

__all__ = [
    "ENDPOINT_SCHEMES",
    "MAX_DELAY",
    "MAX_EXPIRATION",
    "MAX_POLL_CALLS",
    "MAX_POLL_RESULTS",
    "call_problem",
    "destination",
    "duration_seconds",
    "endpoint_problem",
    "oversized_input",
    "planned",
    "timestamp",
]

MAX_DELAY = 366 * 24 * 3600.0
"""The furthest a call's first attempt may be put off (a year), and the longest of its
expiration, attempt timeout and backoff."""
MAX_EXPIRATION = MAX_DELAY
"""The longest expiration a call may be given, at Dispatch or by a schedule."""


@dataclass(frozen=True)
class Plan:
    """What a call's options (``CallOptions``) ask of the scheduler, checked."""

    key: str = ""
    ready_at: float | None = None
    """When its first attempt may start; None: at once."""
    policy: CallPolicy | None = None


AT_ONCE = Plan()


def planned(options: options_pb2.CallOptions, now: float) -> Plan | str:
    """The plan of a call with ``options`` stored at ``now``, or why they are invalid."""
    key = options.key
    if key and (problem := key_problem(key)):
        return problem
    ready_at = None
    if options.HasField("delay"):
        delay = duration_seconds(options.delay)
        if not 0 <= delay <= MAX_DELAY:
            return f"a delay must be 0 to {MAX_DELAY:.0f} seconds (a year), not {delay:g}"
        ready_at = now + delay
    if options.HasField("start_at"):
        start = options.start_at.seconds + options.start_at.nanos / 1e9
        if start > now + MAX_DELAY:
            return "start_at is more than a year ahead"
        ready_at = max(start, now if ready_at is None else ready_at)
    policy = None
    if options.max_attempts or options.HasField("attempt_timeout") or options.HasField("backoff"):
        policy_or_problem = _policy(options)
        if isinstance(policy_or_problem, str):
            return policy_or_problem
        policy = policy_or_problem
    if not key and ready_at is None and policy is None:
        return AT_ONCE
    return Plan(key, ready_at, policy)


def _policy(options: options_pb2.CallOptions) -> CallPolicy | str:
    if options.max_attempts > MAX_COUNT:
        return f"max_attempts must be at most {MAX_COUNT}"
    durations = {}
    for name, duration in (
        ("attempt_timeout", options.attempt_timeout),
        ("backoff initial", options.backoff.initial),
        ("backoff maximum", options.backoff.maximum),
    ):
        seconds = duration_seconds(duration)
        if not 0 <= seconds <= MAX_DELAY:
            return f"{name} must be 0 to {MAX_DELAY:.0f} seconds (a year), not {seconds:g}"
        durations[name] = seconds
    multiplier = options.backoff.multiplier
    if multiplier and not 1 <= multiplier <= 1000:
        return f"backoff multiplier must be 1 to 1000, not {multiplier:g}"
    return CallPolicy(
        max_attempts=options.max_attempts,
        attempt_timeout=durations["attempt_timeout"],
        backoff_initial=durations["backoff initial"],
        backoff_maximum=durations["backoff maximum"],
        backoff_multiplier=multiplier,
    )


def options_of(policy: CallPolicy | None, limits: Limits) -> options_pb2.CallOptions:
    """The ``CallOptions`` a call's own policy and limits were given by (``planned`` and
    ``limits_of`` read them): what ``CallInfo.options`` tells."""
    options = options_pb2.CallOptions()
    if policy is not None:
        options.max_attempts = policy.max_attempts
        if policy.attempt_timeout:
            options.attempt_timeout.FromNanoseconds(round(policy.attempt_timeout * 1e9))
        if policy.backoff_initial or policy.backoff_maximum or policy.backoff_multiplier:
            options.backoff.initial.FromNanoseconds(round(policy.backoff_initial * 1e9))
            options.backoff.maximum.FromNanoseconds(round(policy.backoff_maximum * 1e9))
            options.backoff.multiplier = policy.backoff_multiplier
    options.concurrency = limits.concurrency
    options.concurrency_key = limits.key
    options.concurrency_per_key = limits.per_key
    if limits.rate_count:
        options.rate_limit.count = limits.rate_count
        options.rate_limit.period.FromNanoseconds(round(limits.rate_period * 1e9))
    return options


def call_problem(
    call: call_pb2.Call | options_pb2.Call, *, endpoint_required: bool = True
) -> str | None:
    """Why ``call`` (dispatched, or made by a Poll or a tail call, whose endpoint may be
    left empty for the caller's own) cannot be run, or None."""
    if not FUNCTION_NAME.fullmatch(call.function):
        return (
            f"invalid function name {call.function[:100]!r}: expected ^[a-zA-Z_][a-zA-Z0-9_<>.]*$"
        )
    if call.endpoint or endpoint_required:
        return endpoint_problem(call.endpoint)
    return None


# What the HTTP caller sends as it is (yarl, ``encoded=True``): a host name in ASCII
# (an internationalized one in its punycode form), and a path of RFC 3986 characters
# with well-formed percent escapes.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9_-]+)*\.?")
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_ARN = re.compile(r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]+:function:[A-Za-z0-9_.$:-]+")


CHECKED_ENDPOINTS = 1024
"""How many endpoints' verdicts are kept: a Dispatch's calls name the same few, and
checking one costs ~3 us in a loop of its own, ~40 us in a running scheduler (a batch of
100 calls: up to 4 ms of its event loop)."""
_KEPT_LENGTH = 2048
"""Verdicts are kept for endpoints up to this long (the cache holds what it keeps)."""


def endpoint_problem(endpoint: str) -> str | None:
    """Why no attempt could call ``endpoint``, or None: an ``http(s)://host[:port][/path]``
    URL the HTTP caller can send a request to (a host, a port from 1 to 65535, an ASCII
    path with valid percent escapes, no user information, query or fragment), or a
    Lambda function's ARN."""
    if len(endpoint) <= _KEPT_LENGTH:
        return _kept_endpoint_problem(endpoint)
    return _endpoint_problem(endpoint)


def _endpoint_problem(endpoint: str) -> str | None:
    shown = endpoint[:200]
    expected = (
        f"invalid endpoint {shown!r}: expected an http://, https:// or arn:aws:lambda: endpoint"
    )
    if not endpoint.startswith(ENDPOINT_SCHEMES):
        return expected
    if endpoint.startswith("arn:"):
        if not _ARN.fullmatch(endpoint):
            return (
                f"invalid endpoint {shown!r}: expected a Lambda function's ARN, "
                "arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]"
            )
        return None
    if not endpoint.isascii() or not endpoint.isprintable() or " " in endpoint:
        return (
            f"invalid endpoint {shown!r}: it must be ASCII without spaces or control "
            "characters (percent-encode the path, write an international host name in "
            "its xn-- form)"
        )
    try:
        parts = urlsplit(endpoint)
    except ValueError as exc:  # a bracketed host that is no IP address
        return f"invalid endpoint {shown!r}: {exc}"
    if "@" in parts.netloc:
        return f"invalid endpoint {shown!r}: user information (user@host) is not sent, leave it out"
    try:
        port = parts.port
    except ValueError:
        port = 0
    written = parts.netloc.rpartition("]")[2].rpartition(":")
    if port == 0 or (written[1] and not written[2].isdigit()):
        return f"invalid endpoint {shown!r}: the port must be a number from 1 to 65535"
    try:
        parse_endpoint_url(endpoint)
    except ValueError as exc:
        return f"invalid endpoint {shown!r}: {str(exc).rpartition(': ')[2]}"
    host = parts.netloc.rpartition(":")[0] if port is not None else parts.netloc
    if not _valid_host(host):
        kind = "IPv6 address" if host.startswith("[") else "host name or address"
        return f"invalid endpoint {shown!r}: {host[:100]!r} is no valid {kind}"
    if not _PATH.fullmatch(parts.path):
        return (
            f"invalid endpoint {shown!r}: its path must be made of URL characters, any "
            "other percent-encoded (%XX)"
        )
    return None


_kept_endpoint_problem = functools.lru_cache(maxsize=CHECKED_ENDPOINTS)(_endpoint_problem)


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _HOST_NAME.fullmatch(host) is not None


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
