"""A Dispatch hands the calls the local engine has room for over to it: the store leases
them in the Dispatch's transaction, as a claim would, and the engine starts them with no
claim. Held against every store, then the engine and its API in process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2
from dispatchlet.scheduler.api import Api
from dispatchlet.scheduler.concurrency import Limiter
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.store import Claimed, Handoff, NewCall, RequestId, State, Store
from dispatchlet.scheduler.store.limits import Limits
from dispatchlet.scheduler.store.memory import MemoryStore
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from postgres_server import fresh_database
from test_engine_memory import BOUND, ENDPOINT, Answer, Scripted, returning
from test_store_contract import LEASE, NOW, OK, STORES, Wakes, call, with_store

Opener = Callable[[], Coroutine[Any, Any, Store]]
OTHER = "http://127.0.0.2:8000"


@pytest.fixture(params=sorted(STORES))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    opener = STORES[request.param](request, tmp_path)
    opener.kind = request.param  # type: ignore[attr-defined]
    return opener


def handoff(limit: int = 10, room: int = 10, owner: str = "s1") -> Handoff:
    return Handoff(owner, LEASE, limit, lambda _: room)


def test_a_handed_call_is_leased_as_a_claim_would_lease_it(open_store: Any) -> None:
    async def body(store: Store) -> None:
        given = handoff()
        (dispatch_id,) = await store.dispatch([call("a")], now=NOW, handoff=given)
        (handed,) = given.claimed
        assert handed.call.dispatch_id == dispatch_id
        assert (handed.call.state, handed.call.attempts) == (State.RUNNING, 1)
        assert handed.lease.expires_at == NOW + LEASE
        stored = await store.get(dispatch_id)
        assert stored is not None
        assert (stored.state, stored.attempts) == (State.RUNNING, 1)
        # Leased: no claim takes it while the lease holds.
        assert await store.claim(owner="s2", now=NOW + 1, limit=10, lease_seconds=LEASE) == []
        # Lapsed, it is claimed again, its attempts counted on, under a newer token.
        later = NOW + LEASE + 1
        (again,) = await store.claim(owner="s2", now=later, limit=10, lease_seconds=LEASE)
        assert again.call.attempts == 2
        assert again.lease.token > handed.lease.token
        # The handed attempt's late answer is fenced off; the current one is recorded.
        assert not await store.finish(handed.lease, OK, b"late", now=later + 1)
        assert await store.finish(again.lease, OK, b"ok", now=later + 1)
        done = await store.get(dispatch_id)
        assert done is not None
        assert (done.state, done.result) == (State.DONE, b"ok")

    with_store(open_store, body)


def test_a_batchs_handed_calls_are_leased_as_a_lone_one_is(open_store: Any) -> None:
    """Handed over among calls left to the claims, in one Dispatch: each leased with its
    first attempt counted, fenced by its own lease; the others untouched by it."""

    async def body(store: Store) -> None:
        given = handoff()
        ids = await store.dispatch(
            [call("a"), call("later", ready_at=NOW + 1), call("b")], now=NOW, handoff=given
        )
        assert [item.call.dispatch_id for item in given.claimed] == [ids[0], ids[2]]
        for item in given.claimed:
            stored = await store.get(item.call.dispatch_id)
            assert stored is not None
            assert (stored.state, stored.attempts) == (State.RUNNING, 1)
            assert item.lease.expires_at == NOW + LEASE
        later = await store.get(ids[1])
        assert later is not None
        assert (later.state, later.attempts) == (State.READY, 0)
        # Its first claim counts its first attempt, as for any call stored ready.
        (claimed,) = await store.claim(owner="s2", now=NOW + 1, limit=10, lease_seconds=LEASE)
        assert (claimed.call.dispatch_id, claimed.call.attempts) == (ids[1], 1)
        for item in [*given.claimed, claimed]:
            assert await store.finish(item.lease, OK, b"ok", now=NOW + 2)

    with_store(open_store, body)


def test_only_ready_unlimited_calls_are_handed_over(open_store: Any) -> None:
    async def body(store: Store) -> None:
        given = handoff()
        ids = await store.dispatch(
            [
                call("plain"),
                call("delayed", ready_at=NOW + 60),
                call("limited", limits=Limits(concurrency=5)),
                call("rated", limits=Limits(rate_count=5, rate_period=1.0)),
            ],
            now=NOW,
            handoff=given,
        )
        handed = [item.call.dispatch_id for item in given.claimed]
        assert handed == ids[:1]
        # What was not handed over is left ready, for the claims.
        claimed = await store.claim(owner="s1", now=NOW, limit=10, lease_seconds=LEASE)
        expected = set(ids[2:])
        assert {c.call.dispatch_id for c in claimed} == expected
        delayed = await store.get(ids[1])
        assert delayed is not None
        assert (delayed.state, delayed.attempts) == (State.READY, 0)

    with_store(open_store, body)


def test_duplicates_of_earlier_requests_and_keys_are_not_handed_over(open_store: Any) -> None:
    async def body(store: Store) -> None:
        request = RequestId("req-1", b"digest")
        (first,) = await store.dispatch([call("a")], now=NOW, request=request)
        (keyed,) = await store.dispatch([call("k", key="the-key")], now=NOW)
        again, repeated = handoff(), handoff()
        assert await store.dispatch([call("a")], now=NOW, request=request, handoff=again) == [first]
        assert await store.dispatch([call("k", key="the-key")], now=NOW, handoff=repeated) == [
            keyed
        ]
        assert again.claimed == []
        assert repeated.claimed == []
        # Both are still ready, left to a claim, which counts their first attempt.
        claimed = await store.claim(owner="s1", now=NOW, limit=10, lease_seconds=LEASE)
        assert sorted((c.call.dispatch_id, c.call.attempts) for c in claimed) == sorted(
            [(first, 1), (keyed, 1)]
        )

    with_store(open_store, body)


def test_no_more_are_handed_over_than_the_limit_and_each_destinations_room(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        rooms = {"http://127.0.0.1:8000": 1, OTHER: 5}
        given = Handoff("s1", LEASE, 2, lambda where: rooms.get(where, 0))
        ids = await store.dispatch(
            [call("a1"), call("a2"), call("b1", endpoint=OTHER), call("b2", endpoint=OTHER)],
            now=NOW,
            handoff=given,
        )
        handed = [item.call.dispatch_id for item in given.claimed]
        assert handed == [ids[0], ids[2]]
        left = await store.claim(owner="s1", now=NOW, limit=10, lease_seconds=LEASE)
        assert {c.call.dispatch_id for c in left} == set(ids) - set(handed)

    with_store(open_store, body)


def test_a_follower_is_never_chosen() -> None:
    follower = NewCall("f", ENDPOINT, b"", NOW + 60, follows="another-call")
    assert handoff().chosen([follower, NewCall("g", ENDPOINT, b"", NOW + 60)], NOW) == [1]


def test_postgres_tells_the_other_processes_only_of_calls_left_to_the_claims(
    postgres_server: str,
) -> None:
    """A Dispatch whose calls are all leased to the process that received it wakes no
    other process (their claims would find nothing); one that leaves some ready does."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> None:
        dispatcher, listener = await PostgresStore.open(url), await PostgresStore.open(url)
        wakes = Wakes()
        try:
            listener.subscribe(wakes)
            await wakes.next(BOUND)  # listening: it looks once
            all_handed = handoff()
            await dispatcher.dispatch([call("a"), call("b")], now=NOW, handoff=all_handed)
            assert len(all_handed.claimed) == 2
            one_handed = handoff(limit=1)
            ids = await dispatcher.dispatch([call("c"), call("d")], now=NOW, handoff=one_handed)
            assert [c.call.dispatch_id for c in one_handed.claimed] == ids[:1]
            # Told in the order of the commits: the first Dispatch's notice, had it sent
            # one, would have come before the second's.
            await wakes.next(BOUND)
            assert wakes.count == 2
            (left,) = await listener.claim(owner="s2", now=NOW, limit=10, lease_seconds=LEASE)
            assert left.call.dispatch_id == ids[1]
        finally:
            await dispatcher.close()
            await listener.close()

    asyncio.run(scenario())


def test_postgres_a_handed_lease_has_an_owner_of_its_own(postgres_server: str) -> None:
    """As a claim's: the fence of an attempt checks the lease's own owner, so that an
    attempt under a lease the database lost cannot record over another one's."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> None:
        store = await PostgresStore.open(url)
        try:
            first, second = handoff(owner="s1"), handoff(owner="s1")
            await store.dispatch([call("a")], now=NOW, handoff=first)
            await store.dispatch([call("b")], now=NOW, handoff=second)
            owners = {first.claimed[0].lease.owner, second.claimed[0].lease.owner}
            assert len(owners) == 2
            assert all(owner.startswith("s1 ") for owner in owners)
            # Another lease's owner with this lease's token is refused.
            (handed,) = first.claimed
            forged = dataclasses.replace(handed.lease, owner=second.claimed[0].lease.owner)
            assert not await store.finish(forged, OK, b"forged", now=NOW + 1)
            assert await store.finish(handed.lease, OK, b"ok", now=NOW + 1)
        finally:
            await store.close()

    asyncio.run(scenario())


# --- the engine and its API -----------------------------------------------------------


class CountingStore(MemoryStore):
    """The memory store, counting its claims."""

    claims = 0

    async def claim(self, **options: Any) -> list[Claimed]:
        self.claims += 1
        return await super().claim(**options)


def gated(opened: asyncio.Event) -> Answer:
    answer = returning(b"ok")

    async def run(request: Any) -> Any:
        await opened.wait()
        return await answer(request)

    return run


def dispatch_request(*functions: str) -> options_pb2.DispatchRequest:
    return options_pb2.DispatchRequest(
        calls=[options_pb2.Call(function=f, endpoint=ENDPOINT) for f in functions]
    )


@contextlib.asynccontextmanager
async def scheduler(
    opened: asyncio.Event | None = None, **options: Any
) -> AsyncIterator[tuple[CountingStore, Engine, Scripted, Api]]:
    """An engine on a counting memory store, its API, and a caller whose ``gated``
    function answers once ``opened`` is set."""
    store = await CountingStore.open()
    opened = opened or asyncio.Event()
    caller = Scripted(answers={"gated": gated(opened), "f": returning(b"ok")})
    # Its claims come from wake-ups only, not from an idle interval.
    engine = Engine(store, caller, idle_interval=3600.0, **options)
    task = asyncio.create_task(engine.run())
    try:
        await until(lambda: store.claims >= 1, "the first claim")
        yield store, engine, caller, Api(store, engine, insecure=True)
    finally:
        opened.set()
        engine.stop()
        await asyncio.wait_for(task, BOUND)
        await store.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    try:
        await asyncio.wait_for(poll(), BOUND)
    except (TimeoutError, asyncio.TimeoutError):
        raise AssertionError(f"no {what} within {BOUND} s") from None


async def finished(store: Store, engine: Engine, dispatch_id: str) -> None:
    async def ended() -> bool:
        found = await store.get(dispatch_id)
        return found is not None and found.done

    async def wait() -> None:
        with engine.watching(dispatch_id) as changed:
            while not await ended():
                await changed(1.0)

    try:
        await asyncio.wait_for(wait(), BOUND)
    except (TimeoutError, asyncio.TimeoutError):
        raise AssertionError(f"{dispatch_id} did not end within {BOUND} s") from None


def test_a_dispatched_call_starts_with_no_claim() -> None:
    async def scenario() -> None:
        async with scheduler() as (store, engine, caller, api):
            claims = store.claims
            response = await api.dispatch(dispatch_request("f"), {})
            (dispatch_id,) = response.dispatch_ids
            # Started before the API answered: its Run request was sent already (it may
            # even have been answered: the API lets the attempts it started go first).
            assert [a.request.dispatch_id for a in caller.attempts] == [dispatch_id]
            await finished(store, engine, dispatch_id)
            assert [a.request.dispatch_id for a in caller.attempts] == [dispatch_id]
            done = await store.get(dispatch_id)
            assert done is not None
            assert done.attempts == 1
            assert store.claims == claims  # no claim leased it, none looked for more

    asyncio.run(scenario())


def test_a_dispatch_whose_client_went_away_while_it_committed_still_starts_its_calls() -> None:
    """The request is cancelled (the client closed the connection) while the store
    commits the calls it leased: they start once committed, not when their leases lapse."""

    async def scenario() -> None:
        async with scheduler() as (store, engine, caller, api):
            committing = asyncio.Event()
            release = asyncio.Event()
            dispatch = store.dispatch

            async def slow_dispatch(*args: Any, **options: Any) -> list[str]:
                committing.set()
                await release.wait()
                return await dispatch(*args, **options)

            store.dispatch = slow_dispatch  # type: ignore[method-assign]
            request = asyncio.create_task(api.dispatch(dispatch_request("f"), {}))
            await asyncio.wait_for(committing.wait(), BOUND)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            release.set()
            await until(lambda: bool(caller.attempts), "attempt of the handed call")
            (attempt,) = caller.attempts
            await finished(store, engine, attempt.request.dispatch_id)

    asyncio.run(scenario())


def test_with_no_free_slot_the_claim_starts_the_call() -> None:
    async def scenario() -> None:
        opened = asyncio.Event()
        async with scheduler(opened, concurrency=1) as (store, engine, caller, api):
            (busy,) = (await api.dispatch(dispatch_request("gated"), {})).dispatch_ids
            await until(lambda: bool(caller.of(busy)), "the first call's attempt")
            claims = store.claims
            (waiting,) = (await api.dispatch(dispatch_request("f"), {})).dispatch_ids
            left = await store.get(waiting)
            assert left is not None
            assert left.state is State.READY  # not handed over
            opened.set()
            await finished(store, engine, waiting)
            assert store.claims > claims  # a claim started it, once a slot was free

    asyncio.run(scenario())


def test_no_handoff_with_a_per_destination_cap() -> None:
    async def scenario() -> None:
        async with scheduler(limiter=Limiter(cap=4)) as (store, engine, _, api):
            assert engine.handoff([NewCall("f", ENDPOINT, b"", NOW + 60)], NOW) is None
            claims = store.claims
            (dispatch_id,) = (await api.dispatch(dispatch_request("f"), {})).dispatch_ids
            await finished(store, engine, dispatch_id)
            assert store.claims > claims  # the claim, which counts the cap, started it

    asyncio.run(scenario())


def test_nothing_is_handed_to_an_engine_that_is_not_running() -> None:
    async def scenario() -> None:
        store = await MemoryStore.open()
        engine = Engine(store, Scripted())
        assert engine.handoff([NewCall("f", ENDPOINT, b"", NOW + 60)], NOW) is None
        await store.close()

    asyncio.run(scenario())


def test_on_sqlite_a_handed_call_starts_while_its_dispatch_is_synced_to_disk(
    tmp_path: Path,
) -> None:
    """The attempt is under way before the fsync that makes the Dispatch durable ends;
    the Dispatch is answered after it, and the attempt started once."""

    async def scenario() -> None:
        store = await SQLiteStore.open(tmp_path / "scheduler.db")
        caller = Scripted(answers={"f": returning(b"ok")})
        engine = Engine(store, caller, idle_interval=3600.0)
        task = asyncio.create_task(engine.run())
        syncing, go = threading.Event(), threading.Event()
        sync = store._writer._sync
        try:
            api = Api(store, engine, insecure=True)
            # The claim loop runs, and the first call's outcome is written: the next
            # fsync held below is the Dispatch's.
            (first,) = (await api.dispatch(dispatch_request("f"), {})).dispatch_ids
            await finished(store, engine, first)

            def held() -> None:
                syncing.set()
                go.wait(BOUND)
                sync()

            store._writer._sync = held
            request = asyncio.create_task(api.dispatch(dispatch_request("f"), {}))
            assert await asyncio.to_thread(syncing.wait, BOUND), "no fsync began"
            await until(lambda: len(caller.attempts) == 2, "an attempt during the fsync")
            assert not request.done()
            go.set()
            (dispatch_id,) = (await request).dispatch_ids
            await finished(store, engine, dispatch_id)
            assert [a.request.dispatch_id for a in caller.of(dispatch_id)] == [dispatch_id]
        finally:
            go.set()
            engine.stop()
            await asyncio.wait_for(task, BOUND)
            await store.close()

    asyncio.run(scenario())
