"""What one claim costs as the backlog of ready calls grows, against the same claim with
a backlog of 1,000 (the baseline, measured in the same run), in each store.

    python bench/claims.py [--backlogs 10000,100000] [--claims 10]
    python bench/claims.py --database-url postgresql://user@host/scratch

For each backlog: that many calls dispatched (in batches of 1,000), either each its own
root (independent calls) or all children of one root (one large fan-out), then
``--claims`` claims of 64, each timed; the store is fresh for each backlog. SQLite: a
file in a temporary folder. PostgreSQL: the database the URL names, which the bench
empties (``TRUNCATE dispatchlet_calls``) before each backlog and then ANALYZEs, as
autovacuum does soon after a burst: a scratch database, not one in use.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from dispatchlet.scheduler.server import open_store
from dispatchlet.scheduler.store import NewCall, Store

LIMIT = 64


async def fill(store: Store, backlog: int, shape: str) -> None:
    now = time.time()
    parent = root = None
    if shape == "fan-out":
        (parent,) = await store.dispatch(
            [NewCall("f", "http://h0", b"", expires_at=now + 86400)], now=now
        )
        root = parent
    batch = [
        NewCall("f", f"http://h{n % 4}", b"", now + 86400, parent_id=parent, root_id=root)
        for n in range(1000)
    ]
    for _ in range(backlog // 1000):
        await store.dispatch(batch, now=now)


async def claims(target: str, backlog: int, shape: str, count: int) -> float:
    """The median milliseconds of ``count`` claims of LIMIT with ``backlog`` ready."""
    store = await open_store(target)
    try:
        await fill(store, backlog, shape)
        if target.startswith("postgres"):
            analyze(target)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            claimed = await store.claim(
                owner="bench", now=time.time(), limit=LIMIT, lease_seconds=60
            )
            times.append((time.perf_counter() - started) * 1000)
            assert len(claimed) == LIMIT
        return statistics.median(times)
    finally:
        await store.close()


def analyze(url: str, *, empty: bool = False) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        exists = db.execute("SELECT to_regclass('dispatchlet_calls')").fetchone()
        if exists is not None and exists[0] is not None:
            db.execute(
                "TRUNCATE dispatchlet_calls CASCADE" if empty else "ANALYZE dispatchlet_calls"
            )


def target_for(database_url: str | None, folder: Path, name: str) -> str:
    if database_url is None:
        return str(folder / f"{name}.db")
    analyze(database_url, empty=True)
    return database_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlogs", default="10000,100000")
    parser.add_argument("--claims", type=int, default=10)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    backlogs = [int(b) for b in args.backlogs.split(",")]
    assert all(b >= 1000 and b // 1000 * 1000 > args.claims * LIMIT for b in backlogs), (
        "each backlog: a multiple of 1,000, more than --claims x 64"
    )
    store = "PostgreSQL" if args.database_url else "SQLite"
    with tempfile.TemporaryDirectory() as folder:
        for shape in ("independent", "fan-out"):
            baseline = None
            for backlog in [1000, *backlogs]:
                target = target_for(args.database_url, Path(folder), f"{shape}-{backlog}")
                ms = asyncio.run(claims(target, backlog, shape, args.claims))
                if baseline is None:
                    baseline = ms  # the first run at 1,000 is the baseline
                    continue
                print(
                    f"{store} {shape:>11} backlog {backlog:>7}: {ms:6.1f} ms per claim of "
                    f"{LIMIT}, x{ms / baseline:.2f} the baseline ({baseline:.1f} ms at 1,000)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
