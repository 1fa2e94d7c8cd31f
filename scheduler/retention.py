"""Retention: the finished call trees whose root finished longer ago than the retention
window are deleted in the background, one small batch a transaction (``Store.purge``),
with a pause between batches, so that claims, Dispatch and the API go on between them;
and on demand (the ``Purge`` RPC, ``dispatchlet calls purge``).

Every scheduler process on a database runs its own loop: the PostgreSQL store locks
each batch's roots, skipping those another process is deleting, and SQLite's writes
take turns. A tree with a call not done, or whose descendants are still to end, is
kept until it is all done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from .clock import Clock
from .store import PURGE_BATCH, Store

logger = logging.getLogger(__name__)

PAUSE = 0.05
"""Seconds between two batches while there is more to delete: a batch holds the store
for a few milliseconds, so that deleting leaves it free most of the time."""
INTERVAL = 60.0
"""Seconds between two looks once nothing is left to delete (at most: a short window
looks more often)."""


async def purge(
    store: Store,
    *,
    before: float,
    status: int | None = None,
    failed: bool = False,
    limit: int = PURGE_BATCH,
    seconds: float | None = None,
) -> tuple[int, bool]:
    """Delete the finished call trees whose root finished before ``before`` (filtered
    as ``Store.purge`` is), one batch a transaction, for at most about ``seconds``; how
    many calls were deleted, and whether some may be left (time ran out)."""
    until = None if seconds is None else time.monotonic() + seconds
    deleted = 0
    while until is None or time.monotonic() < until:
        batch = await store.purge(before=before, status=status, failed=failed, limit=limit)
        if not batch:
            return deleted, False
        deleted += batch
        # What waits for the store goes between two batches.
        await asyncio.sleep(0)
    return deleted, True


class Retention:
    """The background deletion of the call trees older than ``window`` seconds (0:
    none), and the count of the calls deleted, on demand too (``deleted``)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        window: float,
        *,
        limit: int = PURGE_BATCH,
        pause: float = PAUSE,
        interval: float = INTERVAL,
        counted: Callable[[int], None] | None = None,
    ) -> None:
        if window < 0:
            raise ValueError("a retention window is a number of seconds, 0 for ever")
        self.store = store
        self.clock = clock
        self.window = window
        self.limit = limit
        self.pause = pause
        # A window of seconds (a test, a soak) is looked at within its own length.
        self.interval = min(interval, max(window / 2, pause))
        self.deleted = 0
        """Calls this process deleted since it started, in the background or on demand
        (a Purge)."""
        self.counted = counted
        """Told of each count (the engine's ``metrics.retention_deleted.inc``)."""
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Delete in batches until ``stop``; an error of the store is logged and tried
        again after ``interval``. With no window, nothing is ever deleted: returns."""
        while self.window and not self._stopping.is_set():
            try:
                batch = await self.store.purge(before=self.clock() - self.window, limit=self.limit)
            except Exception:
                logger.exception("deleting finished calls past the retention failed")
                batch = 0
            self.count(batch)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self.pause if batch else self.interval
                )

    def count(self, deleted: int) -> None:
        """Count ``deleted`` calls deleted (by the loop, or by a Purge)."""
        self.deleted += deleted
        if self.counted is not None and deleted:
            self.counted(deleted)

    def stop(self) -> None:
        self._stopping.set()
