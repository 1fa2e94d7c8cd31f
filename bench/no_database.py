"""``dispatchlet`` with a scheduler that keeps its calls in memory only, for the benches'
ceiling row: what one scheduler process reaches when its store costs next to nothing.
Never a way to run the scheduler (nothing survives it).

    python bench/no_database.py scheduler --port 0 [options]

The store is the Store contract's own in-memory one, with claims that take the oldest
ready calls from the head of a queue (its own claims read every unfinished call, to
follow the SQL stores' ranked window, which is what a test store needs, not a ceiling):
no limits, no round-robin across roots, so it holds only for calls with no limits, as
the benches dispatch them.
"""

from __future__ import annotations

import runpy
from collections import Counter, deque
from collections.abc import Callable, Sequence

from dispatchlet.scheduler import server
from dispatchlet.scheduler.store import Claimed, Lease, NewCall, State, Store
from dispatchlet.scheduler.store.limits import room_as_read
from dispatchlet.scheduler.store.memory import MemoryStore


class QueueStore(MemoryStore):
    """``MemoryStore`` whose claims take the ready calls in the order they came."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[str] = deque()

    def _insert(self, calls: Sequence[NewCall], now: float) -> list[str]:
        ids = super()._insert(calls, now)
        self._queue.extend(ids)
        return ids

    async def release(self, lease: Lease, *, ready_at: float) -> bool:
        released = await super().release(lease, ready_at=ready_at)
        if released:  # back at the head: it was the oldest
            self._queue.appendleft(lease.dispatch_id)
        return released

    async def claim(
        self,
        *,
        owner: str,
        now: float,
        limit: int,
        lease_seconds: float,
        cap: int | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[Claimed]:
        del cap  # one process: the engine's own limiter holds the cap
        room = room_as_read(room)
        chosen: list[str] = []
        taken: Counter[str] = Counter()
        while self._queue and len(chosen) < limit:
            row = self._rows[self._queue[0]]
            if row.state is not State.READY:  # leased by its Dispatch, or finished
                self._queue.popleft()
                continue
            if room is not None and room(row.destination) <= taken[row.destination]:
                break
            self._queue.popleft()
            chosen.append(row.dispatch_id)
            taken[row.destination] += 1
        return self._take(chosen, {}, owner, now, now + lease_seconds)


async def open_queue_store(database: str) -> Store:
    del database
    return QueueStore()


if __name__ == "__main__":
    server.open_store = open_queue_store
    runpy.run_module("dispatchlet", run_name="__main__")  # as `python -m dispatchlet`
