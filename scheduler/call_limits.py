"""The concurrency and rate limits a call's options ask for (``CallOptions``), checked
the same way for a Dispatch and for a Poll's calls."""

from __future__ import annotations

from ..core.errors import InvalidArgument
from ..proto.dispatchlet.scheduler.v1 import options_pb2
from .calls import duration_seconds
from .store.limits import Limits, limit_problem


class LimitsInvalid(InvalidArgument, ValueError):
    """Limits no call can have; the message says why (a 400 wherever it surfaces)."""


def limits_of(options: options_pb2.CallOptions) -> Limits:
    """The limits of a call with ``options``; ``LimitsInvalid`` when they make no sense
    (a rate limit of 0 calls per period, a negative or missing period, a concurrency key
    too long)."""
    rate = options.rate_limit
    period = duration_seconds(rate.period) if options.HasField("rate_limit") else 0.0
    limits = Limits(
        concurrency=options.concurrency,
        key=options.concurrency_key,
        per_key=options.concurrency_per_key,
        rate_count=rate.count,
        rate_period=period,
    )
    problem = limit_problem(limits)
    if problem is not None:
        raise LimitsInvalid(problem)
    if options.HasField("rate_limit") and rate.count == 0:
        raise LimitsInvalid("a rate limit of 0 calls per period: give a count of at least 1")
    return limits
