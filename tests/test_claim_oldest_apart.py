"""A claim whose oldest calls are all ready, of roots apart and without limits takes
them without reading its window (a thousand calls and more): the same calls, in the
same order, as the round-robin over the whole window would give."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.scheduler.store.claims import in_turns, oldest_apart
from dispatchlet.scheduler.store.sqlite import SQL, SQLiteStore
from hypothesis import given
from hypothesis import strategies as st
from postgres_server import fresh_database
from test_sqlite_writes import LEASE, NOW, Watched, call, window_reads, with_store

Row = tuple[str, str, str, float, int, str, int]


@st.composite
def windows(draw: st.DrawFn) -> tuple[list[Row], int]:
    """A window of ready calls (in its order: ready_at, then seq) and a claim's count."""
    size = draw(st.integers(1, 60))
    roots = draw(st.lists(st.integers(0, 80), min_size=size, max_size=size))
    times = sorted(draw(st.lists(st.integers(0, 5), min_size=size, max_size=size)))
    rows = [
        (f"c{seq}", f"r{root}", f"d{root % 3}", float(at), seq, "ready", 0)
        for seq, (root, at) in enumerate(zip(roots, times, strict=True))
    ]
    return rows, draw(st.integers(1, 20))


@given(windows())
def test_the_oldest_calls_of_roots_apart_are_the_windows_first_turn(
    drawn: tuple[list[Row], int],
) -> None:
    window, count = drawn
    oldest = window[:count]
    apart = oldest_apart(oldest)
    if len({row[1] for row in oldest}) < len(oldest):
        assert apart is None  # a root twice: only the whole window says the order
    else:
        assert apart == in_turns([row[:5] for row in window], count)


def test_lapsed_due_or_limited_calls_need_the_window() -> None:
    ready: Row = ("a", "ra", "d", 1.0, 1, "ready", 0)
    assert oldest_apart([ready]) == [("a", "d")]
    assert oldest_apart([ready, ("b", "rb", "d", 0.0, 2, "running", 0)]) is None
    assert oldest_apart([ready, ("b", "rb", "d", 0.0, 2, "waiting", 0)]) is None
    assert oldest_apart([ready, ("b", "rb", "d", 2.0, 2, "ready", 1)]) is None


def test_a_claim_of_calls_of_roots_apart_reads_no_window(tmp_path: Path) -> None:
    async def body(store: SQLiteStore, watched: Watched) -> tuple[list[str], list[str], int]:
        ids = await store.dispatch([call(f"f{n}") for n in range(200)], now=NOW)
        before = len(watched.statements)
        claimed = await store.claim(owner="p", now=NOW, limit=10, lease_seconds=LEASE)
        return ids[:10], [c.call.dispatch_id for c in claimed], window_reads(watched, before)

    oldest, claimed, reads = with_store(tmp_path / "scheduler.db", body)
    assert claimed == oldest
    assert reads == 0


def oldest_reads(watched: Watched, since: int) -> int:
    return sum(s == SQL.oldest_claimable for s in watched.statements[since:])


def test_a_fan_out_is_dealt_in_turns_and_the_next_claims_read_the_window_at_once(
    tmp_path: Path,
) -> None:
    """One root's many calls (as a fan-out's children share their root), then another
    root's: the oldest calls are not apart, the window decides (the other root's call
    second, in its turn), and the next few claims read the window first."""

    async def body(store: SQLiteStore, watched: Watched) -> tuple[list[str], list[str], Any]:
        fan = await store.dispatch([call("fan", root_id="root-1") for _ in range(50)], now=NOW)
        other = await store.dispatch([call("other")], now=NOW + 1)
        reads = []
        for _ in range(3):
            before = len(watched.statements)
            claimed = await store.claim(owner="p", now=NOW + 2, limit=2, lease_seconds=LEASE)
            reads.append((oldest_reads(watched, before), window_reads(watched, before)))
            if len(reads) == 1:
                first = [c.call.dispatch_id for c in claimed]
        return first, [fan[0], *other], reads

    first, expected, reads = with_store(tmp_path / "scheduler.db", body)
    assert first == expected
    assert reads == [(1, 1), (0, 1), (0, 1)]


@pytest.fixture
def decided(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each PostgreSQL claim's oldest calls decided it (``_apart``), in order."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    decisions: list[bool] = []
    apart = PostgresStore._apart

    async def recorded(self: PostgresStore, *args: Any) -> list[str] | None:
        ids = await apart(self, *args)
        decisions.append(ids is not None)
        return ids

    monkeypatch.setattr(PostgresStore, "_apart", recorded)
    return decisions


def test_on_postgres_the_oldest_calls_decide_a_claim_too(
    postgres_server: str, decided: list[bool]
) -> None:
    """With and without a cap (which the oldest calls' destinations are counted
    against), and a fan-out after them sends the next claims to the window."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> None:
        store = await PostgresStore.open(url)
        try:
            ids = await store.dispatch([call(f"f{n}") for n in range(30)], now=NOW)
            first = await store.claim(owner="p", now=NOW, limit=5, lease_seconds=LEASE)
            capped = await store.claim(owner="p", now=NOW, limit=5, lease_seconds=LEASE, cap=8)
            assert [c.call.dispatch_id for c in [*first, *capped]] == ids[:8]
            assert decided == [True, True]
            await store.dispatch([call("fan", root_id="root-1") for _ in range(30)], now=NOW)
            await store.claim(owner="p", now=NOW + 1, limit=30, lease_seconds=LEASE)
            assert decided == [True, True, False]
        finally:
            await store.close()

    asyncio.run(scenario())


def growing_room() -> Callable[[str], int]:
    """Room for two more calls at each reading, as attempts that end while a claim
    awaits the store free theirs."""
    readings = itertools.count(1)
    return lambda where: 2 * next(readings)


def test_a_claim_decides_by_the_room_it_first_read(tmp_path: Path) -> None:
    """One destination's calls, with room for 2 of the 10 asked when the claim reads it
    and more by its next reading: the claim takes the 2, and its oldest calls decide it
    (its window, a thousand calls and more, is not read to look for more of them)."""

    async def body(store: SQLiteStore, watched: Watched) -> tuple[int, int]:
        await store.dispatch([call() for _ in range(100)], now=NOW)
        before = len(watched.statements)
        claimed = await store.claim(
            owner="p", now=NOW, limit=10, lease_seconds=LEASE, room=growing_room()
        )
        return len(claimed), window_reads(watched, before)

    assert with_store(tmp_path / "scheduler.db", body) == (2, 0)


def test_on_postgres_a_claim_decides_by_the_room_it_first_read(
    postgres_server: str, decided: list[bool]
) -> None:
    """As on SQLite: there the claim awaits the database between its readings of the
    room, while the attempts in flight go on ending."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(postgres_server)

    async def scenario() -> int:
        store = await PostgresStore.open(url)
        try:
            await store.dispatch([call() for _ in range(100)], now=NOW)
            claimed = await store.claim(
                owner="p", now=NOW, limit=10, lease_seconds=LEASE, room=growing_room()
            )
            return len(claimed)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == 2
    assert decided == [True]
