"""How many attempts may be in flight to one destination (an endpoint's host, a Lambda
function): found without configuration, by additive increase and multiplicative
decrease, as TCP finds its window.

Each success raises a destination's limit by one attempt per limit's worth of successes
(about one more per round trip); THROTTLED, TIMEOUT and TEMPORARY_ERROR halve it. An
optional hard cap bounds it whatever the destination answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.status import Status
from .calls import destination

# ``destination`` keeps its old import path here (the stores and tests use it).
__all__ = ["BACKOFF", "Limiter", "Window", "destination"]

# Outcomes that say the destination is overloaded.
BACKOFF = frozenset({Status.THROTTLED, Status.TIMEOUT, Status.TEMPORARY_ERROR})


@dataclass
class Window:
    limit: float
    in_flight: int = 0


@dataclass
class Limiter:
    """The limits of every destination seen."""

    initial: float = 4.0
    minimum: float = 1.0
    cap: float | None = None
    windows: dict[str, Window] = field(default_factory=dict)

    def _window(self, key: str) -> Window:
        window = self.windows.get(key)
        if window is None:
            start = self.initial if self.cap is None else min(self.initial, self.cap)
            window = self.windows[key] = Window(start)
        return window

    def try_acquire(self, key: str) -> bool:
        """Take a slot for an attempt to ``key``; False when it is at its limit."""
        window = self._window(key)
        if window.in_flight >= int(window.limit):
            return False
        window.in_flight += 1
        return True

    def release(self, key: str, status: Status | None) -> None:
        """Give the slot back, adjusting the limit by what the attempt came to (None: it
        did not reach the destination's verdict, e.g. the scheduler is stopping)."""
        window = self._window(key)
        window.in_flight = max(0, window.in_flight - 1)
        if status in BACKOFF:
            window.limit = max(self.minimum, window.limit / 2)
        elif status is not None:
            window.limit += 1 / window.limit
            if self.cap is not None:
                window.limit = min(window.limit, self.cap)

    def room(self, key: str) -> int:
        """How many more attempts to ``key`` may start now."""
        window = self._window(key)
        return max(0, int(window.limit) - window.in_flight)

    def limit(self, key: str) -> int:
        return int(self._window(key).limit)
