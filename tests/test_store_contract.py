"""The scheduler's storage contract, held against every store (one suite, each store a
parameter): atomic dispatch, leases with fencing tokens, lapsed leases reclaimed,
round-robin claims, listing, cancelling a tree, and the SQLite store's durability and
schema versioning."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dispatchlet.scheduler.store import (
    END_BATCH,
    Call,
    CallPolicy,
    Lease,
    NewCall,
    Sent,
    State,
    Store,
    StoreError,
)
from dispatchlet.scheduler.store.claims import claim_window
from dispatchlet.scheduler.store.limits import Limits, LimitStats
from dispatchlet.scheduler.store.memory import IntegrityError, MemoryStore
from dispatchlet.scheduler.store.sqlite import SCHEMA_VERSION, SQLiteStore
from dispatchlet.scheduler.store.stats import Finished, FinishedCount, FunctionStats, QueueStats
from postgres_server import fresh_database

T = TypeVar("T")
NOW = 1_800_000_000.0
LEASE = 30.0
OK, TIMEOUT, PERMANENT_ERROR = 1, 2, 7

Opener = Callable[[], Coroutine[Any, Any, Store]]


def sqlite_store(request: pytest.FixtureRequest, folder: Path) -> Opener:
    return lambda: SQLiteStore.open(folder / "scheduler.db")


def postgres_store(request: pytest.FixtureRequest, folder: Path) -> Opener:
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(request.getfixturevalue("postgres_server"))
    return lambda: PostgresStore.open(url)


def memory_store(request: pytest.FixtureRequest, folder: Path) -> Opener:
    return lambda: MemoryStore.open()


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "postgres": postgres_store,
}
# What a store that keeps nothing past its process cannot be held to.
DURABLE_ONLY = {"memory": {"test_acknowledged_calls_survive_a_restart"}}
# What each store raises for a call its schema refuses.
INTEGRITY_ERRORS: dict[str, Callable[[], type[Exception]]] = {
    "memory": lambda: IntegrityError,
    "sqlite": lambda: sqlite3.IntegrityError,
    "postgres": lambda: __import__("psycopg").errors.IntegrityError,
}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def call(function: str = "f", **fields: Any) -> NewCall:
    fields.setdefault("endpoint", "http://127.0.0.1:8000")
    fields.setdefault("input", b"\x0a\x01x")
    fields.setdefault("expires_at", NOW + 3600)
    return NewCall(function=function, **fields)


@pytest.fixture(params=sorted(STORES))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the store under test on this test's database (again: a restart)."""
    if request.function.__name__ in DURABLE_ONLY.get(request.param, ()):
        pytest.skip(f"the {request.param} store keeps nothing across a restart")
    opener = STORES[request.param](request, tmp_path)
    opener.kind = request.param  # type: ignore[attr-defined]
    return opener


def with_store(
    open_store: Callable[[], Coroutine[Any, Any, Store]],
    body: Callable[[Store], Coroutine[Any, Any, T]],
) -> T:
    async def session() -> T:
        store = await open_store()
        try:
            return await body(store)
        finally:
            await store.close()

    return run(session())


def test_dispatched_calls_are_stored_ready_with_their_tree(open_store: Any) -> None:
    async def body(store: Store) -> list[Call | None]:
        ids = await store.dispatch([call("a"), call("b", correlation_id=7)], now=NOW)
        assert len(ids) == 2
        assert len(set(ids)) == 2
        return [await store.get(i) for i in ids]

    first, second = with_store(open_store, body)
    assert first is not None
    assert second is not None
    assert (first.function, second.function) == ("a", "b")
    assert first.state is State.READY
    assert first.root_id == first.dispatch_id  # a root call is its own root
    assert first.parent_id is None
    assert second.correlation_id == 7
    assert (first.attempts, first.status, first.result, first.finished_at) == (0, None, b"", None)
    assert first.created_at == first.ready_at == NOW
    assert first.input == b"\x0a\x01x"


def test_dispatch_is_all_or_nothing(open_store: Any) -> None:
    refused = INTEGRITY_ERRORS[open_store.kind]()

    async def body(store: Store) -> list[Call]:
        with pytest.raises(refused):
            # The third call is invalid: the two before it are not kept either.
            await store.dispatch([call("a"), call("b"), call("c", endpoint="")], now=NOW)
        return await store.list()

    assert with_store(open_store, body) == []


def test_get_many_reads_the_calls_that_exist_as_get_has_them(open_store: Any) -> None:
    async def body(store: Store) -> None:
        ids = await store.dispatch([call(f"f{n}") for n in range(3)], now=NOW)
        (claimed,) = await store.claim(owner="me", limit=1, now=NOW, lease_seconds=60)
        assert await store.finish(claimed.lease, 1, b"\x12\x01y", now=NOW + 1)
        asked = [ids[2], "0" * 32, ids[0], ids[2], claimed.call.dispatch_id]
        found = await store.get_many(asked)
        # Each once, as ``get`` reads it (the finished one with its result); none for an
        # unknown id.
        expected = [await store.get(i) for i in sorted({ids[0], ids[2], claimed.call.dispatch_id})]
        assert sorted(found, key=lambda c: c.dispatch_id) == expected
        assert await store.get_many([]) == []
        # As many as a WaitMany asks for at once.
        many = await store.dispatch([call("g")] * 1000, now=NOW)
        assert {c.dispatch_id for c in await store.get_many(many)} == set(many)

    with_store(open_store, body)


def test_claim_leases_ready_calls_once(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)
        (claimed,) = await store.claim(owner="s1", now=NOW, limit=10, lease_seconds=LEASE)
        assert claimed.call.dispatch_id == dispatch_id
        assert claimed.call.state is State.RUNNING
        assert claimed.call.attempts == 1
        assert claimed.lease.expires_at == NOW + LEASE
        # Leased: nobody else gets it while the lease holds.
        assert await store.claim(owner="s2", now=NOW + 1, limit=10, lease_seconds=LEASE) == []

    with_store(open_store, body)


def test_finish_records_the_outcome_only_for_the_current_lease(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)
        (first,) = await store.claim(owner="s1", now=NOW, limit=1, lease_seconds=LEASE)
        # s1 stalls; its lease lapses and s2 runs the call again (at least once).
        later = NOW + LEASE + 1
        (second,) = await store.claim(owner="s2", now=later, limit=1, lease_seconds=LEASE)
        assert second.lease.token > first.lease.token
        assert second.call.attempts == 2
        assert await store.finish(second.lease, OK, b"new", now=later + 1)
        # s1's late answer is fenced off: it never overwrites the newer attempt.
        assert not await store.finish(first.lease, TIMEOUT, b"stale", now=later + 2)
        assert not await store.retry(first.lease, TIMEOUT, b"stale", ready_at=later, now=later)
        assert not await store.extend(first.lease, until=later + 100)
        done = await store.get(dispatch_id)
        assert done is not None
        assert (done.state, done.status, done.result) == (State.DONE, OK, b"new")
        assert done.finished_at == later + 1
        # Done: never claimed again.
        assert await store.claim(owner="s3", now=later + 999, limit=1, lease_seconds=LEASE) == []

    with_store(open_store, body)


def test_retry_makes_the_call_ready_later_with_its_last_error(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)
        (claimed,) = await store.claim(owner="s1", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.retry(claimed.lease, TIMEOUT, b"err", ready_at=NOW + 5, now=NOW + 1)
        waiting = await store.get(dispatch_id)
        assert waiting is not None
        # The attempt's status is kept with its error, to be shown; the call is not done.
        assert (waiting.state, waiting.status, waiting.result) == (State.READY, TIMEOUT, b"err")
        assert await store.claim(owner="s1", now=NOW + 4, limit=1, lease_seconds=LEASE) == []
        (again,) = await store.claim(owner="s1", now=NOW + 5, limit=1, lease_seconds=LEASE)
        assert again.call.attempts == 2
        # Retrying twice with one lease is refused: the lease ended with the first.
        assert not await store.retry(claimed.lease, TIMEOUT, b"x", ready_at=NOW, now=NOW + 6)

    with_store(open_store, body)


def test_a_tail_call_keeps_the_identity_and_starts_afresh(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (root,) = await store.dispatch([call("first")], now=NOW)
        (claimed,) = await store.claim(owner="s1", now=NOW + 1, limit=1, lease_seconds=LEASE)
        assert await store.tail_call(
            claimed.lease, "second", "https://other.example", b"in", now=NOW + 2
        )
        (next_,) = await store.claim(owner="s1", now=NOW + 2, limit=1, lease_seconds=LEASE)
        before, after = claimed.call, next_.call
        assert (after.dispatch_id, after.root_id, after.created_at) == (
            before.dispatch_id,
            before.root_id,
            before.created_at,
        )
        assert (after.function, after.endpoint, after.input) == (
            "second",
            "https://other.example",
            b"in",
        )
        assert after.attempts == 1
        assert after.expires_at == before.expires_at
        assert not await store.tail_call(claimed.lease, "x", "y", b"", now=NOW + 3)
        assert root == after.dispatch_id

    with_store(open_store, body)


def test_a_released_call_is_handed_back_without_counting_an_attempt(open_store: Any) -> None:
    async def body(store: Store) -> None:
        parent, kids = await suspended(store, 1, min_results=1, max_results=1)
        await run_children(store, NOW + 1, *kids)
        (resume,) = await store.claim(owner="s", now=NOW + 2, limit=1, lease_seconds=LEASE)
        assert await store.release(resume.lease, ready_at=NOW + 5)
        assert not await store.release(resume.lease, ready_at=NOW + 5)
        assert await store.claim(owner="s", now=NOW + 4, limit=1, lease_seconds=LEASE) == []
        (again,) = await store.claim(owner="s", now=NOW + 5, limit=1, lease_seconds=LEASE)
        assert again.call.attempts == resume.call.attempts
        assert again.results == resume.results  # still a resume, with the same results
        assert again.call.dispatch_id == parent

    with_store(open_store, body)


def test_extend_keeps_a_long_attempt_leased(open_store: Any) -> None:
    async def body(store: Store) -> None:
        await store.dispatch([call()], now=NOW)
        (claimed,) = await store.claim(owner="s1", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.extend(claimed.lease, until=NOW + 3 * LEASE)
        later = NOW + 2 * LEASE
        assert await store.claim(owner="s2", now=later, limit=1, lease_seconds=LEASE) == []
        lease = dataclasses.replace(claimed.lease, expires_at=NOW + 3 * LEASE)
        assert await store.finish(lease, OK, b"", now=later)

    with_store(open_store, body)


def test_claims_take_root_dispatches_in_turn(open_store: Any) -> None:
    async def body(store: Store) -> list[str]:
        # A fan-out of 50 children under one root, dispatched first, then two others.
        (big,) = await store.dispatch([call("big")], now=NOW - 10)
        children = [call("child", parent_id=big, root_id=big) for _ in range(50)]
        await store.dispatch(children, now=NOW - 5)
        await store.dispatch([call("small1")], now=NOW - 1)
        await store.dispatch([call("small2")], now=NOW - 1)
        claimed = await store.claim(owner="s", now=NOW, limit=3, lease_seconds=LEASE)
        return [c.call.function for c in claimed]

    # One from each root, the big tree's oldest first: no root starves the others.
    assert with_store(open_store, body) == ["big", "small1", "small2"]


def test_a_fan_out_larger_than_a_claims_window_does_not_starve_other_roots(
    open_store: Any,
) -> None:
    async def body(store: Store) -> list[str]:
        # More ready children than a claim reads in age order, all older than the two
        # other roots' calls.
        (big,) = await store.dispatch([call("big")], now=NOW - 10)
        children = [call("child", parent_id=big, root_id=big) for _ in range(3000)]
        await store.dispatch(children, now=NOW - 5)
        await store.dispatch([call("small1"), call("small2")], now=NOW - 1)
        claimed = await store.claim(owner="s", now=NOW, limit=3, lease_seconds=LEASE)
        again = await store.claim(owner="s", now=NOW, limit=3, lease_seconds=LEASE)
        return [c.call.function for c in claimed + again]

    assert with_store(open_store, body) == ["big", "small1", "small2", *["child"] * 3]


def test_list_filters_and_pages_in_creation_order(open_store: Any) -> None:
    async def body(store: Store) -> None:
        ids = await store.dispatch([call("a" if n % 2 else "b") for n in range(7)], now=NOW)
        everything = await store.list()
        assert [c.dispatch_id for c in everything] == ids
        assert [c.dispatch_id for c in await store.list(function="a")] == ids[1::2]
        page = await store.list(limit=3)
        rest = await store.list(after=page[-1].dispatch_id, limit=10)
        assert [c.dispatch_id for c in page + rest] == ids
        (claimed, *_) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        running = await store.list(state=State.RUNNING)
        assert [c.dispatch_id for c in running] == [claimed.call.dispatch_id]
        # A summary: the call without its input (``get`` has it).
        whole = await store.get(ids[3])
        assert whole is not None
        assert await store.list(root_id=ids[3]) == [dataclasses.replace(whole, input=b"")]

    with_store(open_store, body)


def test_list_filters_by_final_status_and_pages_newest_first(open_store: Any) -> None:
    async def body(store: Store) -> None:
        ok, failed, retried, ready = await store.dispatch(
            [call("ok"), call("failed"), call("retried"), call("ready")], now=NOW
        )
        leases = {
            c.call.dispatch_id: c.lease
            for c in await store.claim(owner="s", now=NOW, limit=3, lease_seconds=LEASE)
        }
        assert await store.finish(leases[ok], OK, b"", now=NOW + 1)
        assert await store.finish(leases[failed], PERMANENT_ERROR, b"e", now=NOW + 1)
        assert await store.retry(leases[retried], TIMEOUT, b"e", ready_at=NOW + 9, now=NOW + 1)

        async def ids(**filters: Any) -> list[str]:
            return [c.dispatch_id for c in await store.list(**filters)]

        assert await ids(status=OK) == [ok]
        assert await ids(status=PERMANENT_ERROR) == [failed]
        # A call waiting for its retry keeps its latest attempt's status, which is not final.
        assert await ids(status=TIMEOUT) == []
        assert await ids(failed=True) == [failed]
        assert await ids(failed=True, function="ok") == []
        assert await ids(newest_first=True) == [ready, retried, failed, ok]
        assert await ids(newest_first=True, status=OK) == [ok]
        # Pages follow the order asked for.
        first = await ids(newest_first=True, limit=3)
        rest = await ids(newest_first=True, after=first[-1], limit=3)
        assert first + rest == [ready, retried, failed, ok]
        assert await ids(after=failed) == [retried, ready]

    with_store(open_store, body)


def test_a_calls_latest_attempt_status_lasts_until_a_new_run_starts(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)
        (first,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.retry(first.lease, TIMEOUT, b"e1", ready_at=NOW, now=NOW)
        (second,) = await store.claim(owner="s", now=NOW + 1, limit=1, lease_seconds=LEASE)
        # Running again: still the status of the latest attempt that ended.
        assert (second.call.status, second.call.result) == (TIMEOUT, b"e1")
        # Its run succeeds with a Poll: a new run starts, with no attempt ended yet.
        assert (
            await store.suspend(
                second.lease, POLL, [], min_results=1, max_results=1, until=NOW + 2, now=NOW + 1
            )
            == []
        )
        suspended = await store.get(dispatch_id)
        assert suspended is not None
        assert (suspended.state, suspended.status, suspended.attempts) == (State.WAITING, None, 0)
        (resume,) = await store.claim(owner="s", now=NOW + 2, limit=1, lease_seconds=LEASE)
        assert await store.retry(resume.lease, TIMEOUT, b"e2", ready_at=NOW, now=NOW + 2)
        (again,) = await store.claim(owner="s", now=NOW + 3, limit=1, lease_seconds=LEASE)
        assert await store.restart(again.lease, now=NOW + 3, orphans=ORPHANS)
        restarted = await store.get(dispatch_id)
        assert restarted is not None
        assert (restarted.state, restarted.status) == (State.READY, None)
        (run,) = await store.claim(owner="s", now=NOW + 4, limit=1, lease_seconds=LEASE)
        assert await store.retry(run.lease, TIMEOUT, b"e3", ready_at=NOW, now=NOW + 4)
        (tail,) = await store.claim(owner="s", now=NOW + 5, limit=1, lease_seconds=LEASE)
        assert await store.tail_call(tail.lease, "g", "http://127.0.0.1:8000", b"", now=NOW + 5)
        handed_over = await store.get(dispatch_id)
        assert handed_over is not None
        assert (handed_over.function, handed_over.status, handed_over.result) == ("g", None, b"")

    with_store(open_store, body)


def test_cancel_ends_a_call_and_its_unfinished_descendants(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (root,) = await store.dispatch([call("root")], now=NOW)
        child, finished = await store.dispatch(
            [call("child", parent_id=root, root_id=root)] * 2, now=NOW
        )
        (grandchild,) = await store.dispatch(
            [call("grandchild", parent_id=child, root_id=root)], now=NOW
        )
        (other,) = await store.dispatch([call("other")], now=NOW)
        leases = {
            c.call.dispatch_id: c.lease
            for c in await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        }
        assert await store.finish(leases[finished], OK, b"kept", now=NOW + 1)
        ended = await store.cancel(root, PERMANENT_ERROR, b"cancelled", now=NOW + 2)
        assert ended == 3  # root, child, grandchild; the finished child stays as it was
        for dispatch_id in (root, child, grandchild):
            found = await store.get(dispatch_id)
            assert found is not None
            assert (found.state, found.status, found.result) == (
                State.DONE,
                PERMANENT_ERROR,
                b"cancelled",
            )
        kept = await store.get(finished)
        assert kept is not None
        assert (kept.status, kept.result) == (OK, b"kept")
        untouched = await store.get(other)
        assert untouched is not None
        assert untouched.state is State.RUNNING
        # The cancelled calls' leases are fenced: their late answers are not recorded.
        assert not await store.finish(leases[child], OK, b"late", now=NOW + 3)
        assert await store.cancel(root, PERMANENT_ERROR, b"again", now=NOW + 4) == 0
        assert await store.cancel("no-such-call", PERMANENT_ERROR, b"", now=NOW) == 0

    with_store(open_store, body)


def test_acknowledged_calls_survive_a_restart(open_store: Any) -> None:
    async def first(store: Store) -> tuple[list[str], Lease]:
        ids = await store.dispatch([call(f"f{n}") for n in range(5)], now=NOW)
        (claimed,) = await store.claim(owner="s1", now=NOW, limit=1, lease_seconds=LEASE)
        return ids, claimed.lease

    ids, lease = with_store(open_store, first)

    async def second(store: Store) -> None:
        assert [c.dispatch_id for c in await store.list()] == ids
        # The attempt in flight when the process stopped runs again once its lease lapses.
        later = NOW + LEASE
        claimed = await store.claim(owner="s2", now=later, limit=10, lease_seconds=LEASE)
        assert sorted(c.call.dispatch_id for c in claimed) == sorted(ids)
        assert not await store.finish(lease, OK, b"stale", now=later)

    with_store(open_store, second)


# --- the SQLite store itself ----------------------------------------------------------


def test_sqlite_is_durable_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    run(_open_and_close(path))
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        db.close()
    run(_open_and_close(path))  # opening a current database again changes nothing


def test_sqlite_refuses_a_database_of_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    run(_open_and_close(path))
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this dispatchlet"):
        run(_open_and_close(path))


def test_sqlite_upgrades_a_database_of_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    ids = ["old", "older"]
    old_sqlite_database(path, 2, [(i, i, None) for i in ids])  # before calls_ready_root
    # Kept, and claimable under the new schema.
    assert with_store(lambda: SQLiteStore.open(path), claimed_ids) == ids
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"calls_ready_root", "calls_by_key", "calls_by_request", *LIST_INDEXES} <= names
    finally:
        db.close()


# What a later version added: the indexes of List's filters.
LIST_INDEXES = [
    f"calls_list_{name}"
    for name in ("unfinished", "finished", "function", "root", "status", "failed")
]


def old_sqlite_database(path: Path, version: int, calls: list[tuple[str, str, str | None]]) -> None:
    """A SQLite database as ``version`` of its schema left it, holding ``calls`` (their
    dispatch id, root id and parent id), ready."""
    from dispatchlet.scheduler.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

    db = sqlite3.connect(path)
    try:
        for migration in SQLITE_MIGRATIONS[:version]:
            db.executescript(migration)
        db.executemany(
            "INSERT INTO calls (dispatch_id, root_id, parent_id, function, endpoint, input,"
            " state, created_at, expires_at, ready_at)"
            " VALUES (?, ?, ?, 'f', 'http://127.0.0.1:8000', x'', 'ready', ?, ?, ?)",
            [(*ids, NOW, NOW + 3600, NOW) for ids in calls],
        )
        db.execute(f"PRAGMA user_version = {version:d}")
        db.commit()
    finally:
        db.close()


def old_postgres_database(url: str, version: int, calls: list[tuple[str, str, str | None]]) -> None:
    """A PostgreSQL database as ``version`` of its schema left it, holding ``calls``."""
    import psycopg
    from dispatchlet.scheduler.store.postgres import MIGRATIONS as PG_MIGRATIONS

    with psycopg.connect(url) as db:
        for migration in PG_MIGRATIONS[:version]:
            db.execute(migration.encode())
        db.execute("CREATE TABLE dispatchlet_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO dispatchlet_schema VALUES (%s)", (version,))
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO dispatchlet_calls (dispatch_id, root_id, parent_id, function,"
                " endpoint, destination, input, state, created_at, expires_at, ready_at)"
                " VALUES (%s, %s, %s, 'f', 'http://127.0.0.1:8000', 'http://127.0.0.1:8000',"
                " '', 'ready', %s, %s, %s)",
                [(*ids, NOW, NOW + 3600, NOW) for ids in calls],
            )


async def claimed_ids(store: Store) -> list[str]:
    got = await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
    return [c.call.dispatch_id for c in got]


async def _open_and_close(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.close()


DISPATCHER = """
import asyncio, sys, time
from dispatchlet.scheduler.store import NewCall
from dispatchlet.scheduler.store.sqlite import SQLiteStore

async def main():
    store = await SQLiteStore.open(sys.argv[1])
    batch = [NewCall("f", "http://127.0.0.1:1", b"", time.time() + 60)] * 10
    while True:
        ids = await store.dispatch(batch, now=time.time())
        # Acknowledged: the transaction returned. Printed only now.
        print(" ".join(ids), flush=True)

asyncio.run(main())
"""


@pytest.mark.slow
def test_sqlite_loses_no_acknowledged_dispatch_when_killed(tmp_path: Path) -> None:
    """SIGKILL at random moments while batches are dispatched: every batch the process
    acknowledged is in the database after it restarts, whole."""
    path = tmp_path / "scheduler.db"
    rng = random.Random(20)
    acknowledged: list[list[str]] = []
    for _ in range(8):
        process = subprocess.Popen(
            [sys.executable, "-c", DISPATCHER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(rng.uniform(0.3, 1.0))
        finally:
            process.kill()  # SIGKILL: no cleanup, no flush beyond what was committed
            output, _ = process.communicate(timeout=10)
        # A line cut short by the kill was never printed whole: not acknowledged.
        lines = output.split("\n")[:-1] if not output.endswith("\n") else output.splitlines()
        acknowledged += [line.split() for line in lines if len(line.split()) == 10]

    async def stored() -> tuple[set[str], int]:
        store = await SQLiteStore.open(path)
        try:
            calls = await store.list(limit=10**7)
        finally:
            await store.close()
        return {c.dispatch_id for c in calls}, len(calls)

    ids, count = run(stored())
    assert len(acknowledged) > 8
    for batch in acknowledged:
        assert set(batch) <= ids
    # Batches are whole: a batch interrupted before its commit left nothing behind.
    assert count % 10 == 0


# --- Poll: children, results, resumes --------------------------------------------------

POLL = b"\x32\x03abc"  # stands in for a serialized Poll (state and limits)
ORPHANS = (PERMANENT_ERROR, b"orphaned")


async def suspended(store: Store, children: int, *, min_results: int, max_results: int) -> Any:
    """A root call suspended on ``children`` new children (correlation ids 0..n-1)."""
    (parent,) = await store.dispatch([call("parent")], now=NOW)
    (claimed,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
    kids = [call("child", correlation_id=n) for n in range(children)]
    ids = await store.suspend(
        claimed.lease,
        POLL,
        kids,
        min_results=min_results,
        max_results=max_results,
        until=NOW + 100,
        now=NOW,
    )
    assert ids is not None
    return parent, ids


async def run_children(store: Store, now: float, *ids: str) -> None:
    leases = {
        c.call.dispatch_id: c.lease
        for c in await store.claim(owner="s", now=now, limit=100, lease_seconds=LEASE)
    }
    for dispatch_id in ids:
        assert await store.finish(leases[dispatch_id], OK, dispatch_id.encode(), now=now)


def test_a_poll_runs_children_and_resumes_the_parent_with_their_results(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        parent, kids = await suspended(store, 3, min_results=2, max_results=2)
        waiting = await store.get(parent)
        assert waiting is not None
        assert (waiting.state, waiting.poll) == (State.WAITING, POLL)
        for kid in kids:
            child = await store.get(kid)
            assert child is not None
            assert (child.parent_id, child.root_id, child.state) == (parent, parent, State.READY)
        # One result is not enough (min 2): the parent waits.
        claimed = await store.claim(owner="s", now=NOW + 1, limit=100, lease_seconds=LEASE)
        assert {c.call.dispatch_id for c in claimed} == set(kids)
        leases = {c.call.dispatch_id: c.lease for c in claimed}
        assert await store.finish(leases[kids[2]], OK, b"r2", now=NOW + 2)
        assert await store.claim(owner="s", now=NOW + 3, limit=10, lease_seconds=LEASE) == []
        assert await store.finish(leases[kids[0]], OK, b"r0", now=NOW + 4)
        (resumed,) = await store.claim(owner="s", now=NOW + 5, limit=10, lease_seconds=LEASE)
        assert resumed.call.dispatch_id == parent
        assert resumed.call.poll == POLL
        # In the order they finished; each with its correlation id.
        assert [(r.correlation_id, r.result) for r in resumed.results] == [(2, b"r2"), (0, b"r0")]
        assert resumed.lease.delivered == (kids[2], kids[0])
        # A suspension is a run that succeeded: the resume is the first attempt of the next.
        assert (waiting.attempts, resumed.call.attempts) == (0, 1)
        # It polls again; the results it was given count as delivered.
        again = await store.suspend(
            resumed.lease, POLL, [], min_results=1, max_results=5, until=NOW + 100, now=NOW + 6
        )
        assert again == []
        assert await store.finish(leases[kids[1]], OK, b"r1", now=NOW + 7)
        (last,) = await store.claim(owner="s", now=NOW + 8, limit=10, lease_seconds=LEASE)
        assert [r.correlation_id for r in last.results] == [1]
        assert await store.finish(last.lease, OK, b"all", now=NOW + 9)
        done = await store.get(parent)
        assert done is not None
        assert (done.state, done.result, done.poll) == (State.DONE, b"all", b"")

    with_store(open_store, body)


def test_results_beyond_max_results_wait_for_the_next_resume(open_store: Any) -> None:
    async def body(store: Store) -> None:
        _parent, kids = await suspended(store, 5, min_results=5, max_results=2)
        await run_children(store, NOW + 1, *kids)
        (first,) = await store.claim(owner="s", now=NOW + 2, limit=10, lease_seconds=LEASE)
        assert len(first.results) == 2
        await store.suspend(
            first.lease, POLL, [], min_results=1, max_results=2, until=NOW + 50, now=NOW + 3
        )
        (second,) = await store.claim(owner="s", now=NOW + 4, limit=10, lease_seconds=LEASE)
        assert len(second.results) == 2
        assert not set(second.lease.delivered) & set(first.lease.delivered)

    with_store(open_store, body)


def test_an_attempt_that_fails_to_resume_gets_the_same_results_again(open_store: Any) -> None:
    async def body(store: Store) -> None:
        _parent, kids = await suspended(store, 1, min_results=1, max_results=10)
        await run_children(store, NOW + 1, *kids)
        (first,) = await store.claim(owner="s", now=NOW + 2, limit=10, lease_seconds=LEASE)
        assert await store.retry(first.lease, TIMEOUT, b"", ready_at=NOW + 3, now=NOW + 2)
        (second,) = await store.claim(owner="s", now=NOW + 3, limit=10, lease_seconds=LEASE)
        assert second.lease.delivered == first.lease.delivered == (kids[0],)

    with_store(open_store, body)


def test_a_poll_without_calls_is_a_timer(open_store: Any) -> None:
    async def body(store: Store) -> None:
        parent, kids = await suspended(store, 0, min_results=1, max_results=1)
        assert kids == []
        assert await store.claim(owner="s", now=NOW + 99, limit=10, lease_seconds=LEASE) == []
        (woken,) = await store.claim(owner="s", now=NOW + 100, limit=10, lease_seconds=LEASE)
        assert (woken.call.dispatch_id, woken.results) == (parent, ())

    with_store(open_store, body)


def test_a_poll_with_no_deadline_waits_for_its_results_until_the_call_expires(
    open_store: Any,
) -> None:
    """A Poll without max_wait is suspended until the call's expiration, a year away."""
    year = 366 * 86400.0

    async def body(store: Store) -> None:
        (parent,) = await store.dispatch([call("parent", expires_at=NOW + year)], now=NOW)
        (claimed,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        (kid,) = await store.suspend(
            claimed.lease,
            POLL,
            [call("child", expires_at=NOW + year)],
            min_results=1,
            max_results=1,
            until=NOW + year,
            now=NOW,
        ) or [""]
        later = NOW + year / 2
        (child,) = await store.claim(owner="s", now=later, limit=10, lease_seconds=LEASE)
        assert child.call.dispatch_id == kid  # the parent still waits
        assert await store.finish(child.lease, OK, b"r", now=later)
        (resumed,) = await store.claim(owner="s", now=later, limit=10, lease_seconds=LEASE)
        assert (resumed.call.dispatch_id, [r.result for r in resumed.results]) == (parent, [b"r"])

    with_store(open_store, body)


def test_a_finished_call_ends_its_unfinished_children(open_store: Any) -> None:
    async def body(store: Store) -> None:
        _parent, kids = await suspended(store, 2, min_results=1, max_results=1)
        await run_children(store, NOW + 1, kids[0])
        (resumed,) = await store.claim(owner="s", now=NOW + 2, limit=10, lease_seconds=LEASE)
        assert await store.finish(resumed.lease, OK, b"early", now=NOW + 3, orphans=ORPHANS)
        orphan = await store.get(kids[1])
        assert orphan is not None
        assert (orphan.state, orphan.status, orphan.result) == (
            State.DONE,
            PERMANENT_ERROR,
            b"orphaned",
        )

    with_store(open_store, body)


def test_finishes_that_arrive_together_are_each_fenced_and_followed(open_store: Any) -> None:
    async def body(store: Store) -> None:
        # Two trees: one parent waits for both its children; the other has resumed with
        # one result and will finish while its second child is unfinished.
        waiting, pair = await suspended(store, 2, min_results=2, max_results=2)
        claimed = await store.claim(owner="s", now=NOW + 1, limit=10, lease_seconds=10 * LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claimed}
        (other,) = await store.dispatch([call("other")], now=NOW + 1)
        (stale,) = await store.claim(owner="s", now=NOW + 1, limit=1, lease_seconds=LEASE)
        (fresh,) = await store.claim(owner="s2", now=NOW + LEASE + 2, limit=1, lease_seconds=LEASE)
        assert stale.call.dispatch_id == fresh.call.dispatch_id == other
        # All in one go: both children, the stale and the current lease of ``other``.
        outcomes = await asyncio.gather(
            store.finish(leases[pair[0]], OK, b"a", now=NOW + LEASE + 3),
            store.finish(stale.lease, OK, b"stale", now=NOW + LEASE + 3),
            store.finish(leases[pair[1]], OK, b"b", now=NOW + LEASE + 3),
            store.finish(fresh.lease, OK, b"fresh", now=NOW + LEASE + 3),
        )
        assert outcomes == [True, False, True, True]
        done = await store.get(other)
        assert done is not None
        assert (done.state, done.result) == (State.DONE, b"fresh")
        # Both results arrived together: the parent is ready, with both.
        (resumed,) = await store.claim(
            owner="s", now=NOW + LEASE + 4, limit=10, lease_seconds=LEASE
        )
        assert resumed.call.dispatch_id == waiting
        assert sorted(r.result for r in resumed.results) == [b"a", b"b"]
        # It polls for two more, gets one, and finishes with the other one unfinished,
        # together with a finish that takes no effect.
        more = await store.suspend(
            resumed.lease,
            POLL,
            [call("late", correlation_id=5), call("later", correlation_id=6)],
            min_results=1,
            max_results=1,
            until=NOW + 1000,
            now=NOW + LEASE + 5,
        )
        assert more is not None
        await run_children(store, NOW + LEASE + 6, more[0])
        (again,) = await store.claim(owner="s", now=NOW + LEASE + 7, limit=10, lease_seconds=LEASE)
        assert [r.result for r in again.results] == [more[0].encode()]
        outcomes = await asyncio.gather(
            store.finish(again.lease, OK, b"early", now=NOW + LEASE + 8, orphans=ORPHANS),
            store.finish(stale.lease, OK, b"stale", now=NOW + LEASE + 8),
        )
        assert outcomes == [True, False]
        orphan = await store.get(more[1])
        assert orphan is not None
        assert (orphan.state, orphan.status, orphan.result) == (
            State.DONE,
            PERMANENT_ERROR,
            b"orphaned",
        )
        # The result it was given counts as delivered: nothing is left to claim.
        assert (
            await store.claim(owner="s", now=NOW + LEASE + 9, limit=10, lease_seconds=LEASE) == []
        )

    with_store(open_store, body)


def test_a_restart_runs_the_call_again_from_its_input(open_store: Any) -> None:
    async def body(store: Store) -> None:
        parent, kids = await suspended(store, 2, min_results=1, max_results=1)
        await run_children(store, NOW + 1, kids[0])
        (resumed,) = await store.claim(owner="s", now=NOW + 2, limit=10, lease_seconds=LEASE)
        assert await store.restart(resumed.lease, now=NOW + 3, orphans=ORPHANS)
        (fresh,) = await store.claim(owner="s", now=NOW + 3, limit=10, lease_seconds=LEASE)
        assert (fresh.call.dispatch_id, fresh.call.poll, fresh.results) == (parent, b"", ())
        assert fresh.call.restarts == 1
        unfinished = await store.get(kids[1])
        assert unfinished is not None
        assert unfinished.status == PERMANENT_ERROR
        assert not await store.restart(resumed.lease, now=NOW + 4, orphans=ORPHANS)

    with_store(open_store, body)


# --- the PostgreSQL store itself --------------------------------------------------------


def test_postgres_migrates_once_when_processes_start_together(postgres_server: str) -> None:
    from dispatchlet.scheduler.store.postgres import SCHEMA_VERSION as PG_VERSION
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def together() -> list[str]:
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(6)))
        try:
            # Every one works on the one schema.
            return [(await s.dispatch([call()], now=NOW))[0] for s in stores]
        finally:
            for store in stores:
                await store.close()

    ids = run(together())
    import psycopg

    with psycopg.connect(url) as db:
        assert db.execute("SELECT version FROM dispatchlet_schema").fetchall() == [(PG_VERSION,)]
        (count,) = db.execute("SELECT count(*) FROM dispatchlet_calls").fetchone() or (0,)
    assert count == len(set(ids)) == 6


def test_postgres_refuses_a_database_of_a_newer_version(postgres_server: str) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import SCHEMA_VERSION as PG_VERSION
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    run(_open_and_close_postgres(url))
    with psycopg.connect(url) as db:
        db.execute("UPDATE dispatchlet_schema SET version = %s", (PG_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this"):
        run(PostgresStore.open(url))


def test_postgres_upgrades_a_database_of_the_previous_version(postgres_server: str) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import SCHEMA_VERSION as PG_VERSION
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    ids = ["old", "older"]
    old_postgres_database(url, 1, [(i, i, None) for i in ids])

    # Kept, and claimable under the new schema.
    assert with_store(lambda: PostgresStore.open(url), claimed_ids) == ids
    with psycopg.connect(url) as db:
        assert db.execute("SELECT version FROM dispatchlet_schema").fetchall() == [(PG_VERSION,)]
        indexes = db.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'dispatchlet_calls'"
        ).fetchall()
    assert ("dispatchlet_calls_ready_root",) in indexes
    assert {(f"dispatchlet_{index}",) for index in LIST_INDEXES} <= set(indexes)


async def _open_and_close_postgres(url: str) -> None:
    from dispatchlet.scheduler.store.postgres import PostgresStore

    store = await PostgresStore.open(url)
    await store.close()


class Wakes:
    """The wake-ups a store's subscriber got (``Store.subscribe``): how many, and
    ``next`` to wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._woken = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._woken.set()

    async def next(self, timeout: float) -> None:
        await asyncio.wait_for(self._woken.wait(), timeout)
        self._woken.clear()


def test_postgres_wakes_the_other_processes_when_calls_are_ready(postgres_server: str) -> None:
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> int:
        dispatcher, listener = await PostgresStore.open(url), await PostgresStore.open(url)
        wakes = Wakes()
        try:
            listener.subscribe(wakes)
            await wakes.next(10)  # listening: it looks once
            await dispatcher.dispatch([call()], now=NOW)
            # Told by the database, long before any polling interval would.
            await wakes.next(10)
            return wakes.count
        finally:
            await dispatcher.close()
            await listener.close()

    assert run(scenario()) >= 2


def test_postgres_says_which_server_it_cannot_reach() -> None:
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = "postgresql://someone:secret@127.0.0.1:9/nowhere"
    with pytest.raises(StoreError, match="cannot connect to") as caught:
        run(PostgresStore.open(url, timeout=2))
    assert "secret" not in str(caught.value)


# --- idempotent dispatch: request ids and call keys -------------------------------------

from dispatchlet.scheduler.store import RequestConflict, RequestId  # noqa: E402


def request(name: str, digest: bytes = b"d1") -> RequestId:
    return RequestId(name, digest)


async def stored(store: Store) -> list[Call]:
    return await store.list(limit=1000)


def test_a_repeated_request_id_gets_the_first_ids_and_stores_nothing(open_store: Any) -> None:
    async def body(store: Store) -> None:
        calls = [call("a"), call("b")]
        first = await store.dispatch(calls, now=NOW, request=request("r1"))
        again = await store.dispatch(calls, now=NOW + 1, request=request("r1"))
        assert again == first
        assert [c.dispatch_id for c in await stored(store)] == first
        # Another request id is another request.
        other = await store.dispatch(calls, now=NOW + 2, request=request("r2"))
        assert set(other).isdisjoint(first)
        assert len(await stored(store)) == 4

    with_store(open_store, body)


def test_a_request_id_used_for_another_request_is_refused(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (first,) = await store.dispatch([call("a")], now=NOW, request=request("r1", b"one"))
        with pytest.raises(RequestConflict, match="'r1' was used for another Dispatch"):
            await store.dispatch([call("b")], now=NOW + 1, request=request("r1", b"two"))
        assert [c.dispatch_id for c in await stored(store)] == [first]

    with_store(open_store, body)


def test_a_known_key_gets_its_calls_id_and_stores_nothing(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (first,) = await store.dispatch([call("a", key="order-17")], now=NOW)
        # Keys are the scheduler's, whatever the request, the function or the input.
        again = await store.dispatch(
            [call("b"), call("a", key="order-17", input=b"other")], now=NOW + 1
        )
        assert again[1] == first
        assert again[0] != first
        assert len(await stored(store)) == 2
        # Within one request: the second call with a key gets the first's id.
        ids = await store.dispatch(
            [call("c", key="k2"), call("d"), call("c", key="k2"), call("e", key="order-17")],
            now=NOW + 2,
        )
        assert ids[2] == ids[0]
        assert ids[3] == first
        assert len(set(ids)) == 3
        assert len(await stored(store)) == 4

    with_store(open_store, body)


def test_a_dispatch_that_fails_keeps_no_request_id_and_no_key(open_store: Any) -> None:
    async def body(store: Store) -> None:
        refused = [call("a", key="k1"), call("b", parent_id="no-such-call")]
        with pytest.raises(INTEGRITY_ERRORS[open_store.kind]()):
            await store.dispatch(refused, now=NOW, request=request("r1"))
        assert await stored(store) == []
        (first,) = await store.dispatch([call("a", key="k1")], now=NOW, request=request("r1"))
        assert [c.dispatch_id for c in await stored(store)] == [first]

    with_store(open_store, body)


def test_request_ids_and_keys_survive_a_restart(open_store: Any) -> None:
    async def first(store: Store) -> list[str]:
        ids = await store.dispatch([call("a", key="k1")], now=NOW, request=request("r1"))
        return ids + await store.dispatch([call("b", key="k2")], now=NOW)

    async def again(store: Store) -> list[str]:
        ids = await store.dispatch([call("a", key="k1")], now=NOW, request=request("r1"))
        return ids + await store.dispatch([call("b", key="k2")], now=NOW)

    assert with_store(open_store, first) == with_store(open_store, again)


DURABLE_ONLY["memory"].add("test_request_ids_and_keys_survive_a_restart")


def test_postgres_concurrent_duplicates_make_one_set_of_calls(postgres_server: str) -> None:
    """Processes that receive the same request (a client's retry racing its first try)
    or calls with the same key at once: one set of calls, every answer the same ids."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    rounds = 20

    async def race() -> tuple[list[list[list[str]]], int]:
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(2)))
        try:
            answers = []
            for n in range(rounds):
                same_request = [call("a"), call("b", key=f"shared-{n}")]
                answers.append(
                    await asyncio.gather(
                        *(
                            s.dispatch(same_request, now=NOW, request=request(f"r{n}"))
                            for s in stores * 2
                        ),
                        # Other requests that share the key.
                        *(s.dispatch([call("c", key=f"shared-{n}")], now=NOW) for s in stores),
                    )
                )
            return answers, len(await stores[0].list(limit=1000))
        finally:
            for store in stores:
                await store.close()

    answers, count = run(race())
    for n, answer in enumerate(answers):
        same, keyed = answer[:4], answer[4:]
        assert all(ids == same[0] for ids in same), (n, answer)
        assert all(ids == [same[0][1]] for ids in keyed), (n, answer)
    assert count == 2 * rounds


# --- call trees: correlation ids, bounds, descendants ended in batches, poison calls ---

UINT64_EDGES = [0, 2**63 - 1, 2**63, 2**64 - 1]


def test_correlation_ids_keep_all_64_bits(open_store: Any) -> None:
    async def body(store: Store) -> None:
        ids = await store.dispatch(
            [call(f"f{n}", correlation_id=c) for n, c in enumerate(UINT64_EDGES)], now=NOW
        )
        got = [await store.get(i) for i in ids]
        assert [c.correlation_id if c else None for c in got] == UINT64_EDGES
        listed = await store.list(limit=10)
        assert [c.correlation_id for c in listed] == UINT64_EDGES
        # A Poll's children, and the results their parent is resumed with.
        claimed = await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        assert [c.call.correlation_id for c in claimed] == UINT64_EDGES
        kids = await store.suspend(
            claimed[0].lease,
            POLL,
            [call("child", correlation_id=c) for c in UINT64_EDGES],
            min_results=4,
            max_results=4,
            until=NOW + 1000,
            now=NOW,
        )
        assert kids is not None
        children = await store.claim(owner="s", now=NOW + 1, limit=10, lease_seconds=LEASE)
        assert [c.call.correlation_id for c in children] == UINT64_EDGES
        for child in children:
            assert await store.finish(child.lease, OK, b"r", now=NOW + 2)
        (woken,) = await store.claim(owner="s", now=NOW + 3, limit=10, lease_seconds=LEASE)
        assert woken.call.dispatch_id == ids[0]
        assert sorted(r.correlation_id for r in woken.results) == UINT64_EDGES

    with_store(open_store, body)


def test_a_poll_beyond_the_bounds_of_its_tree_is_refused_whole(open_store: Any) -> None:
    from dispatchlet.scheduler.store import TreeBounds, TreeLimitExceeded

    bounds = TreeBounds(max_children=4, max_descendants=6)

    async def body(store: Store) -> None:
        (root,) = await store.dispatch([call("root")], now=NOW)
        (claimed,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)

        async def poll(lease: Lease, width: int) -> list[str] | None:
            kids = [call("kid")] * width
            return await store.suspend(
                lease,
                POLL,
                kids,
                min_results=1,
                max_results=1,
                until=NOW + 9,
                now=NOW,
                bounds=bounds,
            )

        with pytest.raises(TreeLimitExceeded) as refused:
            await poll(claimed.lease, 5)
        assert (refused.value.bound, refused.value.limit) == ("children", 4)
        assert (refused.value.count, refused.value.adding) == (0, 5)
        # Nothing changed: the call still runs under its lease, with no children.
        assert [c.dispatch_id for c in await store.list(root_id=root)] == [root]
        kids = await poll(claimed.lease, 4)
        assert kids is not None
        # Below the root: 4 of 6. A child polling 3 would make 7.
        leases = {
            c.call.dispatch_id: c.lease
            for c in await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        }
        with pytest.raises(TreeLimitExceeded) as refused:
            await poll(leases[kids[0]], 3)
        assert (refused.value.bound, refused.value.limit) == ("descendants", 6)
        assert (refused.value.count, refused.value.adding) == (4, 3)
        assert await poll(leases[kids[0]], 2) is not None
        # The count is of every call below the root, finished or not.
        assert await store.finish(leases[kids[1]], OK, b"", now=NOW)
        with pytest.raises(TreeLimitExceeded):
            await poll(leases[kids[2]], 1)
        # Without bounds, a Poll is not counted against any.
        assert (
            await store.suspend(
                leases[kids[2]],
                POLL,
                [call("kid")] * 7,
                min_results=1,
                max_results=1,
                until=NOW + 9,
                now=NOW,
            )
            is not None
        )

    with_store(open_store, body)


async def a_tree(store: Store, widths: list[int]) -> tuple[str, list[str]]:
    """A root call, its ``widths[0]`` children, each with ``widths[1]`` children, ...:
    the root and its descendants, all ready."""
    (root,) = await store.dispatch([call("root")], now=NOW)
    level, below = [root], []
    for width in widths:
        made = []
        for parent in level:
            kids = [call("node", parent_id=parent, root_id=root)] * width
            made += await store.dispatch(kids, now=NOW)
        below += made
        level = made
    return root, below


async def unfinished(store: Store, root: str) -> int:
    calls = await store.list(root_id=root, limit=100_000)
    return sum(1 for c in calls if not c.done)


async def end_all_left(store: Store, now: float) -> int:
    """``end_descendants`` until it has nothing left to do; how many batches it took."""
    batches = 0
    while await store.end_descendants(now=now, limit=END_BATCH):
        batches += 1
        assert batches < 100, "the descendants never all ended"
    return batches


def test_a_cancelled_tree_ends_in_batches(open_store: Any) -> None:
    async def body(store: Store) -> None:
        root, below = await a_tree(store, [30, 40])  # 1,230 descendants
        (other,) = await store.dispatch([call("other")], now=NOW)
        leased = await store.claim(owner="s", now=NOW, limit=1000, lease_seconds=LEASE)
        # The call and the first batch of its descendants, in one short transaction.
        ended = await store.cancel(root, PERMANENT_ERROR, b"cancelled", now=NOW + 1)
        assert ended == 1 + END_BATCH
        found = await store.get(root)
        assert found is not None
        assert (found.state, found.result) == (State.DONE, b"cancelled")
        assert await unfinished(store, root) == len(below) - END_BATCH
        # The rest, a batch at a time; other calls are untouched.
        left = len(below) - END_BATCH
        while left:
            assert await store.end_descendants(now=NOW + 2, limit=END_BATCH)
            now_left = await unfinished(store, root)
            assert left - END_BATCH <= now_left < left
            left = now_left
        assert await end_all_left(store, NOW + 2) == 0
        for dispatch_id in below:
            done = await store.get(dispatch_id)
            assert done is not None
            assert (done.state, done.status, done.result) == (
                State.DONE,
                PERMANENT_ERROR,
                b"cancelled",
            )
        untouched = await store.get(other)
        assert untouched is not None
        assert not untouched.done
        # A lease taken before the cancel is fenced off, even one ended by a later batch.
        for claimed in leased:
            if claimed.call.root_id == root:
                assert not await store.finish(claimed.lease, OK, b"late", now=NOW + 3)

    with_store(open_store, body)


def test_a_finished_call_ends_a_large_tree_in_batches(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (root,) = await store.dispatch([call("root")], now=NOW)
        (claimed,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        kids = await store.dispatch(
            [call("kid", parent_id=root, root_id=root)] * (END_BATCH + 100), now=NOW
        )
        grandkids = await store.dispatch(
            [call("grandkid", parent_id=kids[-1], root_id=root)] * 3, now=NOW
        )
        assert await store.finish(claimed.lease, OK, b"done", now=NOW + 1, orphans=ORPHANS)
        assert await unfinished(store, root) == len(kids) + len(grandkids) - END_BATCH
        assert await end_all_left(store, NOW + 2) >= 1
        for dispatch_id in kids + grandkids:
            orphan = await store.get(dispatch_id)
            assert orphan is not None
            assert (orphan.state, orphan.status, orphan.result) == (
                State.DONE,
                PERMANENT_ERROR,
                b"orphaned",
            )

    with_store(open_store, body)


def test_a_restart_ends_the_children_it_set_aside_not_those_of_the_next_run(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        parent, kids = await suspended(store, END_BATCH + 50, min_results=1, max_results=1)
        leased = await store.claim(owner="s", now=NOW + 1, limit=1000, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in leased}
        assert await store.finish(leases[kids[0]], OK, b"r", now=NOW + 2)
        (resumed,) = await store.claim(owner="s", now=NOW + 3, limit=10, lease_seconds=LEASE)
        assert resumed.call.dispatch_id == parent
        assert await store.restart(resumed.lease, now=NOW + 4, orphans=ORPHANS)
        assert await unfinished(store, parent) == 1 + len(kids) - 1 - END_BATCH
        # The run from its input polls again before the rest of the old children end.
        (again,) = await store.claim(owner="s", now=NOW + 5, limit=10, lease_seconds=LEASE)
        assert again.call.dispatch_id == parent
        new = await store.suspend(
            again.lease,
            POLL,
            [call("new")] * 2,
            min_results=1,
            max_results=1,
            until=NOW + 100,
            now=NOW + 6,
        )
        assert new is not None
        assert await end_all_left(store, NOW + 7) >= 1
        for dispatch_id in kids[1:]:
            old = await store.get(dispatch_id)
            assert old is not None
            assert (old.state, old.result) == (State.DONE, b"orphaned")
        for dispatch_id in new:
            kept = await store.get(dispatch_id)
            assert kept is not None
            assert kept.state is State.READY

    with_store(open_store, body)


def test_descendants_left_to_end_are_ended_after_the_store_reopens(open_store: Any) -> None:
    if open_store.kind == "memory":
        pytest.skip("the memory store keeps nothing across a restart")

    async def cancel(store: Store) -> tuple[str, list[str]]:
        root, below = await a_tree(store, [2, END_BATCH])
        assert await store.cancel(root, PERMANENT_ERROR, b"cancelled", now=NOW) == 1 + END_BATCH
        return root, below

    root, below = with_store(open_store, cancel)  # and the process stops

    async def resume(store: Store) -> None:
        assert await unfinished(store, root) == len(below) - END_BATCH
        assert await end_all_left(store, NOW + 1) >= 1
        assert await unfinished(store, root) == 0

    with_store(open_store, resume)


def test_an_outcome_that_cannot_be_stored_is_counted_under_the_current_lease(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        await store.dispatch([call()], now=NOW)
        (first,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.count_unstored(first.lease) == 1
        assert await store.count_unstored(first.lease) == 2
        assert await store.retry(first.lease, TIMEOUT, b"", ready_at=NOW + 1, now=NOW)
        assert await store.count_unstored(first.lease) is None  # stale
        (second,) = await store.claim(owner="s", now=NOW + 1, limit=1, lease_seconds=LEASE)
        assert await store.count_unstored(second.lease) == 3  # over the call's life

    with_store(open_store, body)


def _tree_rows() -> list[tuple[str, str, str | None]]:
    return [("root", "root", None), ("a", "root", "root"), ("b", "root", "a"), ("c", "root", "a")]


def _before_tree_counts(migrations: tuple[str, ...]) -> int:
    """The schema version before the one that counts each root's descendants."""
    return next(
        n for n, m in enumerate(migrations) if isinstance(m, str) and "ADD COLUMN descendants" in m
    )


async def _counted_on_upgrade(store: Store) -> None:
    """The tree ``_tree_rows`` made before the count existed (3 calls below its root)
    counts against the bound: 3 + 2 > 4."""
    from dispatchlet.scheduler.store import TreeBounds, TreeLimitExceeded

    leased = await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
    lease = next(c.lease for c in leased if c.call.dispatch_id == "b")
    with pytest.raises(TreeLimitExceeded) as refused:
        await store.suspend(
            lease,
            POLL,
            [call("kid")] * 2,
            min_results=1,
            max_results=1,
            until=NOW + 9,
            now=NOW,
            bounds=TreeBounds(max_descendants=4),
        )
    assert refused.value.count == 3


def test_sqlite_counts_the_trees_it_upgrades(tmp_path: Path) -> None:
    from dispatchlet.scheduler.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

    path = tmp_path / "scheduler.db"
    old_sqlite_database(path, _before_tree_counts(SQLITE_MIGRATIONS), _tree_rows())
    with_store(lambda: SQLiteStore.open(path), _counted_on_upgrade)


def test_postgres_counts_the_trees_it_upgrades(postgres_server: str) -> None:
    from dispatchlet.scheduler.store.postgres import MIGRATIONS as PG_MIGRATIONS
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    old_postgres_database(url, _before_tree_counts(PG_MIGRATIONS), _tree_rows())
    with_store(lambda: PostgresStore.open(url), _counted_on_upgrade)


# --- List's summaries and indexes, read beside the writer ----------------------------


def test_list_gives_summaries_and_get_the_whole_call(open_store: Any) -> None:
    """A summary has no input, no workflow state and no output; an error is kept when it
    is small (a table of calls shows it), else left to ``get``."""
    from dispatchlet.scheduler.store import LISTED_ERROR_BYTES

    large_error = b"E" * (LISTED_ERROR_BYTES + 1)

    async def body(store: Store) -> None:
        parent, _ = await suspended(store, 1, min_results=1, max_results=1)
        ok, small, large, retried = await store.dispatch(
            [call(f"f{n}", input=b"I" * 1000) for n in range(4)], now=NOW
        )
        leases = {
            c.call.dispatch_id: c.lease
            for c in await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        }
        assert await store.finish(leases[ok], OK, b"O" * 1000, now=NOW + 1)
        assert await store.finish(leases[small], PERMANENT_ERROR, b"e", now=NOW + 1)
        assert await store.finish(leases[large], PERMANENT_ERROR, large_error, now=NOW + 1)
        assert await store.retry(leases[retried], TIMEOUT, b"t", ready_at=NOW + 9, now=NOW + 1)
        listed = {c.dispatch_id: c for c in await store.list(limit=100)}
        for dispatch_id in (parent, ok, small, large, retried):
            summary, whole = listed[dispatch_id], await store.get(dispatch_id)
            assert whole is not None
            assert (summary.input, summary.poll) == (b"", b"")
            shown = whole.result if dispatch_id in (small, retried) else b""
            assert summary == dataclasses.replace(whole, input=b"", poll=b"", result=shown)
        whole_ok, whole_parent = await store.get(ok), await store.get(parent)
        assert whole_ok is not None
        assert whole_parent is not None
        assert (whole_ok.input, whole_ok.result) == (b"I" * 1000, b"O" * 1000)
        assert whole_parent.poll == POLL
        assert (await store.get(large) or whole_ok).result == large_error

    with_store(open_store, body)


def test_list_filters_match_after_every_change_of_state(open_store: Any) -> None:
    """The state filters follow a call through its runs (List's indexes of states are
    told apart by ``finished_at``, which only a final call has)."""

    async def body(store: Store) -> None:
        a, b = await store.dispatch([call("a"), call("b")], now=NOW)

        async def states() -> dict[State, list[str]]:
            found = {s: [c.dispatch_id for c in await store.list(state=s)] for s in State}
            for state, ids in found.items():
                newest = [c.dispatch_id for c in await store.list(state=state, newest_first=True)]
                assert newest == ids[::-1]
            return found

        assert await states() == {
            State.READY: [a, b],
            State.RUNNING: [],
            State.WAITING: [],
            State.DONE: [],
        }
        leases = {
            c.call.dispatch_id: c.lease
            for c in await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        }
        assert (await states())[State.RUNNING] == [a, b]
        assert await store.finish(leases[a], OK, b"", now=NOW + 1)
        assert await store.retry(leases[b], TIMEOUT, b"e", ready_at=NOW + 2, now=NOW + 1)
        assert await states() == {
            State.READY: [b],
            State.RUNNING: [],
            State.WAITING: [],
            State.DONE: [a],
        }
        assert await store.cancel(b, PERMANENT_ERROR, b"c", now=NOW + 3) == 1
        assert (await states())[State.DONE] == [a, b]
        assert [c.dispatch_id for c in await store.list(failed=True)] == [b]

    with_store(open_store, body)


def test_postgres_list_reads_an_index_in_creation_order(postgres_server: str) -> None:
    """Each filter's page is an index scan in ``seq`` order, with no sort, in a table
    of mostly finished calls as a scheduler's is (the planner weighs what it matches)."""
    import psycopg
    from dispatchlet.scheduler.store.postgres import SQL as PG
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def filled() -> None:
        store = await PostgresStore.open(url)
        try:
            for _ in range(10):
                await store.dispatch([call(f"f{n % 20}") for n in range(1000)], now=NOW)
        finally:
            await store.close()

    run(filled())
    filters: list[dict[str, Any]] = [
        {"state": "done"},
        {"state": "ready"},
        {"function": "f1"},
        {"function": "f1", "state": "ready"},
        {"root_id": "r"},
        {"status": 7},
        {"failed": True},
    ]
    # What 1 call in 50 (ready) or in 1000 (failed) matches.
    selective = [f for f in filters if f.get("state") == "ready" or "status" in f or "failed" in f]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "UPDATE dispatchlet_calls SET state = 'done', status = 1, finished_at = created_at "
            "WHERE seq % 50 <> 0"
        )
        db.execute("UPDATE dispatchlet_calls SET status = 7 WHERE seq % 997 = 0")
        db.execute("ANALYZE dispatchlet_calls")
        for chosen in filters:
            for newest_first in (True, False):
                arguments: dict[str, Any] = {
                    "state": None,
                    "function": None,
                    "root_id": None,
                    "status": None,
                    "failed": False,
                    "newest_first": newest_first,
                    "after": None,
                    "limit": 100,
                    **chosen,
                }
                query, params = PG.list(**arguments)
                plan = "\n".join(
                    str(row[0]) for row in db.execute(f"EXPLAIN {query}".encode(), params)
                )
                assert "Sort" not in plan, (chosen, plan)
                assert "Seq Scan" not in plan, (chosen, plan)
                if chosen in selective:  # else reading in seq order finds a page soon too
                    assert "Index Scan Backward using dispatchlet_calls_list_" in plan or (
                        "Index Scan using dispatchlet_calls_list_" in plan
                    ), (chosen, plan)


# --- claims among destinations that are full ---------------------------------------------


def test_a_full_destination_does_not_hide_the_calls_of_others(open_store: Opener) -> None:
    """The oldest calls all go to a destination with no room (it hangs): a claim still
    finds the younger call of another destination."""

    async def scenario() -> list[str]:
        store = await open_store()
        try:
            hung = [call(endpoint="http://hung.test") for _ in range(40)]
            await store.dispatch(hung, now=NOW)
            (healthy,) = await store.dispatch([call(endpoint="http://ok.test")], now=NOW + 1)
            room = {"http://hung.test": 0, "http://ok.test": 4}
            claimed = await store.claim(
                owner="a", now=NOW + 2, limit=1, lease_seconds=30, room=room.__getitem__
            )
            assert [c.call.dispatch_id for c in claimed] == [healthy]
            return [c.call.endpoint for c in claimed]
        finally:
            await store.close()

    assert run(scenario()) == ["http://ok.test"]


# --- waiters told of calls that change ---------------------------------------------------


def test_how_often_a_waiter_reads_its_call_again(open_store: Opener) -> None:
    """Never, on a store one process uses (its engine wakes its waiters, and the store
    tells them nothing); now and then on PostgreSQL, where a notification may be lost."""
    kind = open_store.kind  # type: ignore[attr-defined]

    async def scenario() -> float | None:
        store = await open_store()
        try:
            told: list[tuple[str | None, str | None]] = []
            reread = store.watch(lambda *change: told.append(change))
            await store.dispatch([call()], now=NOW)
            (claimed,) = await store.claim(owner="a", now=NOW, limit=1, lease_seconds=30)
            await store.finish(claimed.lease, 1, b"", now=NOW)
            if kind != "postgres":
                assert told == []
            return reread
        finally:
            await store.close()

    reread = run(scenario())
    if kind == "postgres":
        assert reread is not None
        assert 0 < reread <= 60
    else:
        assert reread is None


def test_postgres_tells_every_process_of_ends_retries_and_cancels(postgres_server: str) -> None:
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> list[tuple[str | None, str | None]]:
        writer, watcher = await PostgresStore.open(url), await PostgresStore.open(url)
        told: list[tuple[str | None, str | None]] = []
        news = asyncio.Event()

        def changed(dispatch_id: str | None, root_id: str | None) -> None:
            told.append((dispatch_id, root_id))
            news.set()

        async def next_change() -> tuple[str | None, str | None]:
            while not told:
                await asyncio.wait_for(news.wait(), 30)
                news.clear()
            return told.pop(0)

        try:
            watcher.watch(changed)
            # Listening: any call may have changed while it did not listen.
            assert await next_change() == (None, None)
            retried, ended, cancelled = await writer.dispatch([call(), call(), call()], now=NOW)
            claims = await writer.claim(owner="w", now=NOW, limit=3, lease_seconds=30)
            leases = {c.call.dispatch_id: c.lease for c in claims}
            assert await writer.retry(leases[retried], 7, b"e", ready_at=NOW + 1, now=NOW)
            assert await next_change() == (retried, None)
            assert await writer.finish(leases[ended], 1, b"", now=NOW)
            assert await next_change() == (ended, ended)
            assert await writer.cancel(cancelled, 4, b"", now=NOW) == 1
            assert await next_change() == (cancelled, cancelled)
            # A stale lease changes nothing and tells no one.
            assert not await writer.retry(leases[ended], 7, b"e", ready_at=NOW + 1, now=NOW)
            assert not await writer.finish(leases[cancelled], 1, b"", now=NOW)
            # A cancel that ends descendants tells their tree too.
            (parent,) = await writer.dispatch([call()], now=NOW)
            await writer.dispatch([call(parent_id=parent, root_id=parent)], now=NOW)
            assert await writer.cancel(parent, 4, b"", now=NOW) == 2
            assert await next_change() == (parent, parent)
            assert await next_change() == (None, parent)
            return told
        finally:
            await writer.close()
            await watcher.close()

    assert run(scenario()) == []


def test_postgres_tells_every_process_of_each_call_of_a_batch_of_ends(
    postgres_server: str,
) -> None:
    """Ends committed together are told a hundred to a notification: each one of them,
    with its root, to every process."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> tuple[set[tuple[str | None, str | None]], set[tuple[str, str]]]:
        writer, watcher = await PostgresStore.open(url), await PostgresStore.open(url)
        told: set[tuple[str | None, str | None]] = set()
        news = asyncio.Event()

        def changed(dispatch_id: str | None, root_id: str | None) -> None:
            told.add((dispatch_id, root_id))
            news.set()

        try:
            watcher.watch(changed)
            while (None, None) not in told:  # listening
                await asyncio.wait_for(news.wait(), 30)
                news.clear()
            await writer.dispatch([call() for _ in range(250)], now=NOW)
            claims = await writer.claim(owner="w", now=NOW, limit=300, lease_seconds=30)
            ended = {(c.call.dispatch_id, c.call.root_id) for c in claims}
            assert len(ended) == 250
            # Finished at once: they queue up for one batch (group commit).
            await asyncio.gather(*(writer.finish(c.lease, 1, b"", now=NOW) for c in claims))
            while not ended <= told:
                await asyncio.wait_for(news.wait(), 30)
                news.clear()
            return told - {(None, None)}, ended
        finally:
            await writer.close()
            await watcher.close()

    told, ended = run(scenario())
    assert told == ended


# --- actions on a call: retry now, re-runs; a call's children listed -------------------


def test_retry_now_brings_a_backed_off_retry_forward_once(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)
        # Due already (a first attempt): nothing to bring forward.
        assert await store.retry_now(dispatch_id, now=NOW) == (State.READY, False)
        (claimed,) = await store.claim(owner="a", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.retry_now(dispatch_id, now=NOW) == (State.RUNNING, False)
        assert await store.retry(claimed.lease, TIMEOUT, b"e", ready_at=NOW + 600, now=NOW)
        assert await store.claim(owner="a", now=NOW + 1, limit=1, lease_seconds=LEASE) == []
        assert await store.retry_now(dispatch_id, now=NOW + 1) == (State.READY, True)
        # Idempotent: once due, it stays as it is.
        assert await store.retry_now(dispatch_id, now=NOW + 2) == (State.READY, False)
        found = await store.get(dispatch_id)
        assert found is not None
        assert (found.ready_at, found.status, found.result) == (NOW + 1, TIMEOUT, b"e")
        (again,) = await store.claim(owner="a", now=NOW + 2, limit=1, lease_seconds=LEASE)
        assert again.call.dispatch_id == dispatch_id
        assert again.call.attempts == 2
        assert await store.retry_now("0" * 32, now=NOW) is None

    with_store(open_store, body)


def test_retry_now_changes_no_waiting_or_done_call(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        waiting, done = await store.dispatch([call("w"), call("d")], now=NOW)
        claims = await store.claim(owner="a", now=NOW, limit=2, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claims}
        assert await store.suspend(
            leases[waiting],
            b"",
            [call("child")],
            min_results=1,
            max_results=1,
            until=NOW + 600,
            now=NOW,
        )
        assert await store.finish(leases[done], PERMANENT_ERROR, b"e", now=NOW)
        assert await store.retry_now(waiting, now=NOW + 1) == (State.WAITING, False)
        assert await store.retry_now(done, now=NOW + 1) == (State.DONE, False)
        found = await store.get(done)
        assert found is not None
        assert (found.state, found.status, found.finished_at) == (State.DONE, PERMANENT_ERROR, NOW)

    with_store(open_store, body)


def test_a_rerun_is_a_root_call_that_names_the_old_one(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        (old,) = await store.dispatch([call("f")], now=NOW)
        (other,) = await store.dispatch([call("f")], now=NOW)
        first, second = await store.dispatch(
            [call("f", rerun_of=old), call("f", rerun_of=old)], now=NOW + 1
        )
        (unrelated,) = await store.dispatch([call("f", rerun_of=other)], now=NOW + 1)
        found = await store.get(first)
        assert found is not None
        assert (found.rerun_of, found.root_id, found.parent_id) == (old, first, None)
        assert (await store.get(old)).rerun_of is None  # type: ignore[union-attr]
        listed = await store.list(rerun_of=old)
        assert [c.dispatch_id for c in listed] == [first, second]
        assert [c.rerun_of for c in listed] == [old, old]  # the summaries carry the link
        newest = await store.list(rerun_of=old, newest_first=True, limit=1)
        assert [c.dispatch_id for c in newest] == [second]
        assert await store.list(rerun_of=old, newest_first=True, after=second) == [listed[0]]
        assert [c.dispatch_id for c in await store.list(rerun_of=other)] == [unrelated]

    with_store(open_store, body)


def test_list_gives_the_children_of_one_call(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        parent, other = await store.dispatch([call("p"), call("o")], now=NOW)
        claims = await store.claim(owner="a", now=NOW, limit=2, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claims}
        children = await store.suspend(
            leases[parent],
            b"",
            [call("c1"), call("c2"), call("c3")],
            min_results=3,
            max_results=3,
            until=NOW + 600,
            now=NOW,
        )
        assert children is not None
        await store.suspend(
            leases[other],
            b"",
            [call("x")],
            min_results=1,
            max_results=1,
            until=NOW + 600,
            now=NOW,
        )
        # A grandchild is not a child.
        await store.dispatch([call("g", parent_id=children[0], root_id=parent)], now=NOW)
        listed = await store.list(parent_id=parent)
        assert [c.dispatch_id for c in listed] == children
        assert {(c.parent_id, c.root_id) for c in listed} == {(parent, parent)}
        page = await store.list(parent_id=parent, newest_first=True, limit=2)
        assert [c.dispatch_id for c in page] == children[:0:-1]
        rest = await store.list(parent_id=parent, newest_first=True, after=page[-1].dispatch_id)
        assert [c.dispatch_id for c in rest] == children[:1]
        done = await store.list(parent_id=parent, state=State.READY, function="c2")
        assert [c.dispatch_id for c in done] == children[1:2]

    with_store(open_store, body)


def test_postgres_retry_now_tells_other_processes_a_call_is_claimable(
    postgres_server: str,
) -> None:
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> None:
        writer, other = await PostgresStore.open(url), await PostgresStore.open(url)
        woken = asyncio.Event()
        try:
            (dispatch_id,) = await writer.dispatch([call()], now=NOW)
            (claimed,) = await writer.claim(owner="w", now=NOW, limit=1, lease_seconds=LEASE)
            assert await writer.retry(claimed.lease, TIMEOUT, b"e", ready_at=NOW + 600, now=NOW)
            other.subscribe(woken.set)
            # Woken first once it listens (what it may have missed); from then on, only
            # a call made claimable wakes it.
            await asyncio.wait_for(woken.wait(), 30)
            woken.clear()
            assert await writer.retry_now(dispatch_id, now=NOW + 1) == (State.READY, True)
            await asyncio.wait_for(woken.wait(), 30)
            (again,) = await other.claim(owner="o", now=NOW + 1, limit=1, lease_seconds=LEASE)
            assert again.call.dispatch_id == dispatch_id
        finally:
            await writer.close()
            await other.close()

    run(scenario())


def test_postgres_an_attempt_whose_claim_was_lost_stores_no_outcome(
    postgres_server: str,
) -> None:
    """A claim's commit is not waited for on disk: a server crash may lose it while the
    scheduler that made it runs the call on. The call is ready again, and the next claim
    takes it with the same token, by another process or by the same one: the lost
    claim's attempt can then record nothing, the new one can."""
    import psycopg
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    # What a crash that lost the claim's commit leaves: the call as it was before.
    lost_claim = (
        "UPDATE dispatchlet_calls SET state = 'ready', lease_token = lease_token - 1,"
        " lease_owner = NULL, lease_expires = NULL, attempts = attempts - 1"
        " WHERE dispatch_id = %s"
    )

    async def scenario() -> None:
        store = await PostgresStore.open(url)
        try:
            (dispatch_id,) = await store.dispatch([call()], now=NOW)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
                (lost,) = await store.claim(owner="a", now=NOW, limit=1, lease_seconds=LEASE)
                await db.execute(lost_claim, (dispatch_id,))
                (other,) = await store.claim(owner="b", now=NOW, limit=1, lease_seconds=LEASE)
                assert other.lease.token == lost.lease.token
                assert not await store.finish(lost.lease, OK, b"lost", now=NOW + 1)
                assert not await store.retry(
                    lost.lease, TIMEOUT, b"lost", ready_at=NOW + 2, now=NOW + 1
                )
                assert not await store.extend(lost.lease, until=NOW + 2 * LEASE)
                assert not await store.release(lost.lease, ready_at=NOW + 1)
                # Lost again, and claimed again by the same process.
                await db.execute(lost_claim, (dispatch_id,))
                (same,) = await store.claim(owner="b", now=NOW, limit=1, lease_seconds=LEASE)
                assert same.lease.token == other.lease.token
                assert (
                    await store.suspend(
                        other.lease, b"", [], min_results=0, max_results=1, until=NOW, now=NOW
                    )
                    is None
                )
                assert await store.finish(same.lease, OK, b"kept", now=NOW + 1)
                # Its token is the done call's: nor does it add its attempt to the history.
                ran = attempt(OK)
                assert not await store.finish(other.lease, OK, b"", now=NOW + 1, attempt=ran)
            done = await store.get(dispatch_id)
            assert done is not None
            assert (done.state, done.status, done.result) == (State.DONE, OK, b"kept")
            assert (await store.history(dispatch_id)).total == 0
        finally:
            await store.close()

    run(scenario())


def test_postgres_a_lost_claims_finish_beside_the_valid_one_in_a_batch_harms_neither(
    postgres_server: str,
) -> None:
    """Finishes are recorded in batches: the finish of an attempt whose claim a server
    crash lost, in the same batch as the finish of the attempt that claimed the call
    again (the same token), leaves the valid one recorded, with the call's unfinished
    children queued to end once."""
    import psycopg
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> None:
        store = await PostgresStore.open(url)
        try:
            (parent,) = await store.dispatch([call()], now=NOW)
            (first,) = await store.claim(owner="a", now=NOW, limit=1, lease_seconds=LEASE)
            # A child left unfinished: the parent's finish queues its ending.
            await store.suspend(
                first.lease, b"x", [call()], min_results=1, max_results=1, until=NOW + 1, now=NOW
            )
            later = NOW + 2
            claimed = await store.claim(owner="a", now=later, limit=10, lease_seconds=LEASE)
            lost = next(c for c in claimed if c.call.dispatch_id == parent)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
                await db.execute(
                    "UPDATE dispatchlet_calls SET state = 'waiting', lease_token ="
                    " lease_token - 1, lease_owner = NULL, lease_expires = NULL,"
                    " attempts = attempts - 1 WHERE dispatch_id = %s",
                    (parent,),
                )
            again = await store.claim(owner="a", now=later, limit=10, lease_seconds=LEASE)
            valid = next(c for c in again if c.call.dispatch_id == parent)
            assert valid.lease.token == lost.lease.token
            stale, kept = await asyncio.gather(
                store.finish(lost.lease, OK, b"stale", now=later + 1),
                store.finish(valid.lease, OK, b"valid", now=later + 1),
            )
            assert (stale, kept) == (False, True)
            done = await store.get(parent)
            assert done is not None
            assert (done.state, done.result) == (State.DONE, b"valid")
        finally:
            await store.close()

    run(scenario())


def test_postgres_claims_under_a_cap_are_waited_for_on_disk(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's commit is not waited for on disk, but under ``--max-per-destination``
    it is: the cap counts the leases of every process, and a lost one would let others
    start past it while its attempt runs."""
    import psycopg
    from dispatchlet.scheduler.store import postgres
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    # Each claim committed without waiting leaves a row: the statement that says so.
    monkeypatch.setattr(postgres, "ASYNC_COMMIT", "INSERT INTO async_claims VALUES (1)")

    async def scenario() -> int:
        store = await PostgresStore.open(url)
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
                await db.execute("CREATE TABLE async_claims (n integer)")
                await store.dispatch([call(), call()], now=NOW)
                (_capped,) = await store.claim(
                    owner="a", now=NOW, limit=1, lease_seconds=LEASE, cap=8
                )
                count = await db.execute("SELECT count(*) FROM async_claims")
                assert (await count.fetchone()) == (0,)
                (_free,) = await store.claim(owner="a", now=NOW, limit=1, lease_seconds=LEASE)
                count = await db.execute("SELECT count(*) FROM async_claims")
                row = await count.fetchone()
                assert row is not None
                return int(row[0])
        finally:
            await store.close()

    assert run(scenario()) == 1


def test_postgres_lists_children_and_reruns_through_their_indexes(postgres_server: str) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import SQL as PG
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def filled() -> None:
        store = await PostgresStore.open(url)
        try:
            for _ in range(5):
                roots = await store.dispatch([call() for _ in range(500)], now=NOW)
                await store.dispatch(
                    [call(parent_id=r, root_id=r) for r in roots[:250]]
                    + [call(rerun_of=r) for r in roots[250:]],
                    now=NOW,
                )
        finally:
            await store.close()

    run(filled())
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("ANALYZE dispatchlet_calls")
        for chosen in ({"parent_id": "p"}, {"rerun_of": "r"}):
            for newest_first in (True, False):
                query, params = PG.list(
                    state=None,
                    function=None,
                    root_id=None,
                    status=None,
                    failed=False,
                    newest_first=newest_first,
                    after=None,
                    limit=100,
                    **chosen,
                )
                plan = "\n".join(
                    str(row[0]) for row in db.execute(f"EXPLAIN {query}".encode(), params)
                )
                assert "Sort" not in plan, (chosen, plan)
                column = next(iter(chosen)).split("_")[0]
                assert f"dispatchlet_calls_list_{column}" in plan, (chosen, plan)


# --- trace context -------------------------------------------------------------------


def test_a_calls_trace_context_is_kept_for_its_whole_life(open_store: Opener) -> None:
    """The context its attempts' spans are children of: stored with the call, with a
    Poll's children (their own), kept by a claim, a retry, a tail call and a restart."""
    traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nvendor=value"
    child_trace = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"

    async def body(store: Store) -> list[str]:
        parent, plain = await store.dispatch([call(trace_context=traced), call()], now=NOW)
        seen = []
        (claimed,) = [
            c
            for c in await store.claim(owner="o", now=NOW, limit=2, lease_seconds=LEASE)
            if c.call.dispatch_id == parent
        ]
        seen.append(claimed.call.trace_context)
        assert await store.retry(claimed.lease, TIMEOUT, b"", ready_at=NOW, now=NOW)
        (again,) = await store.claim(owner="o", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.tail_call(again.lease, "g", "http://127.0.0.1:8000", b"", now=NOW)
        (tailed,) = await store.claim(owner="o", now=NOW, limit=1, lease_seconds=LEASE)
        seen.append(tailed.call.trace_context)
        (child,) = await store.suspend(
            tailed.lease,
            b"",
            [call("c", trace_context=child_trace)],
            min_results=1,
            max_results=1,
            until=NOW + 60,
            now=NOW,
        ) or [""]
        found = await store.get(child)
        assert found is not None
        seen.append(found.trace_context)
        (listed,) = await store.list(root_id=parent, state=State.WAITING)
        seen.append(listed.trace_context)
        unset = await store.get(plain)
        assert unset is not None
        seen.append(unset.trace_context)
        return seen

    assert with_store(open_store, body) == [traced, traced, child_trace, traced, ""]


# --- the queue's depth and the calls finished lately (metrics, the overview) -------------


def test_queue_stats_count_the_calls_not_done_by_state(open_store: Opener) -> None:
    async def scenario(store: Store) -> tuple[QueueStats, QueueStats]:
        empty = await store.queue_stats(now=NOW)
        ids = await store.dispatch([call("a"), call("b"), call("c"), call("d")], now=NOW)
        claims = await store.claim(owner="o", now=NOW + 1, limit=4, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claims}
        running, retried, suspended, released = ids
        assert await store.retry(leases[retried], 7, b"e", ready_at=NOW + 100, now=NOW + 1)
        await store.suspend(
            leases[suspended],
            b"",
            [call("child")],
            min_results=1,
            max_results=1,
            until=NOW + 1000,
            now=NOW + 1,
        )
        assert await store.release(leases[released], ready_at=NOW + 2)
        (done,) = await store.dispatch([call("e")], now=NOW + 3)
        assert await store.cancel(done, PERMANENT_ERROR, b"", now=NOW + 3) == 1
        assert running in leases
        return empty, await store.queue_stats(now=NOW + 10)

    empty, stats = with_store(open_store, scenario)
    assert empty == QueueStats(ready=0, scheduled=0, running=0, waiting=0, oldest_ready=None)
    assert empty.oldest_ready_age(NOW) == 0
    # Ready: the child (since NOW + 1) and the released call (since NOW + 2); the retry
    # is due later; the cancelled call is done.
    assert (stats.ready, stats.scheduled, stats.running, stats.waiting) == (2, 1, 1, 1)
    assert stats.oldest_ready == NOW + 1
    assert stats.oldest_ready_age(NOW + 10) == 9


async def finish_at(
    store: Store, function: str, created: float, finished: float, status: int
) -> str:
    """A call of ``function`` created at ``created`` and finished with ``status`` at
    ``finished`` (no other call is ready meanwhile)."""
    (dispatch_id,) = await store.dispatch([call(function)], now=created)
    (claimed,) = await store.claim(owner="o", now=created, limit=1, lease_seconds=1e6)
    assert claimed.call.dispatch_id == dispatch_id
    assert await store.finish(claimed.lease, status, b"", now=finished)
    return dispatch_id


def test_finished_stats_count_a_window_by_minute_status_and_function(open_store: Opener) -> None:
    minute = int(NOW // 60)

    async def scenario(store: Store) -> tuple[Finished, Finished, Finished]:
        await finish_at(store, "fast", NOW - 500, NOW - 10, OK)  # before the window
        for i in range(1, 11):  # 1 to 10 seconds, each in a minute of its own
            await finish_at(store, "fast", NOW + 60 * i, NOW + 61 * i, OK)
        await finish_at(store, "slow", NOW + 1000, NOW + 1100, OK)
        await finish_at(store, "slow", NOW + 1200, NOW + 1400, PERMANENT_ERROR)
        await finish_at(store, "slow", NOW + 2000, NOW + 2300, OK)
        await finish_at(store, "slow", NOW + 3000, NOW + 3700, OK)  # after ``now``
        await store.dispatch([call("slow")], now=NOW + 3000)  # not finished
        window = {"since": NOW, "now": NOW + 3600}
        whole = await store.finished_stats(**window)
        first = await store.finished_stats(**window, limit=1)
        nothing = await store.finished_stats(since=NOW - 7200, now=NOW - 3600)
        return whole, first, nothing

    whole, first, nothing = with_store(open_store, scenario)
    assert whole.functions == (
        FunctionStats("fast", calls=10, failed=0, p50=5.0, p99=10.0),
        FunctionStats("slow", calls=3, failed=1, p50=200.0, p99=300.0),
    )
    assert whole.per_minute == (
        *(FinishedCount(minute + i, OK, 1) for i in range(1, 11)),
        FinishedCount(minute + 18, OK, 1),
        FinishedCount(minute + 23, PERMANENT_ERROR, 1),
        FinishedCount(minute + 38, OK, 1),
    )
    assert first.functions == whole.functions[:1]
    assert nothing == Finished(per_minute=(), functions=())


def test_finished_stats_count_calls_that_finished_in_the_same_minute_together(
    open_store: Opener,
) -> None:
    async def scenario(store: Store) -> Finished:
        for status in (OK, OK, TIMEOUT):
            await finish_at(store, "f", NOW, NOW + 5, status)
        return await store.finished_stats(since=NOW, now=NOW + 60)

    found = with_store(open_store, scenario)
    minute = int(NOW // 60)
    assert found.per_minute == (FinishedCount(minute, OK, 2), FinishedCount(minute, TIMEOUT, 1))
    assert found.functions == (FunctionStats("f", calls=3, failed=1, p50=5.0, p99=5.0),)


def test_sqlite_reads_the_queue_and_recent_finishes_through_indexes(tmp_path: Path) -> None:
    from dispatchlet.scheduler.store.sqlite import SQL as LITE

    async def opened() -> None:
        await (await SQLiteStore.open(tmp_path / "scheduler.db")).close()

    run(opened())
    window = {"since": NOW, "now": NOW + 3600, "limit": 100}
    with sqlite3.connect(tmp_path / "scheduler.db") as db:
        for query in (LITE.queue_stats, LITE.finished_per_minute, LITE.finished_by_function):
            plan = [str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {query}", window)]
            # Every read of the calls is a search of an index, none a scan of the table.
            reads = [step for step in plan if " calls" in step]
            assert reads, plan
            assert all("USING" in step and "INDEX" in step for step in reads), plan
            if query is not LITE.queue_stats:
                assert all("calls_finished_at" in step for step in reads), plan


def test_postgres_reads_the_queue_and_recent_finishes_through_indexes(
    postgres_server: str,
) -> None:
    """In a table of mostly finished calls, finished over days, as a scheduler's is."""
    import psycopg
    from dispatchlet.scheduler.store.postgres import SQL as PG
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def filled() -> None:
        store = await PostgresStore.open(url)
        try:
            for _ in range(10):
                await store.dispatch([call(f"f{n % 20}") for n in range(1000)], now=NOW)
        finally:
            await store.close()

    run(filled())
    with psycopg.connect(url, autocommit=True) as db:
        # Finished over 10 days, one call in 50 not finished.
        db.execute(
            "UPDATE dispatchlet_calls SET state = 'done', status = 1,"
            " finished_at = created_at + (seq % 1000) * 864 WHERE seq % 50 <> 0"
        )
        db.execute("ANALYZE dispatchlet_calls")
        window = {"since": NOW + 9 * 86400, "now": NOW + 10 * 86400, "limit": 100}
        for query in (PG.queue_stats, PG.finished_per_minute, PG.finished_by_function):
            plan = "\n".join(str(row[0]) for row in db.execute(f"EXPLAIN {query}".encode(), window))
            assert "Seq Scan" not in plan, plan
            if query is not PG.queue_stats:
                assert "dispatchlet_calls_finished_at" in plan, plan


# --- counts by state (the dashboard's header) -----------------------------------------


def test_count_by_state_counts_each_state_up_to_the_cap(open_store: Any) -> None:
    async def body(store: Store) -> None:
        assert await store.count_by_state() == dict.fromkeys(State, 0)
        ended, running, waiting, *_ = await store.dispatch([call() for _ in range(6)], now=NOW)
        claims = await store.claim(owner="s", now=NOW, limit=3, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claims}
        assert set(leases) == {ended, running, waiting}
        assert await store.finish(leases[ended], OK, b"", now=NOW + 1)
        poll = b""
        child = [call(parent_id=waiting, root_id=waiting)]
        assert await store.suspend(
            leases[waiting], poll, child, min_results=1, max_results=1, until=NOW + 60, now=NOW
        )
        # Three never claimed and the child: ready; one running; one waiting; one done.
        counts = await store.count_by_state()
        assert counts == {State.READY: 4, State.RUNNING: 1, State.WAITING: 1, State.DONE: 1}
        # A count stops at the cap: a state with more calls says "at least that many".
        capped = await store.count_by_state(cap=2)
        assert capped == {State.READY: 2, State.RUNNING: 1, State.WAITING: 1, State.DONE: 1}

    with_store(open_store, body)


# --- retention: finished trees deleted, in batches ------------------------------------


async def purge_all(store: Store, *, before: float, limit: int, **filters: Any) -> list[int]:
    """``purge`` until it deletes nothing more; how many each batch deleted."""
    batches = []
    while deleted := await store.purge(before=before, limit=limit, **filters):
        batches.append(deleted)
        assert len(batches) < 10_000, "the purge never ends"
    return batches


def test_purge_deletes_the_finished_trees_older_than_the_window_and_no_other(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        # A: a root, its child and grandchild; B: a root with a request id and a key;
        # G: a request's two roots, one kept running; C: finished later; E: running;
        # F: failed.
        (a,) = await store.dispatch([call()], now=NOW)
        (a1,) = await store.dispatch([call(parent_id=a, root_id=a)], now=NOW)
        (a2,) = await store.dispatch([call(parent_id=a1, root_id=a)], now=NOW)
        (b,) = await store.dispatch([call(key="k1")], now=NOW, request=request("req-1"))
        g1, g2 = await store.dispatch([call(), call()], now=NOW, request=request("req-2"))
        c, e, f = await store.dispatch([call(), call(), call()], now=NOW)
        claimed = await store.claim(owner="o", now=NOW, limit=50, lease_seconds=1000)
        leases = {claim.call.dispatch_id: claim.lease for claim in claimed}
        assert set(leases) == {a, a1, a2, b, g1, g2, c, e, f}
        for dispatch_id in (a2, a1, a, b, g1):
            assert await store.finish(leases[dispatch_id], OK, b"", now=NOW + 1)
        assert await store.finish(leases[f], PERMANENT_ERROR, b"e", now=NOW + 1)
        assert await store.finish(leases[c], OK, b"", now=NOW + 100)
        # D: cancelled with more descendants than one batch ends: some still to end.
        (d,) = await store.dispatch([call()], now=NOW)
        below = await store.dispatch(
            [call(parent_id=d, root_id=d) for _ in range(END_BATCH + 2)], now=NOW
        )
        assert await store.cancel(d, PERMANENT_ERROR, b"c", now=NOW + 1) == 1 + END_BATCH

        # Only the failed tree, with that filter.
        assert await purge_all(store, before=NOW + 50, limit=2, failed=True) == [1]
        assert await store.get(f) is None
        # Then the other finished trees older than the window, two calls at a time: A's
        # root goes after its descendants.
        batches = await purge_all(store, before=NOW + 50, limit=2)
        assert sum(batches) == 5, batches
        assert max(batches) <= 2, batches
        for gone in (a, a1, a2, b, g1):
            assert await store.get(gone) is None, gone
        for kept in (c, e, g2, d, *below):
            assert await store.get(kept) is not None, kept
        # The request id and the key of B went with it; req-2 still names G2.
        (again,) = await store.dispatch([call(key="k1")], now=NOW + 60, request=request("req-1"))
        assert again != b
        assert await store.dispatch([call(), call()], now=NOW + 60, request=request("req-2")) == [
            g1,
            g2,
        ]
        # Once D's descendants have all ended, its tree goes, in batches.
        await end_all_left(store, NOW + 2)
        batches = await purge_all(store, before=NOW + 50, limit=200)
        assert sum(batches) == END_BATCH + 3, batches
        assert max(batches) <= 200, batches
        assert await store.get(d) is None
        assert all([await store.get(i) is None for i in below])
        # A later window takes C; E and G2 run on.
        assert await purge_all(store, before=NOW + 200, limit=200) == [1]
        assert await store.get(c) is None
        assert await store.get(e) is not None
        assert await store.get(g2) is not None

    with_store(open_store, body)


def test_postgres_processes_purging_together_delete_each_tree_once(postgres_server: str) -> None:
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def together() -> tuple[list[list[int]], int]:
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(4)))
        try:
            first = stores[0]
            roots = await first.dispatch([call() for _ in range(300)], now=NOW)
            await first.dispatch([call(parent_id=r, root_id=r) for r in roots], now=NOW)
            while claimed := await first.claim(owner="o", now=NOW, limit=1000, lease_seconds=99):
                # The children first (claims take each root's oldest call first).
                for claim in sorted(claimed, key=lambda c: c.call.parent_id is None):
                    assert await first.finish(claim.lease, OK, b"", now=NOW + 1)
            # Each batch locks its roots: another process skips them, never waits on
            # them or deletes them twice.
            batches = await asyncio.gather(
                *(purge_all(store, before=NOW + 2, limit=20) for store in stores)
            )
            left = len(await first.list(limit=1000))
            return list(batches), left
        finally:
            for store in stores:
                await store.close()

    batches, left = run(together())
    assert sum(sum(each) for each in batches) == 600
    assert left == 0


# --- attempt history ------------------------------------------------------------------


def attempt(status: int = OK, keep: int = 50, **fields: Any) -> Any:
    from dispatchlet.scheduler.store import NewAttempt

    fields.setdefault("function", "f")
    fields.setdefault("started_at", NOW)
    fields.setdefault("duration", 0.25)
    return NewAttempt(status=status, keep=keep, **fields)


def test_each_outcome_adds_its_attempt_to_the_history(open_store: Opener) -> None:
    """Retry, restart, suspension, tail call and finish each add the attempt they are
    given, numbered in the call's life, with the outcome."""

    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)

        async def claimed(now: float) -> Lease:
            (item,) = await store.claim(owner="s", now=now, limit=1, lease_seconds=LEASE)
            return item.lease

        lease = await claimed(NOW)
        assert await store.retry(
            lease,
            TIMEOUT,
            b"e",
            ready_at=NOW,
            now=NOW + 1,
            attempt=attempt(TIMEOUT, error_type="Timeout", error_message="no answer"),
        )
        lease = await claimed(NOW + 2)
        assert await store.restart(
            lease,
            now=NOW + 2,
            orphans=(PERMANENT_ERROR, b""),
            attempt=attempt(6, started_at=NOW + 2),
        )
        lease = await claimed(NOW + 3)
        assert (
            await store.suspend(
                lease,
                b"",
                [call("child")],
                min_results=1,
                max_results=1,
                until=NOW + 60,
                now=NOW + 3,
                attempt=attempt(OK, started_at=NOW + 3),
            )
            is not None
        )
        history = await store.history(dispatch_id)
        assert [(a.number, a.status) for a in history.attempts] == [(1, TIMEOUT), (2, 6), (3, OK)]
        (child,) = [c for c in await store.list() if c.function == "child"]
        child_lease = (await store.claim(owner="s", now=NOW + 4, limit=1, lease_seconds=LEASE))[0]
        assert child_lease.call.dispatch_id == child.dispatch_id
        assert await store.finish(
            child_lease.lease, OK, b"", now=NOW + 4, attempt=attempt(function="child")
        )
        lease = await claimed(NOW + 5)
        assert await store.tail_call(
            lease,
            "g",
            "http://127.0.0.1:8001",
            b"",
            now=NOW + 5,
            attempt=attempt(started_at=NOW + 5),
        )
        lease = await claimed(NOW + 6)
        assert await store.finish(
            lease,
            PERMANENT_ERROR,
            b"e",
            now=NOW + 7,
            attempt=attempt(
                PERMANENT_ERROR,
                function="g",
                started_at=NOW + 6,
                duration=1.5,
                error_type="ValueError",
                error_message="bad",
            ),
        )
        history = await store.history(dispatch_id)
        assert history.total == 5
        first, *_, last = history.attempts
        assert (first.function, first.started_at, first.duration) == ("f", NOW, 0.25)
        assert (first.error_type, first.error_message) == ("Timeout", "no answer")
        assert [a.function for a in history.attempts] == ["f", "f", "f", "f", "g"]
        assert (last.number, last.status, last.started_at, last.duration) == (
            5,
            PERMANENT_ERROR,
            NOW + 6,
            1.5,
        )
        assert (last.error_type, last.error_message) == ("ValueError", "bad")
        # Each call its own history.
        child_history = await store.history(child.dispatch_id)
        assert [(a.number, a.function) for a in child_history.attempts] == [(1, "child")]
        unknown = await store.history("0" * 32)
        assert (unknown.attempts, unknown.total) == ((), 0)
        # Both in one read: the call as ``get`` has it, its history as ``history`` has it.
        assert await store.get_with_history(dispatch_id) == (
            await store.get(dispatch_id),
            history,
        )
        assert await store.get_with_history("0" * 32) is None

    with_store(open_store, body)


def test_the_history_keeps_the_latest_attempts_with_their_count(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)
        for number in range(1, 6):
            (item,) = await store.claim(owner="s", now=NOW + number, limit=1, lease_seconds=LEASE)
            given = attempt(TIMEOUT, keep=3, started_at=NOW + number)
            assert await store.retry(
                item.lease, TIMEOUT, b"", ready_at=NOW, now=NOW + number, attempt=given
            )
        history = await store.history(dispatch_id)
        assert [a.number for a in history.attempts] == [3, 4, 5]
        assert [a.started_at for a in history.attempts] == [NOW + 3, NOW + 4, NOW + 5]
        assert history.total == 5
        # Kept: none (history off) adds nothing, and drops nothing.
        (item,) = await store.claim(owner="s", now=NOW + 9, limit=1, lease_seconds=LEASE)
        assert await store.finish(item.lease, OK, b"", now=NOW + 9, attempt=attempt(keep=0))
        assert await store.history(dispatch_id) == history

    with_store(open_store, body)


def test_a_stale_lease_adds_no_attempt(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        ids = await store.dispatch([call(), call()], now=NOW)
        stale = await store.claim(owner="old", now=NOW, limit=2, lease_seconds=LEASE)
        # The leases lapse; another process claims the calls again.
        later = NOW + LEASE + 1
        current = await store.claim(owner="new", now=later, limit=2, lease_seconds=LEASE)
        assert len(current) == 2
        first, second = (
            c.lease for c in sorted(stale, key=lambda c: ids.index(c.call.dispatch_id))
        )
        assert not await store.retry(
            first, TIMEOUT, b"", ready_at=later, now=later, attempt=attempt()
        )
        assert not await store.tail_call(
            first, "g", "http://127.0.0.1:8001", b"", now=later, attempt=attempt()
        )
        assert not await store.restart(
            first, now=later, orphans=(PERMANENT_ERROR, b""), attempt=attempt()
        )
        assert (
            await store.suspend(
                first,
                b"",
                [],
                min_results=1,
                max_results=1,
                until=later,
                now=later,
                attempt=attempt(),
            )
            is None
        )
        # Finishes at once (PostgreSQL writes them in one batch): only the current one counts.
        done = await asyncio.gather(
            *(
                store.finish(lease, OK, b"", now=later, attempt=attempt(function=lease.dispatch_id))
                for lease in (first, second, *(c.lease for c in current))
            )
        )
        assert done == [False, False, True, True]
        for dispatch_id in ids:
            history = await store.history(dispatch_id)
            assert [(a.number, a.function) for a in history.attempts] == [(1, dispatch_id)]

    with_store(open_store, body)


def test_an_attempts_error_is_kept_as_text_cut_to_a_kibibyte(open_store: Opener) -> None:
    """What a database's text cannot hold (NUL, a lone surrogate) is replaced rather than
    failing the outcome it is recorded with."""

    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([call()], now=NOW)
        (item,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        given = attempt(PERMANENT_ERROR, error_type="Bad\x00Type\ud800", error_message="é" * 2000)
        assert await store.finish(item.lease, PERMANENT_ERROR, b"", now=NOW, attempt=given)
        (kept,) = (await store.history(dispatch_id)).attempts
        assert kept.error_type == "Bad\ufffdType?"
        assert kept.error_message == "é" * 512  # 1024 bytes of UTF-8
        assert (await store.get(dispatch_id)).done  # type: ignore[union-attr]

    with_store(open_store, body)


# --- List by creation time -----------------------------------------------------------


def test_list_filters_by_creation_time_and_pages_in_its_order(open_store: Any) -> None:
    async def body(store: Store) -> None:
        early = await store.dispatch([call("a"), call("b")], now=NOW)
        middle = await store.dispatch([call("a"), call("b")], now=NOW + 10)
        late = await store.dispatch([call("a"), call("b")], now=NOW + 20)

        async def ids(**filters: Any) -> list[str]:
            return [c.dispatch_id for c in await store.list(**filters)]

        # At or after the first time, before the second.
        assert await ids(created_after=NOW + 10) == middle + late
        assert await ids(created_before=NOW + 10) == early
        assert await ids(created_after=NOW + 5, created_before=NOW + 20) == middle
        assert await ids(created_after=NOW + 21) == []
        assert await ids(created_after=NOW + 10, newest_first=True) == (middle + late)[::-1]
        # With another filter, both apply.
        assert await ids(created_after=NOW + 10, function="a") == [middle[0], late[0]]
        assert await ids(created_before=NOW + 20, function="b", newest_first=True) == [
            middle[1],
            early[1],
        ]
        # Pages, each after the last one shown, in both orders.
        for newest_first in (False, True):
            expected = middle + late
            if newest_first:
                expected.reverse()
            shown: list[str] = []
            while True:
                after = shown[-1] if shown else None
                page = await ids(
                    created_after=NOW + 10, newest_first=newest_first, after=after, limit=1
                )
                if not page:
                    break
                shown += page
            assert shown == expected

    with_store(open_store, body)


def test_a_time_range_alone_lists_calls_in_the_order_of_their_creation_times(
    open_store: Any,
) -> None:
    """Another process may create a call a moment earlier by the clock, after another
    one: a time range reads the calls by their times, and its pages follow that order."""

    async def body(store: Store) -> None:
        (later,) = await store.dispatch([call()], now=NOW + 30)
        (earlier,) = await store.dispatch([call()], now=NOW + 25)
        (last,) = await store.dispatch([call()], now=NOW + 40)

        async def ids(**filters: Any) -> list[str]:
            return [c.dispatch_id for c in await store.list(**filters)]

        # No time range: creation order.
        assert await ids() == [later, earlier, last]
        assert await ids(created_after=NOW) == [earlier, later, last]
        assert await ids(created_before=NOW + 35, newest_first=True) == [later, earlier]
        assert await ids(created_after=NOW, after=earlier) == [later, last]
        assert await ids(created_after=NOW, after=later, newest_first=True) == [earlier]

    with_store(open_store, body)


def _list_arguments(**chosen: Any) -> dict[str, Any]:
    return {
        "state": None,
        "function": None,
        "root_id": None,
        "status": None,
        "failed": False,
        "newest_first": False,
        "after": None,
        "limit": 100,
        **chosen,
    }


# A time range alone, and with another filter, in both orders, with a cursor or not.
TIMED_LISTS: list[dict[str, Any]] = [
    {**bounds, **other, "newest_first": newest_first, "after": after}
    for bounds in (
        {"created_after": NOW + 5},
        {"created_before": NOW + 5},
        {"created_after": NOW + 2, "created_before": NOW + 8},
    )
    for other in ({}, {"function": "f1"}, {"state": "done"})
    for newest_first in (False, True)
    for after in (None, "x")
]


def _range_alone(chosen: dict[str, Any]) -> bool:
    return not {"function", "state"} & chosen.keys()


def test_sqlite_reads_a_time_range_from_the_index_of_creation_times(tmp_path: Path) -> None:
    from dispatchlet.scheduler.store.sqlite import SQL as LITE
    from dispatchlet.scheduler.store.sqlite import SQLiteStore

    path = tmp_path / "plans.db"

    async def filled() -> None:
        store = await SQLiteStore.open(path)
        try:
            for second in range(10):
                await store.dispatch([call(f"f{n % 20}") for n in range(100)], now=NOW + second)
        finally:
            await store.close()

    run(filled())
    db = sqlite3.connect(path)
    try:
        db.execute("ANALYZE")
        for chosen in TIMED_LISTS:
            query, params = LITE.list(**_list_arguments(**chosen))
            plan = [str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {query}", params)]
            assert not [step for step in plan if "TEMP B-TREE" in step], (chosen, plan)
            index = "calls_list_created" if _range_alone(chosen) else "calls_list_"
            assert plan[0].startswith(f"SEARCH calls USING INDEX {index}"), (chosen, plan)
    finally:
        db.close()


def test_postgres_reads_a_time_range_from_the_index_of_creation_times(
    postgres_server: str,
) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import SQL as PG
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def filled() -> None:
        store = await PostgresStore.open(url)
        try:
            for second in range(10):
                await store.dispatch([call(f"f{n % 20}") for n in range(1000)], now=NOW + second)
        finally:
            await store.close()

    run(filled())
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("ANALYZE dispatchlet_calls")
        for chosen in TIMED_LISTS:
            query, params = PG.list(**_list_arguments(**chosen))
            plan = "\n".join(str(row[0]) for row in db.execute(f"EXPLAIN {query}".encode(), params))
            assert "Sort" not in plan, (chosen, plan)
            assert "Seq Scan" not in plan, (chosen, plan)
            if _range_alone(chosen):
                assert "using dispatchlet_calls_list_created" in plan, (chosen, plan)


# --- concurrency and rate limits ------------------------------------------------------


def limited(function: str = "lim", **limits: Any) -> NewCall:
    return call(function, limits=Limits(**limits))


async def claim_ids(store: Store, now: float = NOW, limit: int = 10) -> list[str]:
    claimed = await store.claim(owner="p", now=now, limit=limit, lease_seconds=LEASE)
    return [c.call.dispatch_id for c in claimed]


def test_a_concurrency_limit_holds_the_calls_beyond_it_until_one_finishes(
    open_store: Opener,
) -> None:
    async def body(store: Store) -> None:
        ids = await store.dispatch([limited(concurrency=3) for _ in range(5)], now=NOW)
        first = await store.claim(owner="p", now=NOW, limit=10, lease_seconds=LEASE)
        assert [c.call.dispatch_id for c in first] == ids[:3]
        # The 4th and 5th wait, still ready, their attempts not counted.
        assert await claim_ids(store, NOW + 1) == []
        fourth = await store.get(ids[3])
        assert fourth is not None
        assert (fourth.state, fourth.attempts) == (State.READY, 0)
        assert await store.finish(first[0].lease, OK, b"", now=NOW + 2)
        assert await claim_ids(store, NOW + 2) == [ids[3]]
        assert await claim_ids(store, NOW + 3) == []


# --- messages to workflows (``Store.send``, ``core.messages``) -----------------------


def message(value: bytes) -> bytes:
    """A message as the API stores it: a serialized CallResult with the value as output."""
    from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
    from google.protobuf import any_pb2

    output = any_pb2.Any(type_url="test/bytes", value=value)
    return call_pb2.CallResult(output=output).SerializeToString()


def receive(topic: str, correlation_id: int, timeout: float = 60.0) -> NewCall:
    return call(
        "dispatchlet.receive", correlation_id=correlation_id, topic=topic, expires_at=NOW + timeout
    )


async def a_workflow(store: Store) -> tuple[str, Lease]:
    """A root call that runs (its lease given), not suspended yet."""
    (parent,) = await store.dispatch([call("workflow")], now=NOW)
    (claimed,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
    return parent, claimed.lease


async def waits_for(store: Store, lease: Lease, *receives: NewCall, now: float = NOW) -> list[str]:
    """The workflow under ``lease`` suspended on ``receives`` (back after one result)."""
    ids = await store.suspend(
        lease, POLL, receives, min_results=1, max_results=10, until=NOW + 1000, now=now
    )
    assert ids is not None
    return ids


async def resumed(store: Store, now: float) -> Any:
    (claimed,) = await store.claim(owner="s", now=now, limit=10, lease_seconds=LEASE)
    return claimed


def test_a_message_sent_while_the_workflow_waits_ends_its_receive(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        parent, lease = await a_workflow(store)
        (waiting,) = await waits_for(store, lease, receive("approval", 7))
        child = await store.get(waiting)
        assert child is not None
        assert (child.state, child.topic, child.parent_id) == (State.WAITING, "approval", parent)
        # Nothing to claim: no endpoint runs a receive, and the parent waits for it.
        assert await store.claim(owner="s", now=NOW + 1, limit=10, lease_seconds=LEASE) == []
        assert await store.send(parent, "other", message(b"no"), now=NOW + 2) is Sent.KEPT
        assert await store.send(parent, "approval", message(b"yes"), now=NOW + 2) is Sent.DELIVERED
        woken = await resumed(store, NOW + 3)
        assert woken.call.dispatch_id == parent
        assert [(r.correlation_id, r.status, r.result) for r in woken.results] == [
            (7, OK, message(b"yes"))
        ]


# --- resuming a failed workflow (``CallService.Resume``) ----------------------------------


def test_a_call_that_fails_keeps_its_poll_and_one_that_ends_ok_drops_it(open_store: Any) -> None:
    async def body(store: Store) -> None:
        failing, fine, cancelled = await store.dispatch([call("wf")] * 3, now=NOW)
        claims = await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claims}
        kids = []
        for parent in (failing, fine, cancelled):
            made = await store.suspend(
                leases[parent],
                POLL,
                [call("step", correlation_id=1)],
                min_results=1,
                max_results=1,
                until=NOW + 100,
                now=NOW,
            )
            assert made is not None
            kids += made
        await run_children(store, NOW + 1, *kids)
        claims = await store.claim(owner="s", now=NOW + 2, limit=10, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claims}
        assert await store.finish(leases[failing], PERMANENT_ERROR, b"err", now=NOW + 3)
        assert await store.finish(leases[fine], OK, b"out", now=NOW + 3)
        await store.cancel(cancelled, PERMANENT_ERROR, b"cancelled", now=NOW + 3)
        found = {c: await store.get(c) for c in (failing, fine, cancelled)}
        # The failed workflow's journal is kept for a resume; an OK or cancelled one's not.
        assert [(c.state, c.poll) for c in found.values() if c is not None] == [
            (State.DONE, POLL),
            (State.DONE, b""),
            (State.DONE, b""),
        ]
        # A summary still leaves it out.
        (listed,) = await store.list(root_id=failing, function="wf")
        assert listed.poll == b""

    with_store(open_store, body)


def test_messages_sent_before_the_wait_are_kept_in_order_and_taken_once(
    open_store: Opener,
) -> None:
    async def body(store: Store) -> None:
        parent, lease = await a_workflow(store)
        for value in (b"1", b"2", b"3"):
            assert await store.send(parent, "item", message(value), now=NOW) is Sent.KEPT
        # Two receives in one Poll take the two oldest, in order, at once.
        first, second = await waits_for(store, lease, receive("item", 1), receive("item", 2))
        woken = await resumed(store, NOW + 1)
        assert [(r.correlation_id, r.result) for r in woken.results] == [
            (1, message(b"1")),
            (2, message(b"2")),
        ]
        for taken in (first, second):
            child = await store.get(taken)
            assert child is not None
            assert child.state is State.DONE
        # The next receive takes the third, and a fourth finds none: it waits.
        await waits_for(store, woken.lease, receive("item", 3), now=NOW + 2)
        again = await resumed(store, NOW + 3)
        assert [r.result for r in again.results] == [message(b"3")]
        (fourth,) = await waits_for(store, again.lease, receive("item", 4), now=NOW + 4)
        left = await store.get(fourth)
        assert left is not None
        assert left.state is State.WAITING
        assert await store.claim(owner="s", now=NOW + 5, limit=10, lease_seconds=LEASE) == []

    with_store(open_store, body)


def test_a_call_stored_to_take_over_a_mailbox_gets_its_messages_in_order(
    open_store: Opener,
) -> None:
    async def body(store: Store) -> None:
        failed, lease = await a_workflow(store)
        for topic, value in (("item", b"1"), ("other", b"x"), ("item", b"2")):
            assert await store.send(failed, topic, message(value), now=NOW) is Sent.KEPT
        assert await store.finish(lease, PERMANENT_ERROR, b"err", now=NOW + 1)
        # As a resume stores its new call: the failed call's messages move to it.
        (new,) = await store.dispatch([call("workflow", messages_of=failed)], now=NOW + 2)
        (claimed,) = await store.claim(owner="s", now=NOW + 2, limit=1, lease_seconds=LEASE)
        assert claimed.call.dispatch_id == new
        receives = (receive("item", 1), receive("item", 2), receive("other", 3))
        await waits_for(store, claimed.lease, *receives, now=NOW + 2)
        woken = await resumed(store, NOW + 3)
        assert [(r.correlation_id, r.result) for r in woken.results] == [
            (1, message(b"1")),
            (2, message(b"2")),
            (3, message(b"x")),
        ]
        # A message sent to the new call comes after the moved ones.
        assert await store.send(new, "item", message(b"3"), now=NOW + 4) is Sent.KEPT
        await waits_for(store, woken.lease, receive("item", 4), now=NOW + 4)
        again = await resumed(store, NOW + 5)
        assert [r.result for r in again.results] == [message(b"3")]
        # Moved, not copied: another call taking the failed call's mailbox over finds
        # it empty, its receive waits.
        (other,) = await store.dispatch([call("workflow", messages_of=failed)], now=NOW + 6)
        (claimed,) = await store.claim(owner="s", now=NOW + 6, limit=1, lease_seconds=LEASE)
        assert claimed.call.dispatch_id == other
        (waiting,) = await waits_for(store, claimed.lease, receive("item", 1), now=NOW + 6)
        left = await store.get(waiting)
        assert left is not None
        assert left.state is State.WAITING

    with_store(open_store, body)


def test_a_lapsed_lease_frees_its_slot(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        ids = await store.dispatch([limited(concurrency=3) for _ in range(4)], now=NOW)
        assert await claim_ids(store) == ids[:3]
        assert await claim_ids(store, NOW + LEASE - 1) == []
        # The three leases lapsed: their calls and the 4th share the three slots again.
        again = await claim_ids(store, NOW + LEASE + 1)
        assert len(again) == 3
        assert set(again) < set(ids)


def test_a_message_goes_to_the_oldest_waiting_receive_of_its_topic(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        parent, lease = await a_workflow(store)
        older, newer = await waits_for(store, lease, receive("t", 1), receive("t", 2))
        assert await store.send(parent, "t", message(b"a"), now=NOW + 1) is Sent.DELIVERED
        ended = await store.get(older)
        waiting = await store.get(newer)
        assert ended is not None
        assert waiting is not None
        assert (ended.state, ended.result) == (State.DONE, message(b"a"))
        assert waiting.state is State.WAITING

    with_store(open_store, body)


def test_a_limit_per_key_holds_each_key_apart(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        calls = [limited(key=k, per_key=2) for k in ("c1", "c1", "c1", "c2", "c2", "c2")]
        ids = await store.dispatch(calls, now=NOW)
        first = await store.claim(owner="p", now=NOW, limit=10, lease_seconds=LEASE)
        assert [c.call.dispatch_id for c in first] == [ids[0], ids[1], ids[3], ids[4]]
        assert await claim_ids(store, NOW + 1) == []
        # A slot of c2 freed: only c2's waiting call takes it.
        assert await store.finish(first[2].lease, OK, b"", now=NOW + 2)
        assert await claim_ids(store, NOW + 2) == [ids[5]]
        assert await claim_ids(store, NOW + 3) == []


def test_a_receive_whose_timeout_passes_is_claimed_to_end_it(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        parent, lease = await a_workflow(store)
        (waiting,) = await waits_for(store, lease, receive("approval", 1, timeout=30))
        assert await store.claim(owner="s", now=NOW + 29, limit=10, lease_seconds=LEASE) == []
        (due,) = await store.claim(owner="s", now=NOW + 30, limit=10, lease_seconds=LEASE)
        assert (due.call.dispatch_id, due.call.topic) == (waiting, "approval")
        # Past its timeout, a message is kept for a later receive rather than given to it.
        assert await store.send(parent, "approval", message(b"late"), now=NOW + 31) is Sent.KEPT
        assert await store.finish(due.lease, TIMEOUT, b"timed out", now=NOW + 31)
        woken = await resumed(store, NOW + 32)
        assert [(r.status, r.result) for r in woken.results] == [(TIMEOUT, b"timed out")]
        (later,) = await waits_for(store, woken.lease, receive("approval", 2), now=NOW + 33)
        taken = await store.get(later)
        assert taken is not None
        assert (taken.state, taken.result) == (State.DONE, message(b"late"))

    with_store(open_store, body)


def test_a_function_limit_and_a_key_limit_both_hold(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        calls = [limited(concurrency=3, key=k, per_key=2) for k in ("a", "a", "a", "b", "b")]
        ids = await store.dispatch(calls, now=NOW)
        assert await claim_ids(store) == [ids[0], ids[1], ids[3]]


def test_a_message_to_a_done_or_unknown_call_is_refused(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        parent, lease = await a_workflow(store)
        assert await store.finish(lease, OK, b"", now=NOW + 1)
        assert await store.send(parent, "t", message(b"x"), now=NOW + 2) is Sent.DONE
        assert await store.send("0" * 32, "t", message(b"x"), now=NOW + 2) is Sent.UNKNOWN

    with_store(open_store, body)


def test_a_rate_limit_lets_count_calls_start_per_period(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        ids = await store.dispatch(
            [limited(rate_count=2, rate_period=10.0) for _ in range(5)], now=NOW
        )
        first = await store.claim(owner="p", now=NOW, limit=10, lease_seconds=LEASE)
        assert [c.call.dispatch_id for c in first] == ids[:2]
        # Finished, but still within the period: their starts count.
        for claimed in first:
            assert await store.finish(claimed.lease, OK, b"", now=NOW + 1)
        assert await claim_ids(store, NOW + 9) == []
        # The clock moved past the period: two more.
        assert await claim_ids(store, NOW + 10.5) == ids[2:4]
        assert await claim_ids(store, NOW + 15) == []
        assert await claim_ids(store, NOW + 21) == ids[4:]


def test_a_call_that_never_receives_keeps_its_messages_until_purged(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        (plain,) = await store.dispatch([call("not_a_workflow")], now=NOW)
        assert await store.send(plain, "t", message(b"x"), now=NOW) is Sent.KEPT
        (claimed,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.finish(claimed.lease, OK, b"", now=NOW + 1)
        # Its tree is deleted whole, the mailbox with it.
        assert await store.purge(before=NOW + 2) == 1
        assert await store.get(plain) is None
        assert await store.send(plain, "t", message(b"x"), now=NOW + 3) is Sent.UNKNOWN

    with_store(open_store, body)


def test_a_workflow_that_ends_ends_its_waiting_receives(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        parent, lease = await a_workflow(store)
        (waiting,) = await waits_for(store, lease, receive("t", 1))
        assert await store.cancel(parent, PERMANENT_ERROR, b"cancelled", now=NOW + 1) == 2
        ended = await store.get(waiting)
        assert ended is not None
        assert (ended.state, ended.result) == (State.DONE, b"cancelled")
        assert await store.send(parent, "t", message(b"x"), now=NOW + 2) is Sent.DONE


def test_children_are_read_with_their_results_in_creation_order(open_store: Any) -> None:
    async def body(store: Store) -> None:
        parent, kids = await suspended(store, 3, min_results=1, max_results=3)
        claims = await store.claim(owner="s", now=NOW + 1, limit=10, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claims}
        assert await store.finish(leases[kids[1]], OK, b"r1", now=NOW + 2)
        assert await store.finish(leases[kids[0]], PERMANENT_ERROR, b"e0", now=NOW + 3)
        # The parent is given both, and fails with the first.
        (resumed,) = await store.claim(owner="s", now=NOW + 4, limit=10, lease_seconds=LEASE)
        assert resumed.call.dispatch_id == parent
        assert await store.finish(
            resumed.lease, PERMANENT_ERROR, b"failed", now=NOW + 5, orphans=ORPHANS
        )
        # A grandchild is not a child.
        await store.dispatch([call("g", parent_id=kids[1], root_id=parent)], now=NOW + 6)
        children = await store.children(parent)
        assert [c.dispatch_id for c in children] == kids
        assert [c.correlation_id for c in children] == [0, 1, 2]
        first, second, third = children
        assert (first.done, first.delivered, first.status, first.result) == (
            True,
            True,
            PERMANENT_ERROR,
            b"e0",
        )
        assert first.finished_at == NOW + 3
        assert (second.done, second.delivered, second.status, second.result) == (
            True,
            True,
            OK,
            b"r1",
        )
        # The third was ended with the parent, never given to it.
        assert (third.done, third.delivered, third.status) == (True, False, PERMANENT_ERROR)
        assert await store.children("0" * 32) == []

    with_store(open_store, body)


def test_a_call_dispatched_with_a_poll_is_resumed_from_it_at_its_first_attempt(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        (old,) = await store.dispatch([call("wf")], now=NOW)
        (new,) = await store.dispatch([call("wf", poll=POLL, rerun_of=old)], now=NOW + 1)
        stored = await store.get(new)
        assert stored is not None
        assert (stored.poll, stored.rerun_of, stored.state) == (POLL, old, State.READY)
        claims = await store.claim(owner="s", now=NOW + 2, limit=10, lease_seconds=LEASE)
        (resumed,) = [c for c in claims if c.call.dispatch_id == new]
        assert (resumed.call.poll, resumed.results, resumed.lease.delivered) == (POLL, (), ())
        # Its Poll makes children as any workflow's does, and it resumes with them.
        (kid,) = await store.suspend(  # type: ignore[misc]
            resumed.lease,
            POLL,
            [call("step", correlation_id=3)],
            min_results=1,
            max_results=1,
            until=NOW + 100,
            now=NOW + 3,
        )
        await run_children(store, NOW + 4, kid)
        (again,) = await store.claim(owner="s", now=NOW + 5, limit=10, lease_seconds=LEASE)
        assert [(r.dispatch_id, r.correlation_id) for r in again.results] == [(kid, 3)]


# --- Delays, policies and keys of a Poll's children ----------------------------------

POLICY = CallPolicy(
    max_attempts=2,
    attempt_timeout=5.0,
    backoff_initial=1.5,
    backoff_maximum=20.0,
    backoff_multiplier=3.0,
)


def test_a_delayed_call_is_stored_at_once_and_claimed_no_earlier_than_its_time(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        (later, now_) = await store.dispatch(
            [call("later", ready_at=NOW + 600), call("now")], now=NOW
        )
        stored = await store.get(later)
        assert stored is not None
        assert (stored.state, stored.created_at, stored.ready_at) == (State.READY, NOW, NOW + 600)
        claimed = await store.claim(owner="s", now=NOW + 599, limit=10, lease_seconds=LEASE)
        assert [c.call.dispatch_id for c in claimed] == [now_]
        (due,) = await store.claim(owner="s", now=NOW + 600, limit=10, lease_seconds=LEASE)
        assert due.call.dispatch_id == later

    with_store(open_store, body)


def test_a_retry_is_a_start_the_rate_limit_counts(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        (dispatch_id,) = await store.dispatch([limited(rate_count=1, rate_period=60.0)], now=NOW)
        (first,) = await store.claim(owner="p", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.retry(first.lease, TIMEOUT, b"", ready_at=NOW + 1, now=NOW + 1)
        assert await claim_ids(store, NOW + 30) == []
        assert await claim_ids(store, NOW + 61) == [dispatch_id]


def test_a_calls_policy_is_stored_with_it_and_kept_by_its_retries(open_store: Any) -> None:
    async def body(store: Store) -> None:
        (own, plain) = await store.dispatch([call("own", policy=POLICY), call("plain")], now=NOW)
        listed = {c.dispatch_id: c for c in await store.list()}
        assert listed[own].policy == POLICY
        assert listed[plain].policy is None
        claimed = await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        by_id = {c.call.dispatch_id: c for c in claimed}
        assert by_id[own].call.policy == POLICY
        assert by_id[plain].call.policy is None
        assert await store.retry(by_id[own].lease, TIMEOUT, b"", ready_at=NOW + 1, now=NOW)
        (again,) = await store.claim(owner="s", now=NOW + 1, limit=10, lease_seconds=LEASE)
        assert (again.call.dispatch_id, again.call.policy) == (own, POLICY)

    with_store(open_store, body)


def test_other_functions_are_claimed_while_a_limit_holds_its_calls(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        held = await store.dispatch([limited(concurrency=1) for _ in range(6)], now=NOW)
        free = await store.dispatch([call("free") for _ in range(3)], now=NOW + 1)
        keyed = await store.dispatch([limited("k", key="x", per_key=1)] * 2, now=NOW + 2)
        # One call of the limited function, then every other function's.
        assert await claim_ids(store, NOW + 3, limit=4) == [held[0], *free]
        assert await claim_ids(store, NOW + 3, limit=4) == [keyed[0]]
        assert await claim_ids(store, NOW + 3, limit=4) == []

    with_store(open_store, body)


def test_calls_without_limits_neither_wait_nor_count(open_store: Opener) -> None:
    async def body(store: Store) -> None:
        plain = await store.dispatch([call("lim") for _ in range(3)], now=NOW)
        capped = await store.dispatch([limited(concurrency=1)] * 2, now=NOW + 1)
        assert await claim_ids(store, NOW + 2) == [*plain, capped[0]]

    with_store(open_store, body)


def test_a_backlog_of_limited_calls_beyond_the_window_does_not_hide_others(
    open_store: Opener,
) -> None:
    async def body(store: Store) -> None:
        backlog = claim_window(4) + 100
        await store.dispatch([limited(concurrency=2) for _ in range(backlog)], now=NOW)
        await store.dispatch([limited("k", key="c", per_key=1)] * backlog, now=NOW + 1)
        later = await store.dispatch([call("free")], now=NOW + 2)
        first = await claim_ids(store, NOW + 3, limit=4)
        # Two of the first function, one of the key, and the call behind them.
        assert len(first) == 4
        assert first[-1:] == later
        assert await claim_ids(store, NOW + 3, limit=4) == []


def test_a_delayed_call_and_its_policy_survive_a_restart(open_store: Any) -> None:
    async def first(store: Store) -> str:
        (dispatch_id,) = await store.dispatch(
            [call("later", ready_at=NOW + 60, policy=POLICY)], now=NOW
        )
        return dispatch_id

    dispatch_id = with_store(open_store, first)

    async def second(store: Store) -> None:
        assert await store.claim(owner="s", now=NOW + 59, limit=1, lease_seconds=LEASE) == []
        (claimed,) = await store.claim(owner="s", now=NOW + 60, limit=1, lease_seconds=LEASE)
        assert claimed.call.dispatch_id == dispatch_id
        assert claimed.call.policy == POLICY

    with_store(open_store, second)


DURABLE_ONLY["memory"].add("test_a_delayed_call_and_its_policy_survive_a_restart")


def test_a_poll_child_with_a_known_key_follows_its_call_and_runs_nothing(
    open_store: Any,
) -> None:
    async def body(store: Store) -> None:
        (first,) = await store.dispatch([call("charge", key="order-17")], now=NOW)
        (parent,) = await store.dispatch([call("parent")], now=NOW)
        claimed = await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        leases = {c.call.dispatch_id: c.lease for c in claimed}
        kids = [
            call("charge", correlation_id=1, key="order-17"),
            call("charge", correlation_id=2, key="order-18", ready_at=NOW + 5, policy=POLICY),
            call("charge", correlation_id=3, key="order-18"),
            call("charge", correlation_id=4),
        ]
        ids = await store.suspend(
            leases[parent], POLL, kids, min_results=4, max_results=4, until=NOW + 100, now=NOW
        )
        assert ids is not None
        stored = [await store.get(i) for i in ids]
        assert [c.follows if c else "gone" for c in stored] == [first, None, ids[1], None]
        assert stored[1] is not None
        assert (stored[1].ready_at, stored[1].policy) == (NOW + 5, POLICY)
        # The new key is known from now on, to a Dispatch as to other Polls.
        assert await store.dispatch([call("charge", key="order-18")], now=NOW) == [ids[1]]
        assert await store.dispatch([call("charge", key="order-17")], now=NOW) == [first]
        assert await store.finish(leases[first], OK, b"charged", now=NOW)

    with_store(open_store, body)


def test_limit_stats_tell_each_limited_functions_limits_and_use(open_store: Opener) -> None:
    async def body(store: Store) -> list[LimitStats]:
        await store.dispatch([limited("a", concurrency=2) for _ in range(3)], now=NOW)
        await store.dispatch([limited("b", key=k, per_key=1) for k in "xxy"], now=NOW)
        await store.dispatch([limited("c", rate_count=5, rate_period=60.0)] * 2, now=NOW)
        await store.dispatch([call("plain")], now=NOW)
        assert len(await claim_ids(store, NOW, limit=20)) == 7
        # Seen from later: c's starts are still within their period.
        seen = await store.limit_stats(now=NOW + 10)
        # Once every lease lapsed and the period passed, none is left.
        assert await store.limit_stats(now=NOW + 100) == []
        return list(seen)

    assert with_store(open_store, body) == [
        LimitStats("a", concurrency=2, in_flight=2),
        LimitStats("b", per_key=1, in_flight=2, keys_in_flight=2),
        LimitStats("c", in_flight=2, rate_count=5, rate_period=60.0, started=2),
    ]


# --- schedules ----------------------------------------------------------------------------


def schedule(name: str = "nightly", **fields: Any) -> Any:
    from dispatchlet.scheduler.store.schedules import NewSchedule

    fields.setdefault("cron", "0 3 * * *")
    fields.setdefault("timezone", "UTC")
    fields.setdefault("function", "report")
    fields.setdefault("endpoint", "http://127.0.0.1:8000")
    fields.setdefault("input", b"\x0a\x01x")
    fields.setdefault("next_tick", NOW + 10)
    return NewSchedule(name=name, **fields)


def every_second(found: Any) -> Any:
    """A planner: each due schedule's tick is its next tick, the next one a second on."""
    from dispatchlet.scheduler.cron import tick_key
    from dispatchlet.scheduler.store.schedules import TickPlan

    key = tick_key(found.name, found.next_tick)
    return TickPlan(found.next_tick, found.next_tick + 1, call(found.function, key=key))


def test_schedules_are_created_listed_paused_resumed_and_deleted(open_store: Opener) -> None:
    from dispatchlet.scheduler.store.schedules import ScheduleExists

    async def body(store: Store) -> None:
        created = await store.create_schedule(schedule("b-nightly"), now=NOW)
        assert (created.name, created.cron, created.paused) == ("b-nightly", "0 3 * * *", False)
        assert (created.next_tick, created.last_tick, created.owner) == (NOW + 10, None, "")
        assert created.created_at == created.updated_at == NOW
        assert created.input == b"\x0a\x01x"
        hourly = schedule("a-hourly", cron="0 * * * *", options=b"\x10\x03", expiration=60.0)
        stored = await store.create_schedule(hourly, now=NOW)
        assert (stored.options, stored.expiration) == (b"\x10\x03", 60.0)
        with pytest.raises(ScheduleExists):
            await store.create_schedule(schedule("b-nightly", cron="* * * * *"), now=NOW)
        assert [s.name for s in await store.schedules()] == ["a-hourly", "b-nightly"]
        kept = await store.get_schedule("b-nightly")
        assert kept is not None
        assert kept.cron == "0 3 * * *"  # the refused one changed nothing

        paused = await store.pause_schedule("b-nightly", paused=True, next_tick=None, now=NOW + 1)
        assert paused is not None
        assert paused.paused
        assert paused.next_tick == NOW + 10
        assert paused.updated_at == NOW + 1
        resumed = await store.pause_schedule(
            "b-nightly", paused=False, next_tick=NOW + 99, now=NOW + 2
        )
        assert resumed is not None
        assert (resumed.paused, resumed.next_tick) == (False, NOW + 99)
        assert await store.pause_schedule("nope", paused=True, next_tick=None, now=NOW) is None
        assert await store.get_schedule("nope") is None

        assert await store.delete_schedule("b-nightly")
        assert not await store.delete_schedule("b-nightly")
        assert [s.name for s in await store.schedules()] == ["a-hourly"]

    with_store(open_store, body)


def test_a_due_schedule_ticks_once_with_its_key_and_moves_to_its_next_tick(
    open_store: Opener,
) -> None:
    async def body(store: Store) -> None:
        await store.create_schedule(schedule("every", next_tick=NOW), now=NOW - 5)
        await store.create_schedule(schedule("later", next_tick=NOW + 60), now=NOW - 5)
        await store.create_schedule(schedule("held", next_tick=NOW - 1), now=NOW - 5)
        await store.pause_schedule("held", paused=True, next_tick=None, now=NOW - 5)
        assert await store.next_schedule_tick() == NOW

        ticked = await store.tick_schedules(now=NOW + 0.5, plan=every_second, limit=10)
        assert [(t.name, t.tick) for t in ticked] == [("every", NOW)]
        found = await store.get(ticked[0].dispatch_id)
        assert found is not None
        assert found.function == "report"
        assert found.state is State.READY
        after = await store.get_schedule("every")
        assert after is not None
        assert (after.next_tick, after.last_tick) == (NOW + 1, NOW)
        assert after.last_dispatch_id == ticked[0].dispatch_id
        # Not due again until its next tick; then once more.
        assert await store.tick_schedules(now=NOW + 0.9, plan=every_second, limit=10) == []
        again = await store.tick_schedules(now=NOW + 1, plan=every_second, limit=10)
        assert [(t.name, t.tick) for t in again] == [("every", NOW + 1)]
        assert len(await store.list(limit=100)) == 2
        # A tick whose key is kept already (the schedule made again) stores nothing new.
        await store.delete_schedule("every")
        await store.create_schedule(schedule("every", next_tick=NOW), now=NOW + 2)
        repeat = await store.tick_schedules(now=NOW + 0.5, plan=every_second, limit=10)
        assert [t.dispatch_id for t in repeat] == [ticked[0].dispatch_id]
        assert len(await store.list(limit=100)) == 2

    with_store(open_store, body)


def test_due_ticks_are_claimed_once_by_competing_callers(open_store: Opener) -> None:
    """Two tickers (two processes on PostgreSQL, two connections to one SQLite file)
    racing over many due schedules dispatch each tick once."""

    async def body(store: Store) -> list[tuple[str, float]]:
        other = store if open_store.kind == "memory" else await open_store()  # type: ignore[attr-defined]
        try:
            for n in range(20):
                await store.create_schedule(schedule(f"s{n:02d}", next_tick=NOW), now=NOW - 1)
            ticked: list[tuple[str, float]] = []
            for second in range(5):
                rounds = await asyncio.gather(
                    *(
                        each.tick_schedules(now=NOW + second, plan=every_second, limit=7)
                        for each in (store, other, store, other)
                    )
                )
                ticked += [(t.name, t.tick) for batch in rounds for t in batch]
            return ticked
        finally:
            if other is not store:
                await other.close()

    ticked = with_store(open_store, body)
    expected = sorted((f"s{n:02d}", NOW + second) for n in range(20) for second in range(5))
    assert sorted(ticked) == expected


def test_sync_creates_updates_and_deletes_only_the_schedules_it_owns(open_store: Opener) -> None:
    from dispatchlet.scheduler.store.schedules import ScheduleExists

    mine = "http://127.0.0.1:8000"

    async def body(store: Store) -> None:
        await store.create_schedule(schedule("by-hand"), now=NOW)
        await store.sync_schedules(
            "http://other:9000", [schedule("theirs", owner="http://other:9000")], now=NOW
        )
        first = await store.sync_schedules(
            mine, [schedule("a", owner=mine), schedule("b", owner=mine)], now=NOW
        )
        assert (first.created, first.updated, first.deleted) == (("a", "b"), (), ())
        await store.pause_schedule("a", paused=True, next_tick=None, now=NOW)
        second = await store.sync_schedules(
            mine,
            [
                schedule("a", owner=mine, input=b"", next_tick=NOW + 500),  # input changed
                schedule("c", owner=mine, cron="*/5 * * * *", next_tick=NOW + 300),
            ],
            now=NOW + 1,
        )
        assert (second.created, second.updated, second.deleted) == (("c",), ("a",), ("b",))
        a = await store.get_schedule("a")
        assert a is not None
        # Same cron: its next tick and its pause are kept.
        assert (a.input, a.next_tick, a.paused, a.owner) == (b"", NOW + 10, True, mine)
        third = await store.sync_schedules(
            mine,
            [schedule("a", owner=mine, input=b"", cron="0 4 * * *", next_tick=NOW + 700)],
            now=NOW + 2,
        )
        assert (third.updated, third.deleted, third.unchanged) == (("a",), ("c",), ())
        a = await store.get_schedule("a")
        assert a is not None
        assert a.next_tick == NOW + 700  # a new cron expression: its own next tick
        same = await store.sync_schedules(
            mine,
            [schedule("a", owner=mine, input=b"", cron="0 4 * * *", next_tick=NOW + 900)],
            now=NOW + 3,
        )
        assert same.unchanged == ("a",)
        # A name held by hand or by another endpoint: refused, nothing changed.
        for taken in ("by-hand", "theirs"):
            with pytest.raises(ScheduleExists):
                await store.sync_schedules(mine, [schedule(taken, owner=mine)], now=NOW + 4)
        names = {s.name: s.owner for s in await store.schedules()}
        assert names == {"a": mine, "by-hand": "", "theirs": "http://other:9000"}

    with_store(open_store, body)


def test_retention_never_deletes_a_schedule(open_store: Opener) -> None:
    async def body(store: Store) -> int:
        await store.create_schedule(schedule("every", next_tick=NOW), now=NOW)
        (ticked,) = await store.tick_schedules(now=NOW, plan=every_second, limit=10)
        (claimed,) = await store.claim(owner="o", now=NOW, limit=1, lease_seconds=LEASE)
        assert await store.finish(claimed.lease, OK, b"", now=NOW + 1)
        assert sum(await purge_all(store, before=NOW + 100, limit=10)) == 1
        assert await store.get(ticked.dispatch_id) is None
        return len(await store.schedules())

    assert with_store(open_store, body) == 1


def test_postgres_workflows_racing_with_one_childs_key_make_one_call_to_run(
    postgres_server: str,
) -> None:
    """Two processes suspend two workflows at once, each with a child of the same new
    key: one child runs, the other follows it (the loser's transaction runs again and
    finds the key), round after round."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    rounds = 10

    async def race() -> list[list[Call]]:
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(2)))
        try:
            raced = []
            for n in range(rounds):
                await stores[0].dispatch([call("parent"), call("parent")], now=NOW + n)
                claimed = await stores[0].claim(
                    owner="s", now=NOW + n, limit=2, lease_seconds=LEASE
                )
                assert len(claimed) == 2
                ids = await asyncio.gather(
                    *(
                        store.suspend(
                            item.lease,
                            POLL,
                            [call("charge", correlation_id=1, key=f"charge-{n}")],
                            min_results=1,
                            max_results=1,
                            until=NOW + 1000,
                            now=NOW + n,
                        )
                        for store, item in zip(stores, claimed, strict=True)
                    )
                )
                children = []
                for made in ids:
                    assert made is not None
                    (child_id,) = made
                    child = await stores[0].get(child_id)
                    assert child is not None
                    children.append(child)
                raced.append(children)
            return raced
        finally:
            for store in stores:
                await store.close()

    for n, children in enumerate(run(race())):
        runs = [c for c in children if c.follows is None]
        assert len(runs) == 1, (n, children)
        (follower,) = [c for c in children if c.follows is not None]
        assert follower.follows == runs[0].dispatch_id


# --- followers, tail calls and mailboxes: what they carry and refuse --------------------


def test_a_followers_checks_do_not_hold_back_the_call_it_follows(open_store: Opener) -> None:
    """A keyed child that follows a call under a rate limit of 1 per 60 s is looked at
    again and again; none of its looks is a start that holds the real call back."""

    async def body(store: Store) -> None:
        rate = Limits(rate_count=1, rate_period=60.0)
        (first,) = await store.dispatch(
            [call("charge", key="order-17", limits=rate, ready_at=NOW + 10)], now=NOW
        )
        (parent,) = await store.dispatch([call("parent")], now=NOW)
        (claimed,) = await store.claim(owner="s", now=NOW, limit=10, lease_seconds=LEASE)
        assert claimed.call.dispatch_id == parent
        kid = call("charge", correlation_id=1, key="order-17", limits=rate)
        ids = await store.suspend(
            claimed.lease, POLL, [kid], min_results=1, max_results=1, until=NOW + 100, now=NOW
        )
        assert ids is not None
        (follower,) = ids
        # The follower looks at the call it follows (the engine's check) and is handed
        # back, twice, before the real call is due.
        for at in (NOW + 1, NOW + 5):
            (check,) = await store.claim(owner="s", now=at, limit=10, lease_seconds=LEASE)
            assert check.call.dispatch_id == follower
            assert await store.release(check.lease, ready_at=at + 1)
        due = await claim_ids(store, NOW + 10)
        assert first in due, "the follower's checks held back the call it follows"

    with_store(open_store, body)


def test_a_message_to_a_follower_or_a_receive_is_refused(open_store: Opener) -> None:
    """Neither a call that follows another nor a workflow's receive makes receives: a
    message to either would be kept and never read."""

    async def body(store: Store) -> None:
        (first,) = await store.dispatch([call("charge", key="order-17")], now=NOW)
        parent, lease = await a_workflow(store)
        kids = [call("charge", correlation_id=1, key="order-17"), receive("approval", 2)]
        follower, waiting = await waits_for(store, lease, *kids)
        assert await store.send(follower, "t", message(b"x"), now=NOW + 1) is Sent.FOLLOWS
        assert await store.send(waiting, "t", message(b"x"), now=NOW + 1) is Sent.RECEIVE
        # The workflow itself takes messages, and the real call too.
        assert await store.send(parent, "other", message(b"x"), now=NOW + 1) is Sent.KEPT
        assert await store.send(first, "t", message(b"x"), now=NOW + 1) is Sent.KEPT

    with_store(open_store, body)


def test_a_full_mailbox_refuses_more_messages_until_a_receive_takes_one(
    open_store: Opener,
) -> None:
    async def body(store: Store) -> None:
        from dispatchlet.scheduler.store import MAILBOX_MESSAGES

        parent, lease = await a_workflow(store)
        for n in range(MAILBOX_MESSAGES):
            sent = await store.send(parent, "t", message(b"%d" % n), now=NOW)
            assert sent is Sent.KEPT, n
        assert await store.send(parent, "t", message(b"over"), now=NOW) is Sent.FULL
        # A receive takes the oldest; one more is kept then, in order after the others.
        (taken,) = await waits_for(store, lease, receive("t", 1))
        took = await store.get(taken)
        assert took is not None
        assert took.result == message(b"0")
        assert await store.send(parent, "t", message(b"last"), now=NOW + 1) is Sent.KEPT
        assert await store.send(parent, "t", message(b"over"), now=NOW + 1) is Sent.FULL

    with_store(open_store, body)


def test_a_tail_call_replaces_the_calls_policy_and_limits_with_its_own(
    open_store: Opener,
) -> None:
    """The function handed over to is held to the tail call's policy and limits, not to
    the old function's; a tail call without them leaves the call with none."""

    async def body(store: Store) -> None:
        capped = Limits(concurrency=1)
        (dispatch_id,) = await store.dispatch(
            [call("small", policy=POLICY, limits=capped)], now=NOW
        )
        (first,) = await store.claim(owner="s", now=NOW, limit=1, lease_seconds=LEASE)
        wide = Limits(concurrency=5, key="c-17", per_key=2, rate_count=100, rate_period=60.0)
        own = CallPolicy(max_attempts=7)
        handed = await store.tail_call(
            first.lease, "big", "http://127.0.0.1:8000", b"", now=NOW, policy=own, limits=wide
        )
        assert handed
        moved = await store.get(dispatch_id)
        assert moved is not None
        assert (moved.function, moved.policy, moved.limits) == ("big", own, wide)
        (second,) = await store.claim(owner="s", now=NOW + 1, limit=1, lease_seconds=LEASE)
        assert second.call.dispatch_id == dispatch_id
        assert second.call.limits == wide
        assert await store.tail_call(
            second.lease, "free", "http://127.0.0.1:8000", b"", now=NOW + 2
        )
        reset = await store.get(dispatch_id)
        assert reset is not None
        assert (reset.function, reset.policy, reset.limits) == ("free", None, Limits())

    with_store(open_store, body)
