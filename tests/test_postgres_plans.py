"""The PostgreSQL store's statements for a batch of calls (a claim of chosen calls, a
batch of finishes and what goes with it) read those calls by their primary key (and
their children by the index of their parent), whatever the planner's statistics say: on
a table that grew since it was last analyzed (a new database, a burst after a quiet
hour) the statistics call every state rare, and a plan that read a state's partial
index instead would read every done call or the whole backlog, for each batch.

The plans are PostgreSQL's own (``EXPLAIN``), of the statements the store runs, on a
table of thousands of calls never analyzed."""

from __future__ import annotations

import asyncio
import re
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


def reads(plan: dict[str, Any]) -> Iterator[tuple[str, str | None, str]]:
    """How each node of ``plan`` (EXPLAIN's JSON) that reads the calls' table reads it:
    its kind, its index and the index's condition (a bitmap's: each index it is made
    of)."""
    if plan.get("Relation Name") == CALLS and plan["Node Type"] != "ModifyTable":
        if plan["Node Type"] == "Bitmap Heap Scan":
            for index, condition in bitmap_indexes(plan):
                yield "Bitmap Heap Scan", index, condition
        else:
            yield plan["Node Type"], plan.get("Index Name"), plan.get("Index Cond", "")
    for child in plan.get("Plans", ()):
        if plan["Node Type"] != "Bitmap Heap Scan":
            yield from reads(child)


def bitmap_indexes(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for child in plan.get("Plans", ()):
        if child["Node Type"] == "Bitmap Index Scan":
            yield child["Index Name"], child.get("Index Cond", "")
        yield from bitmap_indexes(child)


@pytest.fixture(scope="module")
def grown(postgres_server: str) -> tuple[str, list[str], list[str]]:
    """A database whose calls' table grew from empty, never analyzed (done calls, and
    ready ones, half of them children); its URL, the ids of its ready calls and of some
    done ones."""
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
        # Half the backlog are children of an older call, unfinished.
        db.execute(
            f"UPDATE {CALLS} SET parent_id = %s WHERE dispatch_id = ANY(%s)",
            (done[0], ready[READY // 2 :]),
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


PLANS = {
    # The plans PostgreSQL makes for the values given (as for a statement's first
    # executions on a connection), and the one it keeps for any values (the batch of
    # finishes' transaction asks for it: ``GENERIC_PLANS``).
    "for its values": "force_custom_plan",
    "generic": "force_generic_plan",
}


def explained(db: Any, text: str, params: dict[str, Any], mode: str) -> list[Any]:
    """EXPLAIN's JSON of the statement ``text`` (``%(name)b`` parameters) prepared on
    ``db`` and executed with ``params``, planned as ``mode`` says."""
    from psycopg import ClientCursor

    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)b", text)))
    numbered = re.sub(r"%\((\w+)\)b", lambda m: f"${names.index(m.group(1)) + 1}", text)
    db.execute(f"SET plan_cache_mode = {mode}")
    db.execute(f"PREPARE batch AS {numbered}".encode())
    values = ", ".join(["%s"] * len(names))
    cursor = ClientCursor(db)
    cursor.execute(f"EXPLAIN (FORMAT JSON) EXECUTE batch({values})", [params[n] for n in names])
    (plan,) = cursor.fetchone() or ()
    return list(plan)


@pytest.mark.parametrize("plans", sorted(PLANS))
@pytest.mark.parametrize(
    "statement",
    ["claim_ids", "queue_endings_all", "wake_parents_all", "add_attempts_all", "notify_ended"],
)
def test_a_batch_statement_reads_its_calls_by_primary_key(
    grown: tuple[str, list[str], list[str]], statement: str, plans: str
) -> None:
    import psycopg
    from dispatchlet.scheduler.store.postgres import SQL

    url, ready, done = grown
    params = batch_params(ready, done)
    if statement != "claim_ids":
        params["ids"] = done
    with psycopg.connect(url) as db:
        plan = explained(db, getattr(SQL, statement), params, PLANS[plans])
        db.rollback()
    read = [how for top in plan for how in reads(top["Plan"])]
    assert read, "the statement reads the calls"
    # Each by its primary key, or a call's children by the index of their parent.
    keys = {f"{CALLS}_pkey": "(dispatch_id = ", f"{CALLS}_parent": "(parent_id = "}
    assert all(
        kind in SEEKS and index in keys and keys[index] in condition
        for kind, index, condition in read
    ), read
