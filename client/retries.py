"""When the client sends a request again: what may be resent, and after how long.

A request is resent only when the scheduler cannot have acted on it, or acting twice is
harmless: a 503 (it sheds connections past its cap, or its database is briefly away:
nothing was done), or no answer at all (connection refused, reset or closed), which
only reads and Dispatches (kept once per request id) survive being sent twice. Any
other answer, 4xx or 500, would meet the same fate again and is never retried.

The pauses grow exponentially with jitter (as boto3, Stripe and Temporal's clients do),
so that many clients shed at once come back spread out; a ``Retry-After`` the scheduler
sends is honoured as the least pause, up to ``RETRY_AFTER_CAP``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

RETRY_AFTER_CAP = 10.0
"""The longest pause a ``Retry-After`` may ask for (seconds): a scheduler, or a proxy in
front of it, asking for more would hold the caller far beyond its retry bound."""

DEFAULT_RETRIES = 4
"""Resends after the first try (five tries in all)."""
DEFAULT_RETRY_TIMEOUT = 15.0
"""Seconds from the first try after which no resend starts."""


@dataclass(frozen=True)
class Backoff:
    """The pause before the ``retry``-th resend (1 for the first): ``base`` doubled at
    each, at most ``cap``, a random half of it taken off (jitter)."""

    base: float = 0.5
    cap: float = 5.0

    def pause(
        self,
        retry: int,
        retry_after: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> float:
        backoff = min(self.cap, self.base * 2.0 ** (retry - 1))
        jittered = backoff * (1 - rng() / 2)
        if retry_after is None:
            return jittered
        return max(jittered, min(retry_after, RETRY_AFTER_CAP))
