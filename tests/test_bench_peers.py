"""The side-by-side benchmarks' own logic: the table of figures and ratios, and the
fsyncs read from strace's summary (the benches themselves run the peers, which the test
extras do not install)."""

from __future__ import annotations

from pathlib import Path

from support import load_script

ROOT = Path(__file__).resolve().parent.parent
peers = load_script("bench_peers", ROOT / "bench" / "peers" / "__init__.py")


def test_each_peer_row_shows_dispatchlets_ratio_against_its_own_dispatchlet_row() -> None:
    rows = [
        peers.Row("dispatchlet, SQLite", {"rate": 300.0, "p50": 20.0}),
        peers.Row("DBOS, SQLite", {"rate": 100.0, "p50": 8.0}, "dispatchlet, SQLite"),
        peers.Row("dispatchlet, PostgreSQL", {"rate": 50.0}),
        peers.Row("DBOS, PostgreSQL", {"rate": 200.0, "p50": 10.0}, "dispatchlet, PostgreSQL"),
    ]
    lines = peers.table("Workflows", [("rate", "wf/s"), ("p50", "p50 ms")], rows).splitlines()
    assert lines[0] == "Workflows"
    by_label = {line.split("  ")[0]: line for line in lines[2:6]}
    assert by_label.keys() == {row.label for row in rows}
    # dispatchlet's figure over the peer's, on the same store.
    assert by_label["DBOS, SQLite"].split()[2:] == ["100.0", "(3.00x)", "8.0", "(2.50x)"]
    assert by_label["DBOS, PostgreSQL"].split()[2:] == ["200.0", "(0.25x)", "10.0"]
    # A figure dispatchlet's row lacks is shown as such, with no ratio.
    assert by_label["dispatchlet, PostgreSQL"].split()[2:] == ["50.0", "-"]
    assert "DBOS, SQLite: against dispatchlet, SQLite" in lines[-1]


def test_fsyncs_are_read_from_straces_summary_with_or_without_errors() -> None:
    summary = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 71.20    0.004531          15       301           fdatasync
 28.80    0.001833          19        96         2 fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.006364          16       397         2 total
"""
    assert peers.summary_calls(summary) == {"fdatasync": 301, "fsync": 96}
    assert peers.summary_calls("") == {}


def test_the_ceilings_store_claims_the_oldest_ready_calls_in_turn() -> None:
    """bench/no_database.py's store, which the ceiling row's figures rest on: its claims
    take the ready calls in the order they came, within the room given, and a released
    call comes first again."""
    import asyncio
    import time

    from dispatchlet.scheduler.store import NewCall

    bench = load_script("bench_no_database", ROOT / "bench" / "no_database.py")

    async def go() -> None:
        store = bench.QueueStore()
        now = time.time()
        calls = [NewCall(f"f{n}", "http://127.0.0.1:1", b"", now + 60) for n in range(5)]
        ids = await store.dispatch(calls, now=now)
        first = await store.claim(owner="o", now=now, limit=2, lease_seconds=60)
        assert [c.call.dispatch_id for c in first] == ids[:2]
        assert await store.release(first[1].lease, ready_at=now)
        room = {"http://127.0.0.1:1": 2}
        again = await store.claim(
            owner="o", now=now, limit=5, lease_seconds=60, room=lambda d: room[d]
        )
        assert [c.call.dispatch_id for c in again] == [ids[1], ids[2]]
        assert await store.finish(again[0].lease, 1, b"", now=now)
        rest = await store.claim(owner="o", now=now, limit=5, lease_seconds=60)
        assert [c.call.dispatch_id for c in rest] == ids[3:]
        assert await store.claim(owner="o", now=now, limit=5, lease_seconds=60) == []

    asyncio.run(go())
