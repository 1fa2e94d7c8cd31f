"""PostgreSQL breaks a deadlock by aborting one of the transactions in it. Two of the
store's own can meet that way (a root ending, which locks its descendants, while one of
them polls and updates its root's count): the aborted one changed nothing, and the store
runs it again instead of answering "database unavailable"."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from postgres_server import fresh_database

pytestmark = pytest.mark.slow


def test_a_transaction_aborted_to_break_a_deadlock_is_run_again(postgres_server: str) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("CREATE TABLE rows_to_lock (id INTEGER PRIMARY KEY, n INTEGER)")
        setup.execute("INSERT INTO rows_to_lock VALUES (1, 0), (2, 0)")

    async def scenario() -> tuple[str, int, list[tuple[Any, ...]]]:
        store = await PostgresStore.open(url)
        other = await psycopg.AsyncConnection.connect(url)
        first_locked = asyncio.Event()
        runs = 0

        async def locks_one_then_two(db: Any) -> str:
            nonlocal runs
            runs += 1
            # This transaction looks for deadlocks first, so PostgreSQL aborts it.
            await db.execute("SET LOCAL deadlock_timeout = '100ms'")
            await db.execute("UPDATE rows_to_lock SET n = n + 1 WHERE id = 1")
            first_locked.set()
            await db.execute("UPDATE rows_to_lock SET n = n + 1 WHERE id = 2")
            return "committed"

        async def then_one() -> None:
            await asyncio.wait_for(first_locked.wait(), 30)
            await other.execute("UPDATE rows_to_lock SET n = n + 10 WHERE id = 1")
            await other.commit()

        try:
            # The other transaction holds row 2 before this one starts.
            await other.execute("SET deadlock_timeout = '60s'")
            await other.execute("UPDATE rows_to_lock SET n = n + 10 WHERE id = 2")
            opposite = asyncio.create_task(then_one())
            answer = await asyncio.wait_for(store._transaction(locks_one_then_two), 60)
            await asyncio.wait_for(opposite, 60)
            async with await psycopg.AsyncConnection.connect(url) as check:
                cursor = await check.execute("SELECT id, n FROM rows_to_lock ORDER BY id")
                rows = await cursor.fetchall()
            return answer, runs, rows
        finally:
            await other.close()
            await store.close()

    answer, runs, rows = asyncio.run(scenario())
    assert answer == "committed"
    assert runs == 2, "the aborted transaction was run exactly once more"
    # Both transactions' writes are there, the aborted run's not twice.
    assert rows == [(1, 11), (2, 11)]


def test_a_batch_of_finishes_aborted_to_break_a_deadlock_is_run_again(
    postgres_server: str,
) -> None:
    """A root's finish (its row, then its child's) meets a transaction that locked the
    child, then the root, as the child's Poll does. The test's transactions hold each
    side at its first lock until the other side waits, so that the finishes' transaction
    is the one that finds the deadlock (its database checks after 100 ms, the other
    transaction after a minute): it is aborted, and the batch, with an unrelated finish
    in it, is written again."""
    import psycopg
    from dispatchlet.scheduler.store.postgres import PostgresStore
    from test_store_contract import LEASE, NOW, ORPHANS, POLL, call

    url = fresh_database(postgres_server)
    name = url.rpartition("/")[2]
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '100ms'")

    async def until(what: str, check: Any) -> None:
        for _ in range(3000):  # 60 s at most
            if await check():
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"waited a minute for {what}")

    async def scenario() -> tuple[list[bool | BaseException], list[Any]]:
        store = await PostgresStore.open(url)
        watch, holder, other = [
            await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(3)
        ]
        ours = [db.info.backend_pid for db in (watch, holder, other)]

        async def waiting(*, store: bool = False, pid: int = 0) -> bool:
            """Whether the store's connections (else backend ``pid``) wait for a lock."""
            test = "pid <> ALL(%s)" if store else "pid = %s"
            query = f"SELECT count(*) FROM pg_locks WHERE NOT granted AND {test}"
            row = await (await watch.execute(query, (ours if store else pid,))).fetchone()
            return bool(row and row[0])

        try:
            # A root running again (its timer lapsed) with a child not yet run, and an
            # unrelated call running.
            root, unrelated = await store.dispatch([call("root"), call("other")], now=NOW)
            leases = await store.claim(owner="s", now=NOW, limit=2, lease_seconds=LEASE)
            by_id = {c.call.dispatch_id: c.lease for c in leases}
            (child,) = await store.suspend(
                by_id[root],
                POLL,
                [call("child")],
                min_results=1,
                max_results=1,
                until=NOW + 1,
                now=NOW,
            ) or [None]
            (again,) = await store.claim(owner="s", now=NOW + 2, limit=1, lease_seconds=LEASE)
            assert again.call.dispatch_id == root

            # The finishes will wait after locking the root, on the root's pending ending.
            await holder.execute("BEGIN")
            await holder.execute("INSERT INTO dispatchlet_endings VALUES (%s, 0, '', 0)", (root,))
            # The child's side: its row locked.
            await other.execute("SET deadlock_timeout = '60s'")
            await other.execute("BEGIN")
            await other.execute(
                "UPDATE dispatchlet_calls SET attempts = attempts WHERE dispatch_id = %s",
                (child,),
            )
            finishing = asyncio.gather(
                store.finish(again.lease, 1, b"done", now=NOW + 3, orphans=ORPHANS),
                store.finish(by_id[unrelated], 1, b"ok", now=NOW + 3),
                return_exceptions=True,
            )
            await until("the finishes to wait", lambda: waiting(store=True))
            # Then its root's, behind the finishes.
            root_update = asyncio.create_task(
                other.execute(
                    "UPDATE dispatchlet_calls SET descendants = descendants WHERE dispatch_id = %s",
                    (root,),
                )
            )
            await until("the child's side to wait", lambda: waiting(pid=ours[2]))
            await holder.execute("ROLLBACK")  # the finishes go on, to the child: deadlock
            # Done only once the finishes' transaction ended: aborted, holding the child.
            await asyncio.wait_for(root_update, 60)
            await other.execute("COMMIT")
            outcomes = await asyncio.wait_for(finishing, 60)
            states = [await store.get(dispatch_id) for dispatch_id in (root, child, unrelated)]
            return outcomes, states
        finally:
            for db in (watch, holder, other):
                await db.close()
            await store.close()

    outcomes, (root, child, unrelated) = asyncio.run(scenario())
    assert outcomes == [True, True], "both finishes of the aborted batch were written"
    ended = [(c.status, c.result) if c else None for c in (root, child, unrelated)]
    assert ended == [(1, b"done"), ORPHANS, (1, b"ok")]
