"""A follower (a workflow's child whose key another call has) on PostgreSQL, whose call
another scheduler process runs: that process's end of the call, told through the
database (LISTEN/NOTIFY), makes the follower claimable at once in the process that
handed it back, not at its next look."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from dispatchlet.core.status import Status
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.store import Call, NewCall, State, Store
from dispatchlet.scheduler.store.postgres import PostgresStore
from postgres_server import fresh_database
from test_cron import FixedClock
from test_engine_memory import BOUND, ENDPOINT, NO_POLLING, POLICY, Scripted, hanging


async def until(store: Store, dispatch_id: str, ready: Callable[[Call], bool]) -> Call:
    """The call once ``ready(call)`` holds, failing after ``BOUND`` seconds."""
    deadline = time.monotonic() + BOUND
    while True:
        found = await store.get(dispatch_id)
        assert found is not None, dispatch_id
        if ready(found):
            return found
        assert time.monotonic() < deadline, f"{dispatch_id} did not get there: {found}"
        await asyncio.sleep(0.02)


async def running(engine: Engine, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(engine.run())
    try:
        await body()
    finally:
        engine.stop()
        await asyncio.wait_for(task, BOUND)


def test_a_follower_ends_when_another_process_ends_its_call(postgres_server: str) -> None:
    url = fresh_database(postgres_server)
    released = asyncio.Event()
    # A clock that stands still: the follower's next look never comes by time.
    clock = FixedClock(time.time())

    def engine(store: Store, caller: Scripted, **options: int) -> Engine:
        return Engine(
            store, caller, policy=POLICY, idle_interval=NO_POLLING, clock=clock, **options
        )

    async def scenario() -> None:
        store_a, store_b = await PostgresStore.open(url), await PostgresStore.open(url)
        # B runs the followed call, with room for nothing else; A, the follower.
        b = engine(store_b, Scripted(answers={"first": hanging(released)}), concurrency=1)
        a = engine(store_a, Scripted())
        try:

            async def in_b() -> None:
                now = clock()
                first_call = NewCall("first", ENDPOINT, b"", now + 3600)
                (first,) = await store_b.dispatch([first_call], now=now)
                b.wake()
                await until(store_b, first, lambda call: call.state is State.RUNNING)

                async def in_a() -> None:
                    (follower,) = await store_a.dispatch(
                        [NewCall("first", ENDPOINT, b"", now + 3600, follows=first)], now=now
                    )
                    a.wake()
                    # Looked at once by A, and handed back for later.
                    await until(store_a, follower, lambda call: call.ready_at > now)
                    released.set()
                    ended = await until(store_a, first, lambda call: call.done)
                    assert ended.status == Status.OK.value
                    followed = await until(store_a, follower, lambda call: call.done)
                    assert (followed.status, followed.result) == (ended.status, ended.result)

                await running(a, in_a)

            await running(b, in_b)
        finally:
            await store_a.close()
            await store_b.close()

    asyncio.run(asyncio.wait_for(scenario(), 3 * BOUND))
