"""Waiting for a call: an end recorded between the waiter's registration and its read of
the store still wakes it (a lost wake-up would stall a Wait for a second), and so does a
retry recorded (a Wait may answer on each failed attempt)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dispatchlet.core.status import Status
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import HttpCaller, Outcome
from dispatchlet.scheduler.store import NewCall, State
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


def test_a_retry_recorded_wakes_the_waiter_and_it_can_wait_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open(tmp_path / "s.db")
        engine = Engine(store, HttpCaller(None, insecure=True))
        try:
            now = engine.clock()
            (dispatch_id,) = await store.dispatch(
                [NewCall("f", "http://127.0.0.1:9", b"", now + 3600)], now=now
            )
            (claimed,) = await store.claim(owner="me", now=now, limit=1, lease_seconds=30)
            failed = Outcome(Status.TEMPORARY_ERROR, error_type="HTTPError", message="503")
            with engine.watching(dispatch_id) as until:
                await engine._record(claimed.call, claimed.lease, failed)
                found = await store.get(dispatch_id)
                assert found is not None
                assert (found.state, found.status) == (State.READY, Status.TEMPORARY_ERROR)
                # Woken by the retry, far below the 60 s asked for.
                await asyncio.wait_for(until(60), timeout=10)
                # And again by the end of the next attempt.
                (again,) = await store.claim(
                    owner="me", now=found.ready_at, limit=1, lease_seconds=30
                )
                await engine._end(again.lease, Status.OK, b"", engine.clock())
                await asyncio.wait_for(until(60), timeout=10)
        finally:
            await store.close()

    asyncio.run(scenario())
