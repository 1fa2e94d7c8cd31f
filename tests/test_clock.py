"""The scheduler's clock: leases, readiness and expiry are decided by a time that the
wall clock's jumps do not move (logged instead), and that every process sharing a
PostgreSQL database takes from the database."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from dispatchlet.scheduler.clock import (
    JUMP,
    SLEW,
    Clock,
    DatabaseClock,
    SteadyClock,
    clock_for,
)
from dispatchlet.scheduler.store.memory import MemoryStore
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from postgres_server import fresh_database

START = 1_800_000_000.0


class FakeTime:
    """A wall clock that the test moves, and a monotonic clock it advances."""

    def __init__(self) -> None:
        self.monotonic_now = 1000.0
        self.wall_offset = START - self.monotonic_now

    def wall(self) -> float:
        return self.monotonic_now + self.wall_offset

    def monotonic(self) -> float:
        return self.monotonic_now

    def advance(self, seconds: float) -> None:
        self.monotonic_now += seconds

    def jump(self, seconds: float) -> None:
        self.wall_offset += seconds


def steady(fake: FakeTime) -> SteadyClock:
    return SteadyClock(wall=fake.wall, monotonic=fake.monotonic)


def jumps(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "wall clock jumped" in r.getMessage()]


@pytest.mark.parametrize("seconds", [120.0, -600.0, 900.0])
def test_a_wall_clock_jump_does_not_move_the_clock_and_is_logged_once(
    seconds: float, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeTime()
    clock = steady(fake)
    assert clock() == START
    fake.advance(5.0)
    before = clock()
    assert before == START + 5.0
    fake.jump(seconds)
    with caplog.at_level(logging.WARNING, logger="dispatchlet.scheduler"):
        for _ in range(10):  # ten checks, a second apart
            fake.advance(1.0)
            clock()
    after = clock()
    # Ten seconds later by the monotonic clock: at most the slew's 5 ms more or less.
    assert abs(after - (before + 10.0)) <= 10 * SLEW + 1e-6
    (logged,) = jumps(caplog)
    direction = "forward" if seconds > 0 else "back"
    assert f"the wall clock jumped {direction} by {abs(seconds):.1f} s" in logged
    assert "keeps its own time" in logged


def test_the_clock_never_goes_back_and_catches_up_with_the_wall_clock_slowly() -> None:
    fake = FakeTime()
    clock = steady(fake)
    fake.jump(-2.0)  # the wall clock is set back by 2 s (an NTP step)
    readings = []
    for _ in range(2 * 3600 * 4):  # two hours, four readings a second
        fake.advance(0.25)
        readings.append(clock())
    assert all(b > a for a, b in itertools.pairwise(readings))
    # 2 s at 0.5 ms per second take 4,000 s: caught up within the two hours.
    assert abs(clock() - fake.wall()) < 1e-6


def test_small_drift_is_absorbed_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    clock = steady(fake)
    with caplog.at_level(logging.WARNING, logger="dispatchlet.scheduler"):
        for _ in range(600):
            fake.advance(1.0)
            fake.jump(JUMP / 100)  # the wall clock runs 1% fast: never a jump
            clock()
    assert jumps(caplog) == []


def test_times_sent_to_endpoints_are_put_on_the_wall_clock() -> None:
    fake = FakeTime()
    clock = steady(fake)
    assert clock.wall_skew() == 0.0
    fake.jump(900.0)
    fake.advance(1.0)
    # The scheduler kept its time; an endpoint on this machine reads the wall clock.
    assert abs(clock.wall_skew() - 900.0) <= SLEW


def read_database(
    fake: FakeTime, database: list[float], trips: list[float]
) -> Callable[[], Awaitable[float]]:
    """A database clock read: the database's time half-way through a round trip of the
    next length in ``trips``."""

    async def read() -> float:
        trip = trips.pop(0) if trips else 0.002
        fake.advance(trip / 2)
        told = database[0] + fake.monotonic()
        fake.advance(trip / 2)
        return told

    return read


def test_the_database_clock_is_the_databases_time_whatever_the_wall_clock_says() -> None:
    async def body() -> None:
        fake = FakeTime()
        fake.jump(90.0)  # this machine is 90 s ahead
        database = [START - fake.monotonic()]  # the database's time: START now
        # The reading with the shortest round trip is taken, as of its midpoint.
        read = read_database(fake, database, [0.5, 0.004, 0.3])
        clock = await DatabaseClock.opened(read, wall=fake.wall, monotonic=fake.monotonic)
        assert abs(clock() - (database[0] + fake.monotonic())) < 1e-6
        assert clock.round_trip == pytest.approx(0.004)
        assert clock.wall_skew() == pytest.approx(90.0)

    asyncio.run(body())


def test_the_database_clock_follows_the_database_at_each_sync(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        fake = FakeTime()
        database = [START - fake.monotonic()]
        read = read_database(fake, database, [])
        clock = await DatabaseClock.opened(read, wall=fake.wall, monotonic=fake.monotonic)
        fake.advance(30.0)
        fake.jump(-600.0)  # this machine's wall clock: no matter
        assert abs(clock() - (database[0] + fake.monotonic())) < 1e-6
        database[0] += 120.0  # the database's clock is stepped: every process follows it
        with caplog.at_level(logging.WARNING, logger="dispatchlet.scheduler"):
            await clock.sync()
        assert abs(clock() - (database[0] + fake.monotonic())) < 1e-6
        assert any(
            "the database's clock jumped forward by 120.0 s" in r.getMessage()
            for r in caplog.records
        )

    asyncio.run(body())


def test_a_store_without_a_clock_of_its_own_gets_the_steady_clock(tmp_path: Path) -> None:
    async def body() -> None:
        for store in (await MemoryStore.open(), await SQLiteStore.open(tmp_path / "s.db")):
            clock = await clock_for(store)
            assert isinstance(clock, SteadyClock)
            await clock.close()
            await store.close()

    asyncio.run(body())


@pytest.mark.slow
def test_postgres_processes_keep_the_databases_time(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler process on PostgreSQL whose wall clock is 90 s ahead keeps the
    database's time."""
    from dispatchlet.scheduler.store.postgres import PostgresStore

    url = fresh_database(request.getfixturevalue("postgres_server"))

    async def body() -> None:
        store = await PostgresStore.open(url)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 90.0)
        try:
            clock = await clock_for(store)
            try:
                assert isinstance(clock, DatabaseClock)
                before = await store.database_time()
                now = clock()
                after = await store.database_time()
                # Within the round trips (bounded generously), not 90 s off.
                assert before - 5.0 <= now <= after + 5.0, (before, now, after)
            finally:
                await clock.close()
        finally:
            monkeypatch.setattr(time, "time", real)
            await store.close()

    asyncio.run(body())


def test_a_restart_with_the_wall_clock_set_back_starts_from_the_times_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The wall clock set back 600 s between two processes on one SQLite database: the
    second one's clock starts from the first one's latest time, so that the calls ready
    then are claimed at once, and the lease the first one took is still in force."""
    from test_store_contract import call

    path = tmp_path / "s.db"

    async def process(wall: float, work: Callable[[SQLiteStore, Clock], Awaitable[None]]) -> None:
        store = await SQLiteStore.open(path)
        clock = await clock_for(store, wall=lambda: wall)
        try:
            await work(store, clock)
        finally:
            await clock.close()
            await store.close()

    ids: list[str] = []
    claimed: list[str] = []

    async def first(store: SQLiteStore, clock: Clock) -> None:
        ids.extend(await store.dispatch([call("held"), call("a"), call("b")], now=clock()))
        (held,) = await store.claim(owner="first", now=clock(), limit=1, lease_seconds=30)
        assert held.call.dispatch_id == ids[0]
        ids.extend(await store.dispatch([call("c")], now=clock()))

    async def second(store: SQLiteStore, clock: Clock) -> None:
        assert clock() > START
        got = await store.claim(owner="second", now=clock(), limit=10, lease_seconds=30)
        claimed.extend(c.call.dispatch_id for c in got)

    asyncio.run(process(START, first))
    with caplog.at_level(logging.WARNING, logger="dispatchlet.scheduler"):
        asyncio.run(process(START - 600, second))
    assert claimed == ids[1:], "the ready calls at once, not the one leased"
    (logged,) = [
        r.getMessage() for r in caplog.records if "behind the latest time" in r.getMessage()
    ]
    # 600 s, and up to the second within which the latest time is recorded.
    assert re.match(r"the wall clock is 60[01]\.\d s behind the latest time", logged), logged
