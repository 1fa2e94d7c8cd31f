"""PostgreSQL's schema migrates while the other processes on the database work on (a
rolling upgrade): no step holds a lock that stops a read of the calls for longer than an
instant, and a migration stopped midway goes on from where it stopped.

A migration is held at known points by the test's own transactions (a lock on the
schema's version row, an open snapshot that a concurrent index build waits for); a read
from another connection is made there, and whether it waits for a lock is read from
``pg_locks``, never from timings."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from postgres_server import fresh_database
from test_store_contract import NOW, old_postgres_database

pytestmark = pytest.mark.slow

BOUND = 60.0
"""The longest any wait of these tests lasts, in seconds."""
ROOTS, CHILDREN = 1500, 99
"""150,000 calls: roots each with their children, as the previous release stored them."""
PREVIOUS_RELEASE = 2
"""The schema version the previous release left (its own history, no shared entry)."""


def fill(url: str, roots: int, children: int) -> None:
    """Ready calls, ``roots`` trees of ``children`` calls below their root, written by
    the database itself (fast)."""
    import psycopg

    common = (
        "'f', 'http://127.0.0.1:8000', '127.0.0.1:8000', '', 'ready', %(now)s, "
        "%(now)s + 3600, %(now)s"
    )
    columns = (
        "dispatch_id, root_id, parent_id, function, endpoint, destination, input, state,"
        " created_at, expires_at, ready_at"
    )
    with psycopg.connect(url) as db:
        db.execute(
            f"INSERT INTO dispatchlet_calls ({columns}) SELECT 'root-' || r, 'root-' || r,"
            f" NULL, {common} FROM generate_series(1, %(roots)s) AS r",
            {"now": NOW, "roots": roots},
        )
        db.execute(
            f"INSERT INTO dispatchlet_calls ({columns}) SELECT 'child-' || r || '-' || c,"
            f" 'root-' || r, 'root-' || r, {common}"
            " FROM generate_series(1, %(roots)s) AS r, generate_series(1, %(children)s) AS c",
            {"now": NOW, "roots": roots, "children": children},
        )
        db.execute("ANALYZE dispatchlet_calls")


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Wait for ``check`` to hold (``BOUND`` at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"waited {BOUND:.0f} s for {what}")
        await asyncio.sleep(0.02)


class Watch:
    """Reads of the database's own view of backends and locks, on a connection of its own."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def value(self, query: str, *params: Any) -> Any:
        row = await (await self.db.execute(query, params)).fetchone()
        return None if row is None else row[0]

    async def migrator(self) -> int | None:
        """The backend that holds the migration's advisory lock, if one does."""
        from dispatchlet.scheduler.store.postgres import MIGRATION_LOCK

        pid = await self.value(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND ((classid::bigint << 32) | objid::bigint) = %s",
            MIGRATION_LOCK,
        )
        return None if pid is None else int(pid)

    async def waiting(self, pid: int, locktype: str | None = None) -> bool:
        """Whether backend ``pid`` waits for a lock (of ``locktype``)."""
        count = await self.value(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted"
            " AND (%s::text IS NULL OR locktype = %s::text)",
            pid,
            locktype,
            locktype,
        )
        return bool(count)


async def answered_without_waiting(
    watch: Watch, db: Any, query: str, migrating: asyncio.Task[Any]
) -> Any:
    """``query``'s answer on ``db``, failing if it waits for a lock while the migration
    is held (it would be answered only once the migration ends)."""
    pid = db.info.backend_pid
    statement = asyncio.create_task(db.execute(query))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while not statement.done():
        if await watch.waiting(pid):
            statement.cancel()
            pytest.fail(f"{query!r} waited for a lock the migration holds")
        assert not migrating.done(), "the migration ended while it was held"
        if loop.time() > deadline:
            pytest.fail(f"waited {BOUND:.0f} s for {query!r}")
        await asyncio.sleep(0.02)
    cursor = await statement
    return await cursor.fetchall() if cursor.description else cursor.rowcount


def test_a_large_database_stays_readable_while_it_migrates_and_a_stopped_migration_resumes(
    postgres_server: str,
) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import MIGRATIONS as PG_MIGRATIONS
    from dispatchlet.scheduler.store.postgres import SCHEMA_VERSION as PG_VERSION
    from dispatchlet.scheduler.store.postgres import PostgresStore
    from dispatchlet.scheduler.store.statements import Index

    url = fresh_database(postgres_server)
    old_postgres_database(url, PREVIOUS_RELEASE, [])
    fill(url, ROOTS, CHILDREN)
    first_index = next(n for n, m in enumerate(PG_MIGRATIONS) if isinstance(m, Index))
    point_read = "SELECT dispatch_id, state FROM dispatchlet_calls WHERE dispatch_id = 'root-7'"

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)

    async def scenario() -> tuple[int, bool]:
        watch, reader, holder, snapshot = [await connect() for _ in range(4)]
        seen = Watch(watch)
        migrating: asyncio.Task[Any] | None = None
        try:
            # Held where it records its first step's version.
            await holder.execute("BEGIN")
            await holder.execute("SELECT version FROM dispatchlet_schema FOR UPDATE")
            migrating = asyncio.create_task(PostgresStore.open(url))
            pids: list[int] = []

            async def held() -> bool:
                assert not migrating.done(), "the migration ended while it was held"
                pid = await seen.migrator()
                pids[:] = [] if pid is None else [pid]
                return pid is not None and await seen.waiting(pid)

            await until("the migration to wait for the version's row", held)
            rows = await answered_without_waiting(seen, reader, point_read, migrating)
            assert rows == [("root-7", "ready")]

            # Then held at its first concurrent index build, which waits for an open
            # snapshot, after the new columns and their backfill.
            await snapshot.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await snapshot.execute("SELECT 1")
            await holder.execute("COMMIT")
            (pid,) = pids
            await until(
                "the index build to wait for the open snapshot",
                lambda: seen.waiting(pid, "virtualxid"),
            )
            rows = await answered_without_waiting(seen, reader, point_read, migrating)
            assert rows == [("root-7", "ready")]
            write = "UPDATE dispatchlet_calls SET attempts = 1 WHERE dispatch_id = 'root-8'"
            assert await answered_without_waiting(seen, reader, write, migrating) == 1

            # The process stops there (its statement cancelled): the index is left invalid.
            await watch.execute("SELECT pg_cancel_backend(%s)", (pid,))
            with pytest.raises(psycopg.errors.QueryCanceled):
                await asyncio.wait_for(migrating, BOUND)
            version = await seen.value("SELECT version FROM dispatchlet_schema")
            valid = await seen.value(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                PG_MIGRATIONS[first_index].name,  # type: ignore[union-attr]
            )
            await snapshot.execute("COMMIT")
            return int(version), bool(valid)
        finally:
            if migrating is not None and not migrating.done():
                migrating.cancel()
            for db in (watch, reader, holder, snapshot):
                await db.close()

    version, valid = asyncio.run(scenario())
    assert version == first_index, "the steps before the index build are recorded"
    assert not valid

    # The next process to start goes on from there, the invalid index built again.
    async def reopen() -> None:
        store = await asyncio.wait_for(PostgresStore.open(url), BOUND)
        await store.close()

    asyncio.run(reopen())
    with psycopg.connect(url) as db:
        assert db.execute("SELECT version FROM dispatchlet_schema").fetchall() == [(PG_VERSION,)]
        indexes = db.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index AS i"
            " JOIN pg_class AS c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'dispatchlet_calls'::regclass"
        ).fetchall()
        built = {m.name for m in PG_MIGRATIONS if isinstance(m, Index)}
        assert built <= {name for name, _ in indexes}
        assert all(ok for _, ok in indexes), indexes
        counts = db.execute(
            "SELECT dispatch_id = root_id, descendants, count(*) FROM dispatchlet_calls"
            " GROUP BY 1, 2 ORDER BY 1"
        ).fetchall()
        assert counts == [(False, 0, ROOTS * CHILDREN), (True, CHILDREN, ROOTS)]
        assert db.execute(
            "SELECT attempts FROM dispatchlet_calls WHERE dispatch_id = 'root-8'"
        ).fetchall() == [(1,)], "the write made during the migration is kept"
