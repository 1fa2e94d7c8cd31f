"""Retention: the finished call trees older than the window are deleted in the
background by the clock the scheduler keeps; ``Purge`` (the client's ``purge``,
``dispatchlet calls purge``) deletes them on demand; and under a steady load with a
short window the SQLite file stays the same size (its freed pages are reused).

The store's side (which trees go, in which batches, with their request ids and keys)
is in the store contract suite (``test_store_contract.py``), on every store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.client import ClientError
from dispatchlet.core.errors import ConfigurationError
from dispatchlet.core.keys import private_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from dispatchlet.scheduler.metrics import Metrics
from dispatchlet.scheduler.retention import Retention
from dispatchlet.scheduler.settings import DEFAULT_RETENTION, Settings, parse_duration
from dispatchlet.scheduler.store import NewCall, Store
from dispatchlet.scheduler.store.memory import MemoryStore
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from prometheus_client.parser import text_string_to_metric_families
from test_scheduler_processes import Process, environment
from test_scheduler_soak import endpoint

API_KEY = "retention-key"
WAIT = 60.0
OK, PERMANENT_ERROR = 1, 7
T0 = 1_800_000_000.0
HOUR = 3600.0


def test_durations_are_read_with_their_units() -> None:
    assert [parse_duration(t) for t in ("7d", "12h", "30m", "90s", "90", "2.5", "0")] == [
        7 * 86400,
        12 * 3600,
        30 * 60,
        90,
        90,
        2.5,
        0,
    ]
    for wrong in ("", "-1", "5w", "nan", "inf", "d", "1 d", "1e3"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(wrong)


def test_the_retention_comes_from_the_environment_unless_given() -> None:
    env = {"DISPATCHLET_RETENTION": "12h"}
    assert Settings.from_env({}, database="x.db").retention == DEFAULT_RETENTION
    assert Settings.from_env(env, database="x.db").retention == 12 * HOUR
    assert Settings.from_env(env, database="x.db", retention=0).retention == 0
    with pytest.raises(ConfigurationError, match="DISPATCHLET_RETENTION"):
        Settings.from_env({"DISPATCHLET_RETENTION": "a week"}, database="x.db")


class MovedClock:
    """The scheduler's clock, moved forward by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def wall_skew(self) -> float:
        return 0.0

    async def close(self) -> None:
        pass


async def finished_roots(store: Store, count: int, *, at: float, children: int = 0) -> list[str]:
    """``count`` roots (each with ``children`` children) all finished OK at ``at``."""
    calls = NewCall("f", "http://127.0.0.1:1", b"", expires_at=at + 100 * HOUR)
    roots = await store.dispatch([calls] * count, now=at)
    for root in roots:
        below = [NewCall("f", calls.endpoint, b"", at + HOUR, parent_id=root, root_id=root)]
        await store.dispatch(below * children, now=at)
    claimed = await store.claim(owner="t", now=at, limit=1000, lease_seconds=HOUR)
    # The children first: a root's finish would end them otherwise.
    for claim in sorted(claimed, key=lambda c: c.call.parent_id is None):
        assert await store.finish(claim.lease, OK, b"", now=at)
    return roots


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, f"{what} not within {WAIT} s"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_background_deletion_takes_the_trees_past_the_window_as_time_moves(
    kind: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        store: Store = (
            await MemoryStore.open()
            if kind == "memory"
            else await SQLiteStore.open(tmp_path / "calls.db")
        )
        clock = MovedClock(T0)
        metrics = Metrics()
        retention = Retention(
            store,
            clock,
            24 * HOUR,
            limit=3,
            pause=0.0,
            interval=0.01,
            counted=metrics.retention_deleted.inc,
        )
        task = asyncio.create_task(retention.run())
        try:
            old = await finished_roots(store, 4, at=T0, children=2)
            young = await finished_roots(store, 2, at=T0 + 12 * HOUR)
            # Within the window: nothing goes, however often it looks.
            clock.now = T0 + 23 * HOUR
            await asyncio.sleep(0.2)
            assert retention.deleted == 0
            # A day after the first finished: those (12 calls) go, in batches of three.
            clock.now = T0 + 25 * HOUR

            async def old_gone() -> bool:
                return retention.deleted == 12

            await eventually(old_gone, "the old trees deleted")
            assert [await store.get(root) for root in old] == [None] * 4
            assert await store.list(root_id=old[0]) == []
            assert all([await store.get(root) is not None for root in young])
            # And the young ones once they are a day old too.
            clock.now = T0 + 37 * HOUR

            async def all_gone() -> bool:
                return retention.deleted == 14

            await eventually(all_gone, "the young trees deleted")
            assert await store.list() == []
            # Counted for /metrics.
            deleted = metrics.registry.get_sample_value("dispatchlet_retention_deleted_calls_total")
            assert deleted == 14
        finally:
            retention.stop()
            await task
            await store.close()

    asyncio.run(scenario())


def test_a_zero_window_deletes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await MemoryStore.open()
        (root,) = await finished_roots(store, 1, at=T0)
        retention = Retention(store, MovedClock(T0 + 1000 * HOUR), 0, interval=0.01)
        await asyncio.wait_for(retention.run(), WAIT)  # returns at once: nothing to do
        assert await store.get(root) is not None

    asyncio.run(scenario())


# --- on demand, and under a steady load: a real scheduler process ----------------------


@pytest.fixture
def scheduler(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """A scheduler process on a SQLite file (its options the test's parameter); its URL
    and the file."""
    options: list[str] = request.param
    key = Ed25519PrivateKey.generate()
    database = tmp_path / "calls.db"
    command = [sys.executable, "-m", "dispatchlet", "scheduler", "--port", "0"]
    command += ["--db", str(database), "--log-level", "warning", *options]
    env = environment(DISPATCH_API_KEY=API_KEY, DISPATCH_SIGNING_KEY=private_key_base64(key))
    process = Process(command, env, tmp_path)
    try:
        yield process.wait_for(r"listening at (http://\S+)").group(1), database
    finally:
        process.stop()


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = environment(DISPATCH_API_URL=url, DISPATCH_API_KEY=API_KEY)
    return subprocess.run(
        [sys.executable, "-m", "dispatchlet", "calls", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [["--max-attempts", "1"]], indirect=True)
def test_purge_deletes_the_finished_trees_on_demand(
    scheduler: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = scheduler
    with endpoint(tmp_path) as endpoint_url, Client(url, API_KEY, timeout=WAIT) as client:
        ok = client.dispatch([call_pb2.Call(function="soak", endpoint=endpoint_url)] * 3)
        # Nothing listens there: one attempt, failed.
        (failed,) = client.dispatch([call_pb2.Call(function="f", endpoint="http://127.0.0.1:9")])
        for dispatch_id in (*ok, failed):
            assert client.wait(dispatch_id, timeout=WAIT).state == "done"

        # They finished seconds ago, not an hour ago.
        kept = cli(url, "purge", "--older-than", "1h")
        assert (kept.returncode, kept.stdout) == (0, "deleted 0 call(s)\n"), kept.stderr
        failing = cli(url, "purge", "--older-than", "0", "--status", "failed")
        assert (failing.returncode, failing.stdout) == (0, "deleted 1 call(s)\n"), failing.stderr
        with pytest.raises(ClientError) as gone:
            client.get(failed)
        assert gone.value.code == "not_found"
        assert client.get(ok[0]).state == "done"
        assert client.purge(0, status="OK") == 3
        assert list(client.list()) == []
        assert client.purge(0) == 0
        # Counted for /metrics.
        scrape = urllib.request.Request(
            f"{url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        with urllib.request.urlopen(scrape, timeout=WAIT) as answer:
            families = text_string_to_metric_families(answer.read().decode())
        deleted = {
            sample.name: sample.value
            for family in families
            for sample in family.samples
            if sample.name == "dispatchlet_retention_deleted_calls_total"
        }
        assert deleted == {"dispatchlet_retention_deleted_calls_total": 4}

        # Bad input: argparse's error, no request.
        for wrong in (["--older-than", "5w"], ["--older-than", "1d", "--status", "nope"], []):
            refused = cli(url, "purge", *wrong)
            assert refused.returncode == 2, refused
            assert "Traceback" not in refused.stderr
        with pytest.raises(ClientError, match="invalid status") as invalid:
            client.purge(0, status="nope")
        assert invalid.value.code == "invalid_argument"


SOAK_CALLS = int(os.environ.get("RETENTION_SOAK_CALLS", "10000"))
BATCH = 1000
SOAK_BOUND = 16 * 1024 * 1024
"""The largest the database (its file and its WAL) may grow while ``SOAK_CALLS`` calls run
with a 2 s retention: 6.5 to 7.1 MB measured for 100,000 calls (in 2 to 8 minutes on 2
loaded cores), which kept would take 40 MB."""


def database_size(database: Path) -> int:
    return sum(
        path.stat().st_size
        for path in (database, database.with_name(database.name + "-wal"))
        if path.exists()
    )


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [["--retention", "2s"]], indirect=True)
def test_the_database_stays_the_same_size_under_a_steady_load(
    scheduler: tuple[str, Path], tmp_path: Path
) -> None:
    url, database = scheduler
    sizes: list[int] = []
    started = time.monotonic()
    with endpoint(tmp_path) as endpoint_url, Client(url, API_KEY, timeout=WAIT) as client:
        call = call_pb2.Call(function="soak", endpoint=endpoint_url)
        for _ in range(0, SOAK_CALLS, BATCH):
            ids = client.dispatch([call] * BATCH)
            # A steady load: the batch (nearly all of it, claimed oldest first) done
            # before the next one.
            assert client.wait(ids[-1], timeout=WAIT).state == "done"
            sizes.append(database_size(database))
        # Then everything goes, 2 s after it finished.
        deadline = time.monotonic() + WAIT
        while list(client.list(page_size=1)):
            assert time.monotonic() < deadline, "calls left past the retention"
            time.sleep(0.2)
    took = time.monotonic() - started
    print(
        f"{SOAK_CALLS} calls in {took:.0f} s; database size (MB) after each tenth: "
        + ", ".join(f"{sizes[i] / 2**20:.1f}" for i in range(0, len(sizes), len(sizes) // 10 or 1))
        + f"; largest {max(sizes) / 2**20:.1f}"
    )
    assert max(sizes) <= SOAK_BOUND, sizes
