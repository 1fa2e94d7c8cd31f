"""The PostgreSQL store's statements for a batch of calls (a claim of chosen calls, a
batch of finishes and what goes with it) read those calls by their primary key (and
their children by the index of their parent), whatever
the planner's statistics say: on a table that grew since it was last analyzed (a new
database, a burst after a quiet hour) the statistics call every state rare, and a plan
that read a state's partial index instead would read every done call or the whole
backlog, for each batch.

The plans are PostgreSQL's own (``EXPLAIN``), of the statements the store runs, on a
table of thousands of calls never analyzed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from postgres_server import fresh_database
from test_store_contract import LEASE, NOW, call

CALLS = "dispatchlet_calls"
DONE, READY = 3000, 1000
"""The table's calls: a history of done calls, and a backlog of ready ones."""
BATCH = 10
SEEKS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}


def reads(plan: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """How each node of ``plan`` (EXPLAIN's JSON) that reads the calls' table reads it:
    its kind and its index (a bitmap's: each index it is made of)."""
    if plan.get("Relation Name") == CALLS and plan["Node Type"] != "ModifyTable":
        if plan["Node Type"] == "Bitmap Heap Scan":
            yield from (("Bitmap Heap Scan", index) for index in bitmap_indexes(plan))
        else:
            yield plan["Node Type"], plan.get("Index Name")
    for child in plan.get("Plans", ()):
        if plan["Node Type"] != "Bitmap Heap Scan":
            yield from reads(child)


def bitmap_indexes(plan: dict[str, Any]) -> Iterator[str]:
    for child in plan.get("Plans", ()):
        if child["Node Type"] == "Bitmap Index Scan":
            yield child["Index Name"]
        yield from bitmap_indexes(child)


@pytest.fixture(scope="module")
def grown(postgres_server: str) -> tuple[str, list[str], list[str]]:
    """A database whose calls' table grew from empty, never analyzed; its URL, the ids
    of its ready calls and of some done ones."""
    import psycopg
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def fill() -> list[str]:
        store = await PostgresStore.open(url)
        try:
            ids: list[str] = []
            for _ in range((DONE + READY) // 500):
                ids += await store.dispatch([call() for _ in range(500)], now=NOW)
            return ids
        finally:
            await store.close()

    ids = asyncio.run(fill())
    done, ready = ids[:DONE], ids[DONE:]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            f"UPDATE {CALLS} SET state = 'done', status = 1, finished_at = %s,"
            " lease_token = 1 WHERE dispatch_id = ANY(%s)",
            (NOW, done),
        )
        (analyzed,) = db.execute(
            "SELECT coalesce(last_analyze, last_autoanalyze) FROM pg_stat_user_tables"
            " WHERE relname = %s",
            (CALLS,),
        ).fetchone() or (None,)
    assert analyzed is None, "the table was analyzed: its statistics are not stale"
    return url, ready, done[-BATCH:]


def batch_params(ready: list[str], done: list[str]) -> dict[str, Any]:
    """The parameters of the batch statements, as the store gives them."""
    n = len(done)
    return {
        # A claim of ready calls
        "ids": ready[:BATCH],
        "wanted": BATCH,
        "now": NOW,
        "owner": "s 0123",
        "expires": NOW + LEASE,
        # A batch of finishes (of done calls: what the statements after the finish read)
        "tokens": [1] * n,
        "owners": ["s 0123"] * n,
        "statuses": [1] * n,
        "results": [b""] * n,
        "nows": [NOW] * n,
        "orphan_statuses": [7] * n,
        "orphan_results": [b""] * n,
        "attempt_ids": done,
        "attempt_tokens": [1] * n,
        "attempt_functions": ["f"] * n,
        "attempt_starts": [NOW] * n,
        "attempt_durations": [0.01] * n,
        "attempt_statuses": [1] * n,
        "attempt_types": [""] * n,
        "attempt_messages": [""] * n,
        "attempt_keeps": [10] * n,
    }


@pytest.mark.parametrize(
    "statement",
    [
        "claim_ids",
        "undelivered_claimed",
        "finish_all",
        "queue_endings_all",
        "wake_parents_all",
        "add_attempts_all",
        "notify_ended",
    ],
)
def test_a_batch_statement_reads_its_calls_by_primary_key(
    grown: tuple[str, list[str], list[str]], statement: str
) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import SQL

    url, ready, done = grown
    params = batch_params(ready, done)
    if statement not in ("claim_ids", "undelivered_claimed"):
        params["ids"] = done
    with psycopg.connect(url) as db:
        text = getattr(SQL, statement)
        (plan,) = db.execute(f"EXPLAIN (FORMAT JSON) {text}".encode(), params).fetchone() or ()
        db.rollback()
    read = [how for top in plan for how in reads(top["Plan"])]
    assert read, "the statement reads the calls"
    # By the primary key, or a call's children by the index of their parent.
    keyed = {f"{CALLS}_pkey", f"{CALLS}_parent"}
    assert all(kind in SEEKS and index in keyed for kind, index in read), read
