"""How many attempts may be in flight to one destination (an endpoint's host, a Lambda
function): found without configuration, by additive increase and multiplicative
decrease, as TCP finds its window, within a fair share of this process's pool.

A new destination's limit starts at ``initial`` and, as in TCP's slow start, grows by a
whole attempt per success (it doubles each round trip) up to ``threshold``, so that a
burst reaches what a common endpoint serves within a few round trips rather than some
hundreds of calls. Past it, or once the destination has shown overload, each success
raises the limit by one attempt per limit's worth of successes (about one more per
round trip); THROTTLED, TIMEOUT and TEMPORARY_ERROR halve it. An optional hard cap
bounds it whatever the destination answers.

A destination that hangs must not take the pool from the others:

- no destination starts more than its fair share of the pool: the pool divided among the
  destinations with attempts in flight that are not stalled (``fair_share``);
- a destination whose oldest attempt in flight has taken much longer than its attempts
  usually take (``STALL_FACTOR`` times its typical latency, at least ``STALL_FLOOR``
  seconds) is stalled: it starts nothing more until that attempt ends, and its window
  halves then, as a timeout would halve it, without waiting for the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.status import Status
from .calls import destination

# ``destination`` keeps its old import path here (the stores and tests use it).
__all__ = [
    "BACKOFF",
    "STALL_FACTOR",
    "STALL_FLOOR",
    "Limiter",
    "Window",
    "destination",
    "fair_share",
    "stalled",
]

# Outcomes that say the destination is overloaded.
BACKOFF = frozenset({Status.THROTTLED, Status.TIMEOUT, Status.TEMPORARY_ERROR})

STALL_FACTOR = 4.0
"""How many times its typical latency an attempt may take before its destination is
stalled."""
STALL_FLOOR = 10.0
"""The least time, in seconds, an attempt may take before its destination is stalled
(also the bound for a destination whose latency is not known yet)."""
LATENCY_WEIGHT = 0.2
"""The weight of the latest attempt in a destination's typical latency (a moving
average)."""


def fair_share(pool: int, active: int) -> int:
    """The most attempts one destination may have in flight when ``active``
    destinations (itself included) share a pool of ``pool``: at least one."""
    return max(1, pool // max(1, active))


def stalled(
    oldest: float | None,
    latency: float | None,
    now: float,
    *,
    factor: float = STALL_FACTOR,
    floor: float = STALL_FLOOR,
) -> bool:
    """Whether a destination whose oldest attempt in flight started at ``oldest`` (None:
    none in flight) and whose attempts usually take ``latency`` seconds (None: not
    known) is stalled at ``now``."""
    if oldest is None:
        return False
    bound = floor if latency is None else max(floor, factor * latency)
    return now - oldest > bound


@dataclass
class Window:
    limit: float
    in_flight: int = 0
    started: list[float] = field(default_factory=list)
    """When each attempt in flight started (the limiter's clock)."""
    latency: float | None = None
    """How long its attempts usually take, in seconds (None: none has ended yet)."""
    shrunk_for: float | None = None
    """The start of the stalled attempt the window last halved for: once per attempt."""
    overloaded: bool = False
    """Whether the destination has shown overload: its slow start is over."""

    @property
    def oldest(self) -> float | None:
        return min(self.started) if self.started else None


@dataclass
class Limiter:
    """The limits of every destination seen."""

    initial: float = 4.0
    threshold: float = 32.0
    """Where a limit's slow start ends (TCP's ssthresh): well under the connections
    common servers accept at once (waitress's and ``dispatchlet serve``'s 100), past
    which requests wait unread."""
    minimum: float = 1.0
    cap: float | None = None
    windows: dict[str, Window] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    stall_factor: float = STALL_FACTOR
    stall_floor: float = STALL_FLOOR

    def _window(self, key: str) -> Window:
        window = self.windows.get(key)
        if window is None:
            start = self.initial if self.cap is None else min(self.initial, self.cap)
            window = self.windows[key] = Window(start)
        return window

    def _stalled(self, window: Window, now: float) -> bool:
        """Whether ``window``'s destination is stalled now; its window halves once for
        each attempt that stalls it."""
        oldest = window.oldest
        if not stalled(
            oldest, window.latency, now, factor=self.stall_factor, floor=self.stall_floor
        ):
            return False
        if window.shrunk_for != oldest:
            window.shrunk_for = oldest
            self._halve(window)
        return True

    def _halve(self, window: Window) -> None:
        window.limit = max(self.minimum, window.limit / 2)
        window.overloaded = True

    def acquire(self, key: str) -> float | None:
        """Take a slot for an attempt to ``key``: when it started (to give to
        ``release``), or None when the destination is at its limit or stalled."""
        window = self._window(key)
        now = self.clock()
        if window.in_flight >= int(window.limit) or self._stalled(window, now):
            return None
        window.in_flight += 1
        window.started.append(now)
        return now

    def try_acquire(self, key: str) -> bool:
        """Take a slot for an attempt to ``key``; False when it is at its limit."""
        return self.acquire(key) is not None

    def release(self, key: str, status: Status | None, started: float | None = None) -> None:
        """Give the slot back, adjusting the limit by what the attempt came to (None: it
        did not reach the destination's verdict, e.g. the scheduler is stopping);
        ``started``: what ``acquire`` gave (else the latest slot taken is given back)."""
        window = self._window(key)
        window.in_flight = max(0, window.in_flight - 1)
        if started is not None and started in window.started:
            window.started.remove(started)
        elif window.started:
            started = window.started.pop()
        if status is not None and status is not Status.TIMEOUT and started is not None:
            took = max(0.0, self.clock() - started)
            previous = window.latency
            window.latency = (
                took if previous is None else previous + LATENCY_WEIGHT * (took - previous)
            )
        if status in BACKOFF:
            if status is Status.TIMEOUT and window.shrunk_for == started:
                return  # halved already, when the attempt stalled its destination
            self._halve(window)
        elif status is not None:
            starting = not window.overloaded and window.limit < self.threshold
            window.limit += min(1, self.threshold - window.limit) if starting else 1 / window.limit
            if self.cap is not None:
                window.limit = min(window.limit, self.cap)

    def room(self, key: str) -> int:
        """How many more attempts to ``key`` may start now, by its window alone."""
        window = self._window(key)
        if self._stalled(window, self.clock()):
            return 0
        return max(0, int(window.limit) - window.in_flight)

    def rooms(self, pool: int) -> Callable[[str], int]:
        """How many more attempts to each destination may start now in a pool of
        ``pool``: within its window, and within its fair share of the pool among the
        destinations with attempts in flight that are not stalled (itself included)."""
        now = self.clock()
        busy = {
            key
            for key, window in self.windows.items()
            if window.in_flight > 0 and not self._stalled(window, now)
        }

        def room(key: str) -> int:
            active = len(busy | {key})
            share = fair_share(pool, active) - self._window(key).in_flight
            return max(0, min(self.room(key), share))

        return room

    def startable(self, pool: int) -> int:
        """How many attempts may start now in a pool of ``pool``, by these limits
        alone: the room of every destination seen (``rooms``), and a new one's. A claim
        asks the store for no more, rather than reading calls it would leave."""
        room = self.rooms(pool)
        seen = sum(room(key) for key in list(self.windows))
        start = self.initial if self.cap is None else min(self.initial, self.cap)
        return seen + max(1, min(int(start), pool))

    def limit(self, key: str) -> int:
        return int(self._window(key).limit)
