"""Destinations that hang do not take the pool from the others: each destination gets
at most a fair share of the pool while others have attempts to make, a claim deals its
batch across destinations, and a destination whose attempts take far longer than they
usually do stops getting new ones (its window halved) before they time out."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler.concurrency import (
    STALL_FACTOR,
    STALL_FLOOR,
    Limiter,
    fair_share,
    stalled,
)
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.store import NewCall
from dispatchlet.scheduler.store.claims import fitting, may_find_more
from dispatchlet.scheduler.store.memory import MemoryStore

BOUND = 60.0  # how long the healthy calls may take before the test fails, whatever the load


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the rules ------------------------------------------------------------------------


def test_the_fair_share_divides_the_pool_among_active_destinations() -> None:
    assert fair_share(128, 1) == 128
    assert fair_share(128, 0) == 128
    assert fair_share(128, 41) == 3
    assert fair_share(128, 500) == 1  # never none


def test_a_destination_is_stalled_once_its_oldest_attempt_takes_far_longer_than_usual() -> None:
    assert not stalled(None, 0.1, 1e6)
    assert not stalled(100.0, None, 100.0 + STALL_FLOOR)
    assert stalled(100.0, None, 100.0 + STALL_FLOOR + 0.01)
    slow = 30.0
    assert not stalled(100.0, slow, 100.0 + STALL_FACTOR * slow)
    assert stalled(100.0, slow, 100.0 + STALL_FACTOR * slow + 0.01)


def test_no_destination_starts_more_than_its_share_while_others_are_busy() -> None:
    limiter = Limiter(initial=8.0)
    for key in ("a", "b", "c"):
        assert limiter.acquire(key) is not None
    room = limiter.rooms(pool=12)
    assert [room(k) for k in ("a", "b", "c")] == [3, 3, 3]  # 12 among 3, one in flight each
    assert room("new") == 3  # a fourth destination counts itself: 12 // 4
    assert limiter.rooms(pool=12)("a") == 3
    alone = Limiter(initial=8.0)
    assert alone.rooms(pool=12)("a") == 8  # alone: its window is the bound


def test_a_stalled_destination_starts_nothing_and_its_window_halves_before_the_timeout() -> None:
    clock = Clock()
    limiter = Limiter(initial=8.0, clock=clock)
    # Its attempts usually take 0.5 s.
    for _ in range(4):
        slot = limiter.acquire("d")
        clock.now += 0.5
        limiter.release("d", Status.OK, slot)
    before = limiter.windows["d"].limit
    hung = limiter.acquire("d")
    assert hung is not None
    clock.now += STALL_FLOOR / 2
    assert limiter.room("d") > 0  # slow, not stalled yet
    clock.now += STALL_FLOOR
    assert limiter.room("d") == 0
    assert limiter.acquire("d") is None
    assert limiter.windows["d"].limit == before / 2
    assert limiter.rooms(pool=100)("d") == 0
    # Halved once for this attempt, not again when it times out.
    limiter.release("d", Status.TIMEOUT, hung)
    assert limiter.windows["d"].limit == before / 2
    assert limiter.room("d") == int(before / 2)


def test_a_stalled_destination_leaves_its_share_to_the_others() -> None:
    clock = Clock()
    limiter = Limiter(initial=64.0, clock=clock)
    limiter.acquire("hung")
    slot = limiter.acquire("healthy")
    assert limiter.rooms(pool=64)("healthy") == 31  # 64 // 2, one in flight
    clock.now += 0.1
    limiter.release("healthy", Status.OK, slot)
    clock.now += STALL_FLOOR + 1
    limiter.acquire("healthy")
    assert limiter.rooms(pool=64)("healthy") == 63  # the hung one is no longer counted


def test_a_claim_deals_its_batch_across_destinations() -> None:
    candidates = [(f"h{i}-{n}", f"hung{i}") for i in range(3) for n in range(4)]
    candidates += [(f"ok-{n}", "healthy") for n in range(4)]
    chosen = fitting(candidates, cap=None, running={}, room=lambda key: 4)
    assert [c.split("-")[0] for c in chosen[:4]] == ["h0", "h1", "h2", "ok"]
    assert Counter(c.split("-")[0] for c in chosen[:8])["ok"] == 2
    assert sorted(chosen) == sorted(c for c, _ in candidates)


def test_a_short_claim_reads_its_whole_window_only_if_a_destination_may_be_hidden() -> None:
    hung = [(f"hung-{n}", "hung") for n in range(8)]
    room = {"hung": 0, "ok": 4}.__getitem__
    # Every destination of the window is among the candidates, and full: nothing to find.
    assert not may_find_more(hung, [], 1, cap=None, running={}, room=room)
    # The window holds another destination, whose calls the full one's hide.
    assert may_find_more(hung, [], 2, cap=None, running={}, room=room)
    # A destination among them has room left: more of its calls may follow.
    some = [*hung, ("ok-0", "ok")]
    assert may_find_more(some, ["ok-0"], 2, cap=None, running={}, room=room)
    full = {"hung": 0, "ok": 1}.__getitem__
    assert not may_find_more(some, ["ok-0"], 2, cap=None, running={}, room=full)
    # The hard cap, every process's leases counted, fills a destination too.
    assert not may_find_more(some, [], 2, cap=3, running={"hung": 3, "ok": 3}, room=None)
    assert may_find_more(some, [], 2, cap=3, running={"hung": 3, "ok": 2}, room=None)


# --- the engine -----------------------------------------------------------------------

HUNG_HOSTS = 40
CALLS_PER_HUNG_HOST = 4
HEALTHY_CALLS = 100


class HungOrHealthy:
    """Endpoints on ``hung*`` hosts answer nothing until ``released``; the others at once."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.hanging = 0

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        if "hung" in endpoint:
            self.hanging += 1
            await self.released.wait()
        response = function_pb2.RunResponse(status=Status.OK.value)
        response.exit.result.output.type_url = "test/ok"
        return Outcome(Status.OK, response)

    async def close(self) -> None:
        pass


async def healthy_calls_while_others_hang() -> tuple[int, int]:
    """Once the healthy calls are done: how many hung attempts were in flight, and how
    many hung calls were done."""
    store = await MemoryStore.open()
    caller = HungOrHealthy()
    engine = Engine(store, caller, idle_interval=0.01)
    now = time.time()
    hung = [
        NewCall("f", f"http://hung{host}.test", b"", now + 3600)
        for host in range(HUNG_HOSTS)
        for _ in range(CALLS_PER_HUNG_HOST)
    ]
    hung_ids = await store.dispatch(hung, now=now)  # first: they are the oldest
    healthy = [NewCall("f", "http://healthy.test", b"", now + 3600)] * HEALTHY_CALLS
    healthy_ids = await store.dispatch(healthy, now=now)
    task = asyncio.create_task(engine.run())
    started = time.monotonic()
    try:
        for dispatch_id in healthy_ids:
            with engine.watching(dispatch_id) as changed:
                while True:
                    found = await store.get(dispatch_id)
                    assert found is not None
                    if found.done:
                        assert found.status == Status.OK.value
                        break
                    left = BOUND - (time.monotonic() - started)
                    assert left > 0, (
                        f"the healthy destination's calls were not all done within {BOUND} s "
                        f"while {caller.hanging} attempts hung"
                    )
                    await changed(min(left, 0.05))
        finished = [c for c in [await store.get(i) for i in hung_ids] if c and c.done]
        return caller.hanging, len(finished)
    finally:
        caller.released.set()
        engine.stop()
        await asyncio.wait_for(task, BOUND)
        await store.close()


def test_hung_destinations_do_not_starve_a_healthy_one() -> None:
    hanging, hung_done = asyncio.run(healthy_calls_while_others_hang())
    assert hung_done == 0  # they were still hanging when the healthy calls were done
    assert hanging > 0
