"""How the SQLite store commits its writes: leases without an fsync of their own, every
other write with one (of the WAL file, after its COMMIT); writes that queue up behind a
commit taken into one transaction, each atomic on its own, none answered before the
commit, all failed by an error that ends the transaction."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dispatchlet.scheduler.calls import destination
from dispatchlet.scheduler.store import (
    DatabaseBroken,
    Handoff,
    Lease,
    NewCall,
    RequestId,
    State,
    TreeBounds,
    TreeLimitExceeded,
)
from dispatchlet.scheduler.store import sqlite as sqlite_store
from dispatchlet.scheduler.store.limits import Limits
from dispatchlet.scheduler.store.sqlite import SQL, SQLiteStore

T = TypeVar("T")
NOW = 1_800_000_000.0
LEASE = 30.0
OK = 1
WAIT = 60.0
FULL, NORMAL = "synced", "not synced"  # a COMMIT, then an fsync of the WAL or none


def call(function: str = "f", **fields: Any) -> NewCall:
    fields.setdefault("endpoint", "http://127.0.0.1:8000")
    fields.setdefault("input", b"\x0a\x01x")
    fields.setdefault("expires_at", NOW + 3600)
    return NewCall(function=function, **fields)


class Watched:
    """The store's connection seen from its writer thread: each statement, whether each
    COMMIT was followed by the writer's fsync of the WAL (``FULL``) or not, and errors
    raised in place of chosen statements."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.statements: list[str] = []
        self.commits: list[str] = []
        self.faults: dict[str, Exception] = {}
        """A statement, and the error raised once in its place."""
        self.at_commit: Callable[[], None] = lambda: None
        self.at_begin: Callable[[], None] = lambda: None

    def _fault(self, sql: str) -> None:
        self.statements.append(sql)
        fault = self.faults.pop(sql, None)
        if fault is not None:
            raise fault

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._fault(sql)
        if sql == "COMMIT":
            self.commits.append(NORMAL)
            self.at_commit()
        elif sql == "BEGIN IMMEDIATE":
            self.at_begin()
        return self.real.execute(sql, *args)

    def synced(self, sync: Callable[[], None]) -> Callable[[], None]:
        """``sync``, marking the last COMMIT as followed by it."""

        def marked() -> None:
            sync()
            self.statements.append("fsync WAL")
            self.commits[-1] = FULL

        return marked

    def executemany(self, sql: str, rows: Iterable[Any]) -> sqlite3.Cursor:
        self._fault(sql)
        return self.real.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def begun(self) -> int:
        return self.statements.count("BEGIN IMMEDIATE")


async def opened(path: Path) -> tuple[SQLiteStore, Watched]:
    store = await SQLiteStore.open(path)
    assert store._connection is not None
    watched = Watched(store._connection)
    store._connection = watched  # type: ignore[assignment]
    store._writer._sync = watched.synced(store._writer._sync)
    return store, watched


def with_store(path: Path, body: Callable[[SQLiteStore, Watched], Coroutine[Any, Any, T]]) -> T:
    async def scenario() -> T:
        store, watched = await opened(path)
        try:
            return await asyncio.wait_for(body(store, watched), WAIT)
        finally:
            await store.close()

    return asyncio.run(scenario())


async def committed_under(watched: Watched, write: Coroutine[Any, Any, T]) -> tuple[list[str], T]:
    """Whether each COMMIT ``write`` made was synced to disk, and its result."""
    before = len(watched.commits)
    result = await write
    return watched.commits[before:], result


async def a_lease(store: SQLiteStore, now: float = NOW) -> Lease:
    await store.dispatch([call("parent")], now=now)
    (claimed,) = await store.claim(owner="p", now=now, limit=1, lease_seconds=LEASE)
    return claimed.lease


def test_leases_commit_without_an_fsync_and_every_other_write_with_one(tmp_path: Path) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        levels, ids = await committed_under(watched, store.dispatch([call()], now=NOW))
        assert levels == [FULL]  # and the clock marked at NOW
        levels, claimed = await committed_under(
            watched, store.claim(owner="p", now=NOW + 0.1, limit=1, lease_seconds=LEASE)
        )
        assert levels == [NORMAL]
        (lease,) = [c.lease for c in claimed]
        levels, extended = await committed_under(watched, store.extend(lease, until=NOW + 60))
        assert (levels, extended) == ([NORMAL], True)
        # A release gives the attempt back (``attempts`` undone): lost on a power loss,
        # it would count as a lapsed attempt that never ran.
        levels, released = await committed_under(watched, store.release(lease, ready_at=NOW))
        assert (levels, released) == ([FULL], True)
        levels, claimed = await committed_under(
            watched, store.claim(owner="p", now=NOW + 0.2, limit=1, lease_seconds=LEASE)
        )
        assert levels == [NORMAL]
        (lease,) = [c.lease for c in claimed]
        levels, finished = await committed_under(
            watched, store.finish(lease, OK, b"", now=NOW + 0.3)
        )
        assert (levels, finished) == ([FULL], True)
        assert (await store.get(ids[0])) is not None
        # A claim that records the clock mark (a second on) keeps its promise to disk.
        await store.dispatch([call()], now=NOW + 0.4)
        levels, claimed = await committed_under(
            watched, store.claim(owner="p", now=NOW + 5, limit=1, lease_seconds=LEASE)
        )
        assert (levels, len(claimed)) == ([FULL], 1)

    with_store(tmp_path / "scheduler.db", body)


def test_a_claim_that_failed_leaves_the_connection_committing_with_an_fsync(
    tmp_path: Path,
) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        await store.dispatch([call()], now=NOW)
        watched.faults[SQL.claim] = sqlite3.OperationalError("disk I/O error")
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await store.claim(owner="p", now=NOW + 0.1, limit=1, lease_seconds=LEASE)
        levels, _ = await committed_under(watched, store.dispatch([call()], now=NOW + 0.2))
        assert levels == [FULL]
        levels, claimed = await committed_under(
            watched, store.claim(owner="p", now=NOW + 0.3, limit=2, lease_seconds=LEASE)
        )
        assert (levels, len(claimed)) == ([NORMAL], 2)

    with_store(tmp_path / "scheduler.db", body)


def test_a_claim_whose_rollback_failed_leaves_no_durable_write_without_an_fsync(
    tmp_path: Path,
) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        await store.dispatch([call()], now=NOW)
        watched.faults[SQL.claim] = sqlite3.OperationalError("disk I/O error")
        watched.faults["ROLLBACK"] = sqlite3.OperationalError("cannot roll back")
        with pytest.raises(sqlite3.OperationalError):
            await store.claim(owner="p", now=NOW + 0.1, limit=1, lease_seconds=LEASE)
        for moment in (NOW + 0.2, NOW + 0.3):
            levels, _ = await committed_under(watched, store.dispatch([call()], now=moment))
            assert levels == [FULL]

    with_store(tmp_path / "scheduler.db", body)


def test_a_claim_that_records_rate_limited_starts_commits_with_an_fsync(tmp_path: Path) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        rate = Limits(rate_count=1, rate_period=60.0)
        first, _ = await store.dispatch([call("r", limits=rate)] * 2, now=NOW)
        levels, claimed = await committed_under(
            watched, store.claim(owner="p", now=NOW + 0.1, limit=2, lease_seconds=LEASE)
        )
        assert [c.call.dispatch_id for c in claimed] == [first]
        assert levels == [FULL]
        # The start counts: the second call waits for the next period.
        assert await store.claim(owner="p", now=NOW + 0.2, limit=2, lease_seconds=LEASE) == []

    with_store(tmp_path / "scheduler.db", body)


async def writer_idle(store: SQLiteStore) -> None:
    """Once the writer's thread is done with what it was given: a write is answered
    before the thread marks itself idle (a write coming between goes to the thread)."""
    await asyncio.wrap_future(store._executor.submit(lambda: None))


def hold_writer(store: SQLiteStore, gate: threading.Event) -> Future[bool]:
    """Keep the writer's thread busy (as with a transaction of its own) until ``gate``
    is set: the writes that come meanwhile queue up for it."""
    writer = store._writer
    # A write is answered before its thread is done with it (it marks itself idle
    # after): what the thread still has to do goes first.
    store._executor.submit(lambda: None).result(timeout=WAIT)
    with writer._lock:
        assert not writer._draining, "the writer is busy already"
        writer._draining = True

    def hold() -> bool:
        try:
            return gate.wait(WAIT)
        finally:
            writer._next()

    return store._executor.submit(hold)


async def queued_together(store: SQLiteStore, *writes: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run ``writes`` queued behind a busy writer thread: taken together once it is
    free. Each one's result, or the exception it raised."""
    gate = threading.Event()
    holding = hold_writer(store, gate)
    tasks = [asyncio.create_task(write) for write in writes]
    try:
        for _ in range(100_000):
            if store._writer.queued() == len(writes):
                break
            await asyncio.sleep(0)
        else:
            pytest.fail(f"{store._writer.queued()} of {len(writes)} writes queued")
    finally:
        gate.set()
    assert await asyncio.wrap_future(holding), "the writer thread was not held"
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_writes_queued_together_commit_once_and_one_that_fails_is_undone_alone(
    tmp_path: Path,
) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        lease = await a_lease(store)
        begun = watched.begun()
        children = [call("c1"), call("c2")]
        a, suspended, b = await queued_together(
            store,
            store.dispatch([call("a")], now=NOW + 1),
            # Refused after its first UPDATE made the call wait: that alone is undone.
            store.suspend(
                lease,
                b"poll",
                children,
                min_results=1,
                max_results=2,
                until=NOW + 60,
                now=NOW + 1,
                bounds=TreeBounds(max_children=1),
            ),
            store.dispatch([call("b")], now=NOW + 1),
        )
        assert isinstance(suspended, TreeLimitExceeded), suspended
        assert watched.begun() - begun == 1
        assert [c.function for c in await store.list(state=State.READY)] == ["a", "b"]
        assert [c.dispatch_id for c in await store.list(state=State.READY)] == [*a, *b]
        parent = await store.get(lease.dispatch_id)
        assert parent is not None
        assert parent.state is State.RUNNING
        assert await store.children(lease.dispatch_id) == []
        assert await store.finish(lease, OK, b"", now=NOW + 2)

    with_store(tmp_path / "scheduler.db", body)


def test_one_request_id_twice_in_one_batch_stores_its_calls_once(tmp_path: Path) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        request = RequestId("req-1", b"digest")
        calls = [call("x"), call("y")]
        first, again = await queued_together(
            store,
            store.dispatch(calls, now=NOW, request=request),
            store.dispatch(calls, now=NOW, request=request),
        )
        assert first == again
        assert len(first) == 2
        assert watched.begun() == 1
        assert sorted(c.dispatch_id for c in await store.list()) == sorted(first)

    with_store(tmp_path / "scheduler.db", body)


def test_a_batch_is_answered_only_once_committed(tmp_path: Path) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        committing, go = threading.Event(), threading.Event()

        def hold() -> None:
            committing.set()
            go.wait(WAIT)

        watched.at_commit = hold
        gate = threading.Event()
        hold_writer(store, gate)
        tasks = [asyncio.create_task(store.dispatch([call(name)], now=NOW)) for name in ("a", "b")]
        for _ in range(100_000):
            if store._writer.queued() == 2:
                break
            await asyncio.sleep(0)
        gate.set()
        try:
            assert await asyncio.to_thread(committing.wait, WAIT), "no COMMIT began"
            # Anything set before the COMMIT would have run ahead of to_thread's answer.
            assert not any(task.done() for task in tasks)
        finally:
            go.set()
        a, b = await asyncio.gather(*tasks)
        assert watched.commits == [FULL]
        assert {c.dispatch_id for c in await store.list()} == {*a, *b}

    with_store(tmp_path / "scheduler.db", body)


@pytest.mark.parametrize("where", ["COMMIT", "insert"])
def test_an_error_that_ends_the_transaction_fails_every_write_of_the_batch(
    tmp_path: Path, where: str
) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        statement = "COMMIT" if where == "COMMIT" else SQL.insert
        watched.faults[statement] = sqlite3.OperationalError("disk I/O error")
        outcomes = await queued_together(
            store,
            store.dispatch([call("a")], now=NOW),
            store.dispatch([call("b")], now=NOW),
        )
        assert [type(outcome) for outcome in outcomes] == [sqlite3.OperationalError] * 2
        assert await store.list() == []
        # The next write goes on as usual.
        (dispatch_id,) = await store.dispatch([call("c")], now=NOW)
        assert [c.dispatch_id for c in await store.list()] == [dispatch_id]

    with_store(tmp_path / "scheduler.db", body)


def test_a_file_replaced_under_a_batch_fails_every_write_of_it(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"

    async def body(store: SQLiteStore, watched: Watched) -> None:
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, path)
        outcomes = await queued_together(
            store,
            store.dispatch([call("a")], now=NOW),
            store.dispatch([call("b")], now=NOW),
        )
        assert [type(outcome) for outcome in outcomes] == [DatabaseBroken] * 2
        assert "was replaced by another file" in str(outcomes[0])

    with_store(path, body)


def test_claims_queued_together_that_record_starts_are_committed_with_an_fsync(
    tmp_path: Path,
) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        rate = Limits(rate_count=2, rate_period=60.0)
        ids = await store.dispatch([call("r", limits=rate)] * 3, now=NOW)
        before = len(watched.commits)
        claims = [
            store.claim(owner="p", now=NOW + 0.1, limit=1, lease_seconds=LEASE) for _ in range(2)
        ]
        first, second = await queued_together(store, *claims)
        assert [c.call.dispatch_id for c in [*first, *second]] == ids[:2]
        # Whatever the batch that tried them committed, those that took calls (and
        # counted their starts) committed with an fsync.
        assert watched.commits[before:][-1] == FULL
        assert await store.claim(owner="p", now=NOW + 0.2, limit=2, lease_seconds=LEASE) == []

    with_store(tmp_path / "scheduler.db", body)


def window_reads(watched: Watched, since: int) -> int:
    return sum(s.startswith("WITH found AS") for s in watched.statements[since:])


def test_a_claim_its_full_destination_left_short_deals_no_more_of_its_window(
    tmp_path: Path,
) -> None:
    # Only calls of one destination, with room for 2 of the 10 asked: dealing the whole
    # window could deal nothing but more of its calls: its oldest calls decide it.
    async def body(store: SQLiteStore, watched: Watched) -> tuple[int, int]:
        await store.dispatch([call() for _ in range(100)], now=NOW)
        before = len(watched.statements)
        claimed = await store.claim(
            owner="p", now=NOW, limit=10, lease_seconds=LEASE, room=lambda key: 2
        )
        return len(claimed), window_reads(watched, before)

    assert with_store(tmp_path / "scheduler.db", body) == (2, 0)


def test_a_claim_left_short_deals_the_whole_window_to_find_a_destination_behind(
    tmp_path: Path,
) -> None:
    # The oldest calls are of a full destination; one with room has calls behind them.
    full, free = "http://127.0.0.1:8000", "http://127.0.0.1:9000"

    async def body(store: SQLiteStore, watched: Watched) -> tuple[set[str], int]:
        await store.dispatch([call(endpoint=full) for _ in range(100)], now=NOW)
        await store.dispatch([call(endpoint=free) for _ in range(5)], now=NOW)
        before = len(watched.statements)
        claimed = await store.claim(
            owner="p",
            now=NOW,
            limit=4,
            lease_seconds=LEASE,
            room=lambda key: 10 if key == destination(free) else 0,
        )
        return {c.call.endpoint for c in claimed}, window_reads(watched, before)

    assert with_store(tmp_path / "scheduler.db", body) == ({free}, 2)


def test_a_durable_commit_is_made_durable_by_an_fsync_of_the_wal_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection commits with ``synchronous = NORMAL`` (no fsync in the COMMIT):
    the writer's own fsync is what puts a durable write on disk, so it must be of the
    file SQLite appends the commits to, and of that file alone."""
    path = tmp_path / "scheduler.db"
    synced: list[tuple[int, int]] = []
    real = sqlite_store._fdatasync

    def recorded(descriptor: int) -> None:
        opened = os.fstat(descriptor)
        synced.append((opened.st_dev, opened.st_ino))
        real(descriptor)

    monkeypatch.setattr(sqlite_store, "_fdatasync", recorded)

    async def body(store: SQLiteStore, watched: Watched) -> None:
        level = await store._run(lambda: watched.real.execute("PRAGMA synchronous").fetchone())
        assert level == (1,)  # NORMAL
        await store.dispatch([call()], now=NOW)
        wal = os.stat(f"{path}-wal")
        assert synced == [(wal.st_dev, wal.st_ino)]
        await store.claim(owner="p", now=NOW + 0.1, limit=1, lease_seconds=LEASE)
        assert len(synced) == 1  # a lease has no fsync of its own

    with_store(path, body)


def test_a_wal_file_made_anew_is_the_one_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "scheduler.db"
    synced: list[int] = []
    real = sqlite_store._fdatasync

    def recorded(descriptor: int) -> None:
        synced.append(os.fstat(descriptor).st_ino)
        real(descriptor)

    monkeypatch.setattr(sqlite_store, "_fdatasync", recorded)

    async def body(store: SQLiteStore, watched: Watched) -> None:
        await store.dispatch([call()], now=NOW)
        # Another WAL file at the path (as when every connection closed and a new one
        # began): syncing the old one would leave the new commits off the disk.
        for mode in ("DELETE", "WAL"):
            await store._run(
                lambda mode=mode: watched.real.execute(f"PRAGMA journal_mode = {mode}").fetchall()
            )
        await store.dispatch([call()], now=NOW + 0.1)
        assert synced[-1] == os.stat(f"{path}-wal").st_ino

    with_store(path, body)


def test_a_first_dispatch_is_synced_while_every_file_descriptor_is_taken(
    tmp_path: Path,
) -> None:
    """Connections pouring in can take every descriptor the process may open (the API
    caps them only just under the limit): the WAL file's is open before, so the first
    durable write still syncs and the store stays usable."""

    async def body(store: SQLiteStore, watched: Watched) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        held: list[int] = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 20, hard))
        try:
            with contextlib.suppress(OSError):
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            assert await store.dispatch([call()], now=NOW)
        finally:
            for descriptor in held:
                os.close(descriptor)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert await store.dispatch([call()], now=NOW + 0.1)

    with_store(tmp_path / "scheduler.db", body)


def test_a_wal_file_that_cannot_be_synced_breaks_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    async def body(store: SQLiteStore, watched: Watched) -> None:
        await store.dispatch([call()], now=NOW)
        monkeypatch.setattr(sqlite_store, "_fdatasync", failing)
        with pytest.raises(DatabaseBroken, match="could not be synced to disk"):
            await store.dispatch([call()], now=NOW + 0.1)
        monkeypatch.undo()
        # Not acknowledged, and none after it: what it committed may not be on disk.
        with pytest.raises(DatabaseBroken, match="could not be synced to disk"):
            await store.dispatch([call()], now=NOW + 0.2)
        assert await store.claim(owner="p", now=NOW + 0.3, limit=5, lease_seconds=LEASE) == []

    with_store(tmp_path / "scheduler.db", body)


def test_a_handoff_is_told_its_leases_committed_before_the_fsync_and_answered_after(
    tmp_path: Path,
) -> None:
    """The calls a Dispatch hands over may start while its commit is synced to disk;
    the Dispatch itself returns (and is acknowledged) only once it is."""

    async def body(store: SQLiteStore, watched: Watched) -> None:
        syncing, go = threading.Event(), threading.Event()
        sync = store._writer._sync

        def held() -> None:
            syncing.set()
            go.wait(WAIT)
            sync()

        store._writer._sync = held
        told = asyncio.Event()
        handoff = Handoff("s1", LEASE, 5, lambda _: 5, committed=lambda _: told.set())
        dispatching = asyncio.create_task(store.dispatch([call("a")], now=NOW, handoff=handoff))
        try:
            assert await asyncio.to_thread(syncing.wait, WAIT), "no fsync began"
            await asyncio.wait_for(told.wait(), WAIT)
            assert [c.call.function for c in handoff.claimed] == ["a"]
            await asyncio.sleep(0.05)  # a chance to return early, which it must not take
            assert not dispatching.done()
        finally:
            go.set()
        (dispatch_id,) = await dispatching
        assert [c.call.dispatch_id for c in handoff.claimed] == [dispatch_id]
        assert watched.commits == [FULL]

    with_store(tmp_path / "scheduler.db", body)


def settings_at_commit(watched: Watched) -> list[tuple[bool, int, int]]:
    """For each COMMIT from now on: whether it ran on this (the event loop's) thread,
    and the connection's busy timeout and automatic checkpoint then."""
    seen: list[tuple[bool, int, int]] = []
    loop_thread = threading.get_ident()

    def record() -> None:
        (busy,) = watched.real.execute("PRAGMA busy_timeout").fetchone()
        (pages,) = watched.real.execute("PRAGMA wal_autocheckpoint").fetchone()
        seen.append((threading.get_ident() == loop_thread, busy, pages))

    watched.at_commit = record
    return seen


def test_a_small_dispatch_to_an_idle_writer_commits_on_the_loop_and_waits_for_nothing(
    tmp_path: Path,
) -> None:
    """Its transaction runs at once on the event loop (no hand-off to the writer's
    thread and back), with no wait for a lock and no checkpoint there; its fsync is
    still the thread's, and it is answered after it."""

    async def body(store: SQLiteStore, watched: Watched) -> None:
        seen = settings_at_commit(watched)
        (small,) = await store.dispatch([call("a")], now=NOW)
        assert seen == [(True, 0, 0)]
        assert watched.commits == [FULL]
        # The thread's own transactions wait for a lock and checkpoint as SQLite does.
        many = [call("b")] * (sqlite_store.SMALL_DISPATCH + 1)
        large = await store.dispatch(many, now=NOW)
        await store.claim(owner="p", now=NOW + 0.1, limit=1, lease_seconds=LEASE)
        assert seen[1:] == [(False, 5000, 1000)] * 2
        assert watched.commits == [FULL, FULL, NORMAL]
        assert {c.dispatch_id for c in await store.list(limit=100)} == {small, *large}

    with_store(tmp_path / "scheduler.db", body)


def test_dispatches_on_the_loop_one_after_another_set_its_settings_once(
    tmp_path: Path,
) -> None:
    """The loop's settings are set by its first transaction and left: the next ones set
    nothing on their way; the thread puts SQLite's own back before a transaction of its
    own, and before it closes the connection (whose close checkpoints)."""

    async def body(store: SQLiteStore, watched: Watched) -> None:
        seen = settings_at_commit(watched)

        def pragmas() -> list[str]:
            return [s for s in watched.statements if s.startswith("PRAGMA")]

        for n in range(3):
            await writer_idle(store)
            await store.dispatch([call(f"loop {n}")], now=NOW)
        assert seen == [(True, 0, 0)] * 3
        assert pragmas() == ["PRAGMA busy_timeout = 0", "PRAGMA wal_autocheckpoint = 0"]
        await store.claim(owner="p", now=NOW + 0.1, limit=1, lease_seconds=LEASE)
        assert seen[3:] == [(False, 5000, 1000)]
        await writer_idle(store)
        await store.dispatch([call("loop again")], now=NOW)
        assert seen[4:] == [(True, 0, 0)]
        assert len(pragmas()) == 6
        await store.close()
        assert watched.statements[-2:] == [
            "PRAGMA busy_timeout = 5000",
            "PRAGMA wal_autocheckpoint = 1000",
        ]

    async def scenario() -> None:
        store, watched = await opened(tmp_path / "scheduler.db")
        await asyncio.wait_for(body(store, watched), WAIT)

    asyncio.run(scenario())


def test_a_small_dispatch_finding_the_database_locked_waits_on_the_writer_thread(
    tmp_path: Path,
) -> None:
    """Another process holding the write lock: the loop does not wait for it (its
    attempt fails at once, nothing written); the thread does, and commits it after."""
    path = tmp_path / "scheduler.db"

    async def body(store: SQLiteStore, watched: Watched) -> None:
        seen = settings_at_commit(watched)
        begun: list[tuple[bool, int]] = []
        loop_thread = threading.get_ident()

        def record() -> None:
            (busy,) = watched.real.execute("PRAGMA busy_timeout").fetchone()
            begun.append((threading.get_ident() == loop_thread, busy))

        watched.at_begin = record
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")
            dispatching = asyncio.create_task(store.dispatch([call("a")], now=NOW))
            for _ in range(100_000):
                if watched.begun() >= 1 and store._writer.queued() == 0:
                    break
                await asyncio.sleep(0)
            assert not dispatching.done()
            assert watched.commits == []
            other.execute("COMMIT")
            (dispatch_id,) = await dispatching
        finally:
            other.close()
        assert begun == [(True, 0), (False, 5000)]
        assert seen == [(False, 5000, 1000)]
        assert watched.commits == [FULL]
        assert [c.dispatch_id for c in await store.list()] == [dispatch_id]

    with_store(path, body)


@pytest.mark.parametrize("where", ["COMMIT", "insert"])
def test_an_error_in_a_dispatch_committed_on_the_loop_fails_it_alone(
    tmp_path: Path, where: str
) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> None:
        statement = "COMMIT" if where == "COMMIT" else SQL.insert
        watched.faults[statement] = sqlite3.OperationalError("disk I/O error")
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await store.dispatch([call("a")], now=NOW)
        assert await store.list() == []
        assert not store._writer._draining, "the writer was left busy"
        # The next write goes on as usual, still on the loop.
        seen = settings_at_commit(watched)
        (dispatch_id,) = await store.dispatch([call("b")], now=NOW)
        assert seen == [(True, 0, 0)]
        assert [c.dispatch_id for c in await store.list()] == [dispatch_id]

    with_store(tmp_path / "scheduler.db", body)


def test_a_small_dispatchs_handed_calls_start_before_the_thread_is_woken_for_its_fsync(
    tmp_path: Path,
) -> None:
    """Committed on the loop, a lone Dispatch tells its handoff at once (not through the
    loop's wake-up pipe), and the attempts started then take their first step before the
    writer's thread is woken for the fsync, whose waking would take the interpreter from
    them. The Dispatch is still answered only once the fsync is done."""

    async def body(store: SQLiteStore, watched: Watched) -> None:
        events: list[str] = []
        submit = store._executor.submit

        def woken(fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
            events.append("thread woken")
            return submit(fn, *args)

        store._executor.submit = woken  # type: ignore[method-assign]

        async def attempt() -> None:
            events.append("attempt started")

        def handed(_: Handoff) -> None:  # as Engine.handed starts the attempts
            events.append("told")
            asyncio.get_running_loop().create_task(attempt())

        handoff = Handoff("s1", LEASE, 5, lambda _: 5, committed=handed)
        (dispatch_id,) = await store.dispatch([call("a")], now=NOW, handoff=handoff)
        events.append("answered")
        assert events == ["told", "attempt started", "thread woken", "answered"]
        assert [c.call.dispatch_id for c in handoff.claimed] == [dispatch_id]
        assert watched.commits == [FULL]

    with_store(tmp_path / "scheduler.db", body)


def test_calls_leased_as_they_are_stored_keep_the_dispatchs_order(tmp_path: Path) -> None:
    """A handoff with room for some of a Dispatch's calls (two on host a, one on b, none
    on c) stores those leased, each in one write, as a claim leaves them; every call
    keeps its place: the claim takes the others in the order they were sent."""

    async def body(store: SQLiteStore, watched: Watched) -> None:
        hosts = ["a", "b", "a", "a", "b", "c", "b"]
        sent = [call(f"f{n}", endpoint=f"http://{host}:8000") for n, host in enumerate(hosts)]
        room = {destination(f"http://{host}:8000"): n for host, n in (("a", 2), ("b", 1))}
        handoff = Handoff("s1", LEASE, 5, lambda where: room.get(where, 0))
        ids = await store.dispatch(sent, now=NOW, handoff=handoff)
        assert [c.call.dispatch_id for c in handoff.claimed] == [ids[0], ids[1], ids[2]]
        for claimed in handoff.claimed:
            assert (claimed.call.state, claimed.call.attempts) == (State.RUNNING, 1)
            assert (claimed.lease.token, claimed.lease.expires_at) == (1, NOW + LEASE)
            stored = await store.get(claimed.call.dispatch_id)
            assert stored is not None
            assert stored.state is State.RUNNING
        assert not any(s.startswith("UPDATE calls SET state") for s in watched.statements)
        rest = await store.claim(owner="p", now=NOW + 0.1, limit=10, lease_seconds=LEASE)
        assert [c.call.dispatch_id for c in rest] == ids[3:]

    with_store(tmp_path / "scheduler.db", body)


def test_a_dispatch_committed_on_the_loop_is_synced_before_the_store_closes(
    tmp_path: Path,
) -> None:
    """The store stopping its writes on the loop (as it closes) in the very turn that
    committed a Dispatch there, its fsync not yet asked of the thread: that fsync comes
    before anything the thread is given after it (the connection's close), and the
    Dispatch is answered."""

    async def body(store: SQLiteStore, watched: Watched) -> None:
        order: list[str] = []
        sync = store._writer._sync

        def syncing() -> None:
            order.append("fsync")
            sync()

        store._writer._sync = syncing
        dispatching = asyncio.create_task(store.dispatch([call("a")], now=NOW))
        await asyncio.sleep(0)  # its first step: committed, the fsync still to be asked
        assert watched.commits == [NORMAL]
        store._writer.stop_on_loop()
        await store._run(lambda: order.append("closing"))
        (dispatch_id,) = await dispatching
        assert order == ["fsync", "closing"]
        assert await store.get(dispatch_id) is not None

    with_store(tmp_path / "scheduler.db", body)
