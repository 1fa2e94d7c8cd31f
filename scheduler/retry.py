"""How long to wait before the next attempt of a call, and how often a workflow whose
state its code cannot read is started over."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter: attempt n waits a random time between
    half and all of ``min(cap, base * multiplier ** (n - 1))``."""

    base: float = 0.5
    cap: float = 60.0
    max_attempts: int = 50
    multiplier: float = 2.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        return self.backoff(attempts, rng.random())

    def backoff(self, attempts: int, jitter: float) -> float:
        """The wait after attempt ``attempts``, placed by ``jitter`` (in [0, 1)) between
        half and all of its ceiling."""
        ceiling: float = min(self.cap, self.base * self.multiplier ** max(attempts - 1, 0))
        return ceiling * (0.5 + jitter / 2)


MAX_RESTARTS = 3
"""How many times a call whose resume answered INCOMPATIBLE_STATE is run again from its
input (a ``StepMismatch`` excepted: starting over would repeat its steps)."""
