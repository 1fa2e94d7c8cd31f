"""Background calls side by side with the queues that do the same no-op work, fsync on:
on SQLite, dispatchlet against Huey and DBOS Transact; on PostgreSQL, dispatchlet with 1
and 3 scheduler processes against pgqueuer and procrastinate, and the endpoint floor.

    pip install -e '.[bench]'
    python bench/peers_calls.py [--calls 5000] [--singles 200] [--quick]
        [--only sqlite|postgres] [--database-url URL] [--no-fsyncs]

Each system is started by the bench on loopback (free ports) and stopped at the end.

SQLite: dispatchlet and Huey as bench/scheduler.py runs them (`dispatchlet scheduler`
calling `dispatchlet serve` with 8 threads; a `huey_consumer` with 8 threads). DBOS: a
process of its own with a queue of worker concurrency 8 polled every millisecond (Huey's
``-d 0.001``), its workflows (a no-op, no step) enqueued by this process with
`DBOSClient` one at a time, as Huey's are; the results polled every millisecond.

- throughput: ``--calls`` calls started (dispatchlet: in batches of 100), timed until
  the caller holds every result (dispatchlet: ``Client.wait_all``; Huey and DBOS: each
  handle's result); calls/s;
- start p50: ``--singles`` calls one at a time, dispatch to the function's first line.

PostgreSQL: the server at ``--database-url`` (a database made for each run, dropped
after), else a throwaway one made as the tests make theirs, with fsync on. dispatchlet,
pgqueuer and the endpoint floor as bench/scheduler.py runs them (dispatchlet with
``--max-per-destination`` ``--cap``, and once more in one process with no cap, its
default); procrastinate: a worker
process (concurrency 8, the same as the endpoint's threads) of a no-op task, the jobs
deferred in batches of 100. Timed from the first dispatch to the queue empty. The
ceiling rows: dispatchlet's scheduler with no database at all (``no_database.py``: its
calls in memory, claimed from the head of a queue), timed as on SQLite: what one process
reaches when the store costs next to nothing.

fsyncs per call: where strace is installed, each system runs ``--fsync-calls`` calls
again (not timed) with `strace -f -c -e trace=fsync,fdatasync` attached to every process
it started (and on SQLite to this process when it writes the queue, as Huey's and DBOS's
clients do; on PostgreSQL to every process of the server): the fsync and fdatasync calls
counted during the calls, divided by their number.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import peers
from peers import FsyncCounter, Row, report, shared

DBOS_APP = """
import os, signal, time

from dbos import DBOS

DBOS(config={"name": "bench", "system_database_url": os.environ["BENCH_DBOS_URL"],
              "log_level": "WARNING"})
STARTS = os.environ["BENCH_STARTS"]


@DBOS.workflow(name="noop")
def noop(n: int) -> int:
    if n < 0:  # a latency probe: say when it started
        with open(STARTS, "a") as log:
            log.write(f"{-n} {time.time()}\\n")
    return n


if __name__ == "__main__":
    DBOS.launch()
    DBOS.register_queue("bench", worker_concurrency=8, polling_interval_sec=0.001)
    print("consuming", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    DBOS.destroy()
"""

PROCRASTINATE_APP = """
import os, sys

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_DSN"]))


@app.task(name="noop")
def noop(n: int) -> int:
    return n


if __name__ == "__main__":
    with app.open():
        if sys.argv[1:] == ["schema"]:
            app.schema_manager.apply_schema()
        else:
            print("consuming", flush=True)
            app.run_worker(concurrency=8, install_signal_handlers=True)
"""


def dbos_run(
    folder: Path, url: str, calls: int, singles: int, measured: Any = shared.unmeasured
) -> dict[str, float]:
    """DBOS Transact's throughput and latency on the system database at ``url``."""
    # Installed by the bench extra only.
    from dbos import DBOSClient  # type: ignore[import-not-found, unused-ignore]

    (folder / "bench_dbos.py").write_text(DBOS_APP)
    starts_log = folder / "starts-dbos.log"
    env = {**os.environ, "BENCH_DBOS_URL": url, "BENCH_STARTS": str(starts_log)}
    worker = [sys.executable, str(folder / "bench_dbos.py")]
    options: Any = {"workflow_name": "noop", "queue_name": "bench"}
    results: dict[str, float] = {}
    pids: list[int] = []
    with shared.process(worker, env, folder, r"consuming", pids):
        client = DBOSClient(system_database_url=url)
        try:

            def run(n: int) -> Any:
                return client.enqueue(options, n)

            run(0).get_result(polling_interval_sec=0.001)  # warm up
            with measured([*pids, os.getpid()]):
                began = time.perf_counter()
                handles = [run(n) for n in range(calls)]
                for handle in handles:
                    handle.get_result(polling_interval_sec=0.001)
                results["throughput"] = calls / (time.perf_counter() - began)
            to_start, to_final = [], []
            for n in range(1, singles + 1):
                sent = time.time()
                run(-n).get_result(polling_interval_sec=0.001)
                to_final.append(time.time() - sent)
                to_start.append(shared.starts(starts_log)[n] - sent)
            if singles:
                results |= shared.latency(to_start, to_final)
        finally:
            client.destroy()
    return results


def procrastinate_run(
    folder: Path,
    url: str,
    processes: int,
    calls: int,
    cap: int,
    measured: Any = shared.unmeasured,
) -> float:
    """Jobs per second with ``processes`` procrastinate workers on the database at ``url``."""
    del cap  # its jobs run in its own processes: no endpoint to protect
    from procrastinate import (  # type: ignore[import-not-found, unused-ignore]
        App,
        PsycopgConnector,
    )

    (folder / "bench_proc.py").write_text(PROCRASTINATE_APP)
    env = {**os.environ, "BENCH_DSN": url}
    worker = [sys.executable, str(folder / "bench_proc.py")]
    subprocess.run([*worker, "schema"], env=env, check=True, capture_output=True)
    # This process only defers by name: its app needs none of the tasks that the warning
    # of an app made in a __main__ module is about.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app = App(connector=PsycopgConnector(conninfo=url))
    with ExitStack() as stack:
        pids: list[int] = []
        for number in range(processes):
            log_folder = folder / f"w{number}"
            log_folder.mkdir()
            stack.enter_context(shared.process(worker, env, log_folder, r"consuming", pids))
        stack.enter_context(app.open())
        time.sleep(1.0)  # the workers start listening
        noop: Any = app.configure_task("noop")
        with measured(pids):
            began = time.perf_counter()
            for first in range(0, calls, shared.BATCH):
                noop.batch_defer(
                    *({"n": n} for n in range(first, min(calls, first + shared.BATCH)))
                )
            query = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            shared.wait_until_empty(url, query, folder)
            return calls / (time.perf_counter() - began)


def sqlite_rows(folder: Path, calls: int, singles: int, fsync_calls: int) -> list[Row]:
    def sqlite_url(name: str) -> str:
        return f"sqlite:///{folder / name}"

    figures: dict[str, dict[str, float]] = {}
    runs = {
        "dispatchlet": lambda here, n, s, m: shared.dispatchlet_run(here, n, s, 0, (), m),
        "Huey": shared.huey_run,
        "DBOS": lambda here, n, s, m: dbos_run(here, sqlite_url(f"{here.name}.db"), n, s, m),
    }
    for name, run in runs.items():
        here = folder / name
        here.mkdir()
        print(f"SQLite: {name}, {calls} calls and {singles} one at a time", flush=True)
        figures[name] = run(here, calls, singles, shared.unmeasured)
        if fsync_calls:
            counter = FsyncCounter(folder / f"{name}-fsyncs")
            here = folder / f"{name}-counted"
            here.mkdir()
            run(here, fsync_calls, 0, counter)
            figures[name]["fsyncs per call"] = counter.last / fsync_calls
    return [
        Row(name, figures[name], None if name == "dispatchlet" else "dispatchlet") for name in runs
    ]


def uncapped_run(
    folder: Path,
    url: str,
    processes: int,
    calls: int,
    cap: int,
    measured: Any = shared.unmeasured,
) -> float:
    """dispatchlet's run with no ``--max-per-destination`` (the default): the process's
    own adaptive limit bounds its calls in flight, and the calls a Dispatch brings are
    leased in its transaction when it has room (a cap, which holds across processes,
    leaves every call to the claims)."""
    del cap
    return float(
        shared.dispatchlet_postgres_run(folder, url, processes, calls, None, measured=measured)
    )


def no_database_run(
    folder: Path,
    url: str,
    processes: int,
    calls: int,
    cap: int | None,
    measured: Any = shared.unmeasured,
) -> float:
    """The ceiling: dispatchlet's scheduler (one process) with no database, its calls in
    memory and claimed from the head of a queue (``no_database.py``): what the scheduler
    and the endpoint reach when the store costs next to nothing."""
    del url, processes
    options = () if cap is None else ("--max-per-destination", str(cap))
    launcher = (str(Path(__file__).resolve().with_name("no_database.py")),)
    figures = shared.dispatchlet_run(folder, calls, 0, 0, options, measured, launcher)
    return float(figures["throughput"])


def uncapped_no_database_run(
    folder: Path,
    url: str,
    processes: int,
    calls: int,
    cap: int,
    measured: Any = shared.unmeasured,
) -> float:
    """``no_database_run`` with no cap: the process's own adaptive limit."""
    del cap
    return no_database_run(folder, url, processes, calls, None, measured)


def postgres_rows(folder: Path, server: str, calls: int, cap: int, fsync_calls: int) -> list[Row]:
    one, three = "dispatchlet, 1 process", "dispatchlet, 3 processes"
    ceiling = "no database (ceiling), 1 process"
    # Each: (run, processes); a run is called (folder, url, processes, calls, cap).
    runs = {
        one: (shared.dispatchlet_postgres_run, 1),
        "dispatchlet, 1 process, no cap": (uncapped_run, 1),
        three: (shared.dispatchlet_postgres_run, 3),
        ceiling: (no_database_run, 1),
        f"{ceiling}, no cap": (uncapped_no_database_run, 1),
        "pgqueuer": (shared.pgqueuer_run, 1),
        "procrastinate": (procrastinate_run, 1),
    }
    figures: dict[str, dict[str, float]] = {}
    for number, (name, (run, processes)) in enumerate(runs.items()):
        print(f"PostgreSQL: {name}, {calls} calls", flush=True)
        here = folder / f"pg{number}"
        here.mkdir()
        with shared.database(server, f"bench_peers_{number}") as url:
            figures[name] = {"throughput": run(here, url, processes, calls, cap)}
        if fsync_calls and not name.startswith(ceiling):  # nothing is written there
            here = folder / f"pg{number}-counted"
            here.mkdir()
            with shared.database(server, f"bench_peers_{number}_counted") as url:
                if peers.server_pids(url):  # a server on this machine
                    counter = FsyncCounter(here / "strace", url)
                    run(here, url, processes, fsync_calls, cap, measured=counter)
                    figures[name]["fsyncs per call"] = counter.last / fsync_calls
    print("PostgreSQL: the endpoint floor", flush=True)
    (folder / "floor").mkdir()
    floor = {"throughput": shared.endpoint_floor(folder / "floor", calls, cap)}
    rows = [Row(name, figures[name], None if name == one else one) for name in runs]
    return [*rows, Row("endpoint floor (no store)", floor, one)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--fsync-calls", type=int, default=500)
    parser.add_argument("--cap", type=int, default=32, help="PostgreSQL: --max-per-destination")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 calls, 10 singles")
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--database-url", help="a PostgreSQL server to use (CREATEDB)")
    parser.add_argument("--no-fsyncs", action="store_true", help="do not count fsyncs")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.singles, args.fsync_calls = 100, 10, 50
    fsync_calls = args.fsync_calls
    if args.no_fsyncs:
        fsync_calls = 0
    elif peers.strace() is None:
        print("strace is not installed: no fsyncs per call (Debian: apt-get install strace)")
        fsync_calls = 0
    # SIGTERM ends the run as Ctrl-C does: every process started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    columns = [("throughput", "calls/s"), ("start p50 ms", "start p50 ms")]
    columns.append(("fsyncs per call", "fsyncs/call"))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.only in (None, "sqlite"):
            (folder / "sqlite").mkdir()
            rows = sqlite_rows(folder / "sqlite", args.calls, args.singles, fsync_calls)
            report("Background calls, SQLite, no-op work", columns, rows)
        if args.only in (None, "postgres"):
            (folder / "postgres").mkdir()
            with peers.postgres(args.database_url) as server:
                rows = postgres_rows(folder / "postgres", server, args.calls, args.cap, fsync_calls)
            report(
                "Background calls, PostgreSQL, no-op work,"
                f" at most {args.cap} in flight (but with no cap)",
                [columns[0], columns[2]],
                rows,
            )


if __name__ == "__main__":
    main()
