"""The scheduler's clock: the one time by which leases, readiness and expiry are decided.

Stored times (``ready_at``, ``lease_expires``, ``expires_at``, ...) are seconds since the
epoch, compared with the ``now`` each store method is given. Read from the wall clock,
they would follow its jumps: forward, a lease in force looks lapsed (its call runs
beside itself) and calls expire unrun; backward, the ready backlog waits out the jump;
and processes whose wall clocks disagree take each other's calls. So ``now`` comes from
a clock that does not jump: a reference time, taken once, advanced by the monotonic
clock (``steady``).

- One process (SQLite, memory): the reference is the wall clock at start
  (``SteadyClock``). The wall clock is compared with it at most once a second, and a
  jump of a second or more is logged once, as a warning: the scheduler keeps its own
  time. It slews toward the wall clock by at most 0.5 ms per second (NTP's rate), never
  stepping: NTP's small corrections are absorbed within minutes, so that the times users
  see stay the wall clock's, while a large jump is not felt (15 minutes would take three
  weeks to catch up). A restart takes the wall clock's time again, unless it is behind
  the latest time the store recorded (``WrittenTime``): then the clock starts from that
  time (logged), so that what was ready before the restart is ready after it.
- Several processes (PostgreSQL): the reference is the database's clock
  (``DatabaseClock``), read at open and every 30 s. Of three readings, the one with the
  shortest round trip is taken, as of the midpoint of its round trip (as NTP does). Every
  process sharing the database then agrees with the database's clock within half a round
  trip (milliseconds) plus the drift of its monotonic clock over 30 s (microseconds),
  whatever its own wall clock says. Against leases of tens of seconds that is as good as
  comparing with the database's ``now()`` in SQL, as graphile-worker does, and it keeps
  one set of statements for both stores (they are given ``now``; ``now()`` in SQL would
  take a second set, and a second code path for every decision ``rules`` takes by
  ``now``). A jump of the database's clock is followed at the next reading (logged), so
  that the processes keep agreeing with one another.

Times sent to an endpoint (a Run request's expiration) are compared with its wall clock:
``wall_skew`` is what to add to the scheduler's times to put them on this machine's wall
clock, the one an endpoint on this machine reads, and, since a jump is most often a
correction, the one other machines agree with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

logger = logging.getLogger("dispatchlet.scheduler")

CHECK_EVERY = 1.0
"""How often, at most, the wall clock is compared with the scheduler's, in seconds."""
JUMP = 1.0
"""A change of the wall clock against the monotonic clock that is logged as a jump (and
the skew under which times sent to endpoints are not translated), in seconds."""
SLEW = 0.0005
"""How fast the scheduler's clock may catch up with the wall clock: 0.5 ms per second."""
SYNC_EVERY = 30.0
"""How often the database's clock is read again, in seconds."""
SAMPLES = 3
"""Readings of the database's clock per sync; the one with the shortest round trip wins."""

Wall = Callable[[], float]


BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def steady() -> float:
    """Seconds of a clock that never jumps: the monotonic clock, counting the time the
    machine was suspended where the system tells it (Linux's ``CLOCK_BOOTTIME``), so
    that a laptop's sleep is not taken for a jump of the wall clock."""
    return time.clock_gettime(BOOTTIME) if BOOTTIME is not None else time.monotonic()


class Clock(Protocol):
    """Seconds since the epoch, without jumps; what the engine and the API run on."""

    def __call__(self) -> float: ...

    def wall_skew(self) -> float:
        """What to add to this clock's times to put them on this machine's wall clock:
        0 while the two agree within ``JUMP``."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class DatabaseTime(Protocol):
    """A store with a clock of its own, shared by every process on it."""

    async def database_time(self) -> float:
        """The database's time, in seconds since the epoch."""
        ...


@runtime_checkable
class WrittenTime(Protocol):
    """A store that keeps, across restarts, a bound on the times it was given."""

    def written_until(self) -> float | None:
        """A time later than every time written in the store, if any was."""
        ...


def _skew(wall: Wall, now: float) -> float:
    skew = wall() - now
    return skew if abs(skew) >= JUMP else 0.0


def _ahead(seconds: float) -> str:
    return f"{abs(seconds):.1f} s {'ahead of' if seconds > 0 else 'behind'}"


class SteadyClock:
    """The wall clock's time at start (``not_before`` if the wall clock is behind it),
    advanced by the monotonic clock, slewing toward the wall clock by at most ``slew``
    seconds per second; a jump of the wall clock is logged, not followed."""

    def __init__(
        self,
        *,
        wall: Wall = time.time,
        monotonic: Wall = steady,
        slew: float = SLEW,
        not_before: float | None = None,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._slew = slew
        self._since = self._checked = monotonic()
        self._base = wall()
        self._correction = 0.0
        """The wall clock minus this clock at the last check: what the slew works off."""
        if not_before is not None and self._base < not_before:
            behind = not_before - self._base
            if behind >= JUMP:
                logger.warning(
                    "the wall clock is %.1f s behind the latest time the scheduler stored "
                    "(it was set back since): the scheduler starts "
                    "from that time, so that calls ready before are ready now, and catches "
                    "up with the wall clock by at most %.1f ms per second",
                    behind,
                    slew * 1000,
                    extra={"behind_wall_seconds": round(-behind, 3)},
                )
            self._base, self._correction = not_before, -behind

    def __call__(self) -> float:
        now = self._monotonic()
        if now - self._checked >= CHECK_EVERY:
            self._check(now)
        return self._at(now)

    def _at(self, monotonic: float) -> float:
        elapsed = monotonic - self._since
        # Continuous and never going back: the correction grows at most at the slew rate.
        limit = self._slew * elapsed
        return self._base + elapsed + max(-limit, min(limit, self._correction))

    def _check(self, monotonic: float) -> None:
        self._checked = monotonic
        now = self._at(monotonic)
        applied = now - self._base - (monotonic - self._since)
        expected = self._correction - applied  # had the wall clock kept the monotonic pace
        offset = self._wall() - now
        jump = offset - expected
        if abs(jump) >= JUMP:
            logger.warning(
                "the wall clock jumped %s by %.1f s: the scheduler keeps its own time for "
                "leases, readiness and expiry (now %s the wall clock) and catches up with "
                "it by at most %.1f ms per second",
                "forward" if jump > 0 else "back",
                abs(jump),
                _ahead(-offset),
                self._slew * 1000,
                extra={"jump_seconds": round(jump, 3), "behind_wall_seconds": round(offset, 3)},
            )
        self._base, self._since, self._correction = now, monotonic, offset

    def wall_skew(self) -> float:
        return _skew(self._wall, self())

    async def close(self) -> None:
        pass


class DatabaseClock:
    """The database's time, read every ``every`` seconds and advanced in between by the
    monotonic clock. Made by ``opened`` (read once before use), kept in sync by
    ``start`` until ``close``."""

    def __init__(
        self,
        read: Callable[[], Awaitable[float]],
        *,
        wall: Wall = time.time,
        monotonic: Wall = steady,
        every: float = SYNC_EVERY,
    ) -> None:
        self._read = read
        self._wall = wall
        self._monotonic = monotonic
        self._every = every
        self._base: float | None = None
        self._since = 0.0
        self._task: asyncio.Task[None] | None = None
        self.round_trip = 0.0
        """The round trip of the reading in use, in seconds: twice the error at most."""

    @classmethod
    async def opened(
        cls,
        read: Callable[[], Awaitable[float]],
        *,
        wall: Wall = time.time,
        monotonic: Wall = steady,
        every: float = SYNC_EVERY,
    ) -> DatabaseClock:
        clock = cls(read, wall=wall, monotonic=monotonic, every=every)
        await clock.sync()
        skew = wall() - clock()
        if abs(skew) >= JUMP:
            logger.warning(
                "this machine's wall clock is %s the database's: leases, readiness and "
                "expiry follow the database's clock",
                _ahead(skew),
                extra={"wall_skew_seconds": round(skew, 3)},
            )
        return clock

    def __call__(self) -> float:
        if self._base is None:
            raise RuntimeError("the database's clock was never read: use DatabaseClock.opened")
        return self._base + (self._monotonic() - self._since)

    async def sync(self) -> None:
        """Read the database's clock again; it is followed even if it jumped (logged), so
        that every process on the database keeps its time."""
        samples = []
        for _ in range(SAMPLES):
            sent = self._monotonic()
            told = await self._read()
            back = self._monotonic()
            samples.append((back - sent, told, (sent + back) / 2))
        round_trip, told, midpoint = min(samples)
        if self._base is not None:
            moved = told - (self._base + (midpoint - self._since))
            if abs(moved) >= JUMP:
                logger.warning(
                    "the database's clock jumped %s by %.1f s: followed, as every "
                    "scheduler process on the database does",
                    "forward" if moved > 0 else "back",
                    abs(moved),
                    extra={"jump_seconds": round(moved, 3)},
                )
        self._base, self._since, self.round_trip = told, midpoint, round_trip

    def start(self) -> None:
        """Read the database's clock every ``every`` seconds, until ``close``."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_in_sync())

    async def _keep_in_sync(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self.sync()
            except Exception as exc:  # the database is restarting: the monotonic clock holds
                logger.warning("reading the database's clock failed (%s); trying again", exc)

    def wall_skew(self) -> float:
        return _skew(self._wall, self())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def clock_for(store: object, *, wall: Wall = time.time) -> Clock:
    """The clock of a scheduler process on ``store``: the database's, kept in sync, when
    the store has one (several processes share it), else the steady one, from the
    latest time the store recorded if the wall clock is behind it."""
    if isinstance(store, DatabaseTime):
        clock = await DatabaseClock.opened(store.database_time, wall=wall)
        clock.start()
        return clock
    written = store.written_until() if isinstance(store, WrittenTime) else None
    return SteadyClock(wall=wall, not_before=written)
