"""The schedules' ticker: in the background of every scheduler process, it dispatches
the calls of the schedules that are due (``Store.tick_schedules``: each tick once,
whichever process takes it, with the key ``schedule:NAME:TICK``) and sleeps until the
earliest next tick, or until a schedule is created or resumed in this process.

Ticks are decided by the scheduler's clock (``clock.py``), the one leases and
readiness follow: on PostgreSQL the database's, so that every process agrees on when a
tick is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..proto.dispatchlet.scheduler.v1 import options_pb2
from .call_limits import LimitsInvalid, limits_of
from .calls import planned
from .clock import Clock
from .cron import Cron, InvalidSchedule, tick_key
from .store import NewCall, Store
from .store.limits import NO_LIMITS
from .store.schedules import Schedule, TickPlan

logger = logging.getLogger(__name__)

BATCH = 100
"""Schedules one transaction ticks, at most."""
MAX_SLEEP = 5.0
"""The longest sleep between two looks: a schedule created by another process on the
database is ticked by this one within that (the other ticks it meanwhile)."""
RETRY = 1.0
"""Seconds before looking again after an error, or at a due schedule that cannot be
ticked (its time zone missing from this machine's database)."""
EARLY = 0.001
"""What a sleep's end may precede the tick by (the event loop's timer resolution)."""


class Ticker:
    """Dispatches the due ticks of the schedules until ``stop``."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        expiration: float,
        dispatched: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.expiration = expiration
        """Seconds each tick's call is given (the API's default expiration)."""
        self.dispatched = dispatched
        """Told how many calls each batch dispatched (the engine wakes on it)."""
        self.ticks = 0
        """Ticks this process dispatched."""
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._refused: set[str] = set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._changed.clear()
            delay = await self._tick_once()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._woken(), delay)

    async def _woken(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({stop, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            changed.cancel()

    async def _tick_once(self) -> float:
        """Dispatch what is due; how long to sleep before the next look."""
        ticked = 0
        try:
            now = self.clock()
            earliest = await self.store.next_schedule_tick()
            # A read first: no write transaction while nothing is due.
            if earliest is not None and earliest <= now:
                done = await self.store.tick_schedules(
                    now=now, plan=lambda schedule: self.plan(schedule, now), limit=BATCH
                )
                ticked = len(done)
                if ticked:
                    self.ticks += ticked
                    if self.dispatched is not None:
                        self.dispatched(ticked)
                    if ticked == BATCH:
                        return 0.0
                earliest = await self.store.next_schedule_tick()
        except Exception:
            logger.exception("dispatching the schedules' ticks failed; trying again")
            return RETRY
        if earliest is None:
            return MAX_SLEEP
        wait = earliest - self.clock() + EARLY
        # Due still: one this process cannot plan (logged), or one another process is
        # ticking now (its transaction holds the row).
        return min(MAX_SLEEP, wait if wait > 0 else RETRY if not ticked else 0.0)

    def plan(self, schedule: Schedule, now: float) -> TickPlan | None:
        """The call of ``schedule``'s due tick at ``now`` and its next tick; None (logged
        once) when the schedule cannot be read here."""
        try:
            due = Cron(schedule.cron, schedule.timezone).due(schedule.next_tick, now)
        except InvalidSchedule as exc:
            self._refuse(schedule, str(exc))
            return None
        if due is None:
            return None
        tick, next_tick = due
        policy = None
        limits = NO_LIMITS
        if schedule.options:
            options = options_pb2.CallOptions.FromString(schedule.options)
            plan = planned(options, now)
            try:
                limits = limits_of(options)
            except LimitsInvalid as exc:
                plan = str(exc)
            if isinstance(plan, str):  # checked when stored: a change of the limits since
                self._refuse(schedule, plan)
                return None
            policy = plan.policy
        call = NewCall(
            function=schedule.function,
            endpoint=schedule.endpoint,
            input=schedule.input,
            expires_at=now + (schedule.expiration or self.expiration),
            key=tick_key(schedule.name, tick),
            policy=policy,
            limits=limits,
        )
        return TickPlan(tick=tick, next_tick=next_tick, call=call)

    def _refuse(self, schedule: Schedule, reason: str) -> None:
        """Log, once per schedule, why it cannot tick in this process."""
        if schedule.name not in self._refused:
            self._refused.add(schedule.name)
            logger.error("the schedule %r cannot tick here: %s", schedule.name, reason)

    def changed(self) -> None:
        """A schedule was created, resumed or synced by this process: look again now."""
        self._changed.set()

    def stop(self) -> None:
        self._stopping.set()
