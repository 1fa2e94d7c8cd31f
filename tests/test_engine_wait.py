"""Waiting for a call: an end recorded between the waiter's registration and its read of
the store still wakes it (a lost wake-up would stall a Wait for a second)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dispatchlet.core.status import Status
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import HttpCaller
from dispatchlet.scheduler.store import NewCall
from dispatchlet.scheduler.store.sqlite import SQLiteStore


def test_an_end_just_after_watching_began_wakes_the_waiter(tmp_path: Path) -> None:
    async def scenario() -> bool:
        store = await SQLiteStore.open(tmp_path / "s.db")
        engine = Engine(store, HttpCaller(None, insecure=True))
        try:
            now = engine.clock()
            (dispatch_id,) = await store.dispatch(
                [NewCall("f", "http://127.0.0.1:9", b"", now + 60)], now=now
            )
            (claimed,) = await store.claim(owner="me", now=now, limit=1, lease_seconds=30)
            with engine.watching(dispatch_id) as until:
                # The call ends before the waiter looks: as if while it read the store.
                await engine._end(claimed.lease, Status.OK, b"", engine.clock())
                found = await store.get(dispatch_id)
                assert found is not None
                assert found.done
                # Bounded, far below the 60 s asked for: the end was not missed.
                await asyncio.wait_for(until(60), timeout=10)
            return True
        finally:
            await store.close()

    assert asyncio.run(scenario())
