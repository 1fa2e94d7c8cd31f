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
