"""Throughput and latency of the scheduler, side by side with Huey on its SQLite storage
running the same no-op work; with ``--database-url``, the throughput of 1, 2 and 3
scheduler processes on one PostgreSQL database, side by side with pgqueuer on the same
server.

    pip install huey
    python bench/scheduler.py [--calls 5000] [--singles 200] [--history 50000]

    pip install 'dispatchlet[postgres]' pgqueuer asyncpg
    python bench/scheduler.py --database-url postgresql://user@host/db [--calls 5000]

With ``--database-url``, each run gets a database of its own, made on that server and
dropped after (the user needs CREATEDB). dispatchlet: N `dispatchlet scheduler
--database-url` processes calling a no-op function served by `dispatchlet serve`
(waitress, 8 threads), with ``--max-per-destination`` ``--cap`` (32): without a cap each
process's adaptive limit grows on its own, and together they run into waitress's
connection limit (100), which queues connections instead of refusing them. The calls
are dispatched through the first process in batches of
100, and any process runs them. pgqueuer: N pgqueuer consumer processes
(``PgQueuer.run``, batch size 10) of a no-op entrypoint, the jobs enqueued in batches of
100. Timed from the first dispatch (or enqueue) to the last call final (the queue empty).
The endpoint floor: the same endpoint with no scheduler, sent the same calls ``--cap``
at a time by the scheduler's own HTTP caller (signed, no store): what the endpoint process
allows at best, so "of the floor" is how much of it the schedulers reach.

dispatchlet: `dispatchlet scheduler` (SQLite) calling a no-op function served by
`dispatchlet serve` (waitress, 8 threads), in processes of their own. Huey: a
`huey_consumer` with 8 worker threads on a SqliteHuey file, the task a no-op.

- throughput: ``--calls`` calls dispatched in batches of 100 (Huey has no batches: one
  enqueue each), timed from the first dispatch to the caller holding every result
  (dispatchlet: `Client.wait_all`; Huey: each result read from its store); calls/s;
- latency: ``--singles`` calls one at a time, p50 and p99 of dispatch-to-start (the
  function's first line) and dispatch-to-final (the caller has the result);
- the scheduler's throughput again with ``--history`` finished calls already in its
  database.

    python bench/scheduler.py --attempt-history-cost [--rounds 3] [--database-url URL]

What keeping each call's attempt history costs: the throughput of ``--calls`` calls with
``--attempt-history 0`` (none kept) and with the default (50), the two runs alternated
``--rounds`` times in the same invocation on the same machine (SQLite; with
``--database-url``, one scheduler process on PostgreSQL), the best of each reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2

API_KEY = "bench"
BATCH = 100

# A context entered around a run's timed part, given the ids of the processes the run
# started (bench/peers counts their fsyncs with it); by default, nothing.
Measured = Callable[[list[int]], AbstractContextManager[object]]


def unmeasured(pids: list[int]) -> AbstractContextManager[object]:
    return nullcontext()


ENDPOINT_APP = """
import os, time
from dispatchlet import Endpoint

endpoint = Endpoint()
STARTS = os.environ["BENCH_STARTS"]


@endpoint.function
def noop(n: int) -> int:
    if n < 0:  # a latency probe: say when it started
        with open(STARTS, "a") as log:
            log.write(f"{-n} {time.time()}\\n")
    return n
"""

HUEY_APP = """
import os, time
from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"])
STARTS = os.environ["BENCH_STARTS"]


@huey.task()
def noop(n):
    if n < 0:
        with open(STARTS, "a") as log:
            log.write(f"{-n} {time.time()}\\n")
    return n
"""


@contextmanager
def process(
    command: list[str], env: dict[str, str], cwd: Path, ready: str, pids: list[int] | None = None
) -> Iterator[str]:
    """A process started and stopped around the block; the first match of ``ready``.
    Its process id is added to ``pids``."""
    name = Path(command[2] if len(command) > 2 else command[0]).name
    if command[1:2] == ["-m"] and len(command) > 3:
        # ``python -m dispatchlet serve`` and ``... scheduler``: a log each, not one file
        # both write over (where the ready line of one could be read garbled).
        name += f"-{Path(command[3]).name}"
    log = cwd / f"{name}.log"
    with log.open("w") as out:
        child = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if pids is not None:
        pids.append(child.pid)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(ready, log.read_text())
            if match:
                yield match.group(1) if match.groups() else ""
                break
            if child.poll() is not None:
                raise SystemExit(f"{command} exited:\n{log.read_text()}")
            time.sleep(0.05)
        else:
            raise SystemExit(f"{command} did not start:\n{log.read_text()}")
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()


def cpu_seconds(pids: list[int]) -> float:
    """The CPU time (user and system) the processes ``pids`` used so far (Linux's
    /proc; 0 elsewhere): what a run costs the scheduler, which the other work of a
    shared machine slows but does not add to."""
    total = 0.0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists():
            fields = stat.read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def starts(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    return {int(n): float(t) for n, t in (line.split() for line in path.read_text().splitlines())}


def dispatchlet_run(
    folder: Path,
    calls: int,
    singles: int,
    history: int,
    options: Sequence[str] = (),
    measured: Measured = unmeasured,
    launcher: Sequence[str] = ("-m", "dispatchlet"),
) -> dict[str, float]:
    """dispatchlet's figures on SQLite (``launcher``: how Python starts ``dispatchlet``,
    e.g. ``no_database.py``'s scheduler)."""
    key = Ed25519PrivateKey.generate()
    starts_log = folder / "starts-dispatchlet.log"
    (folder / "app.py").write_text(ENDPOINT_APP)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
    endpoint_env = {
        **base,
        "DISPATCH_VERIFICATION_KEY": public_key_base64(key.public_key()),
        "BENCH_STARTS": str(starts_log),
        "PYTHONUNBUFFERED": "1",
    }
    scheduler_env = {
        **base,
        "DISPATCH_SIGNING_KEY": private_key_base64(key),
        "DISPATCH_API_KEY": API_KEY,
        "PYTHONUNBUFFERED": "1",
    }
    database = folder / "scheduler.db"
    if history:
        prefill(database, history)
    serve = [
        sys.executable,
        "-m",
        "dispatchlet",
        "serve",
        "app.py",
        "--port",
        "0",
        "--threads",
        "8",
    ]
    scheduler = [
        sys.executable,
        *launcher,
        "scheduler",
        "--db",
        str(database),
        "--port",
        "0",
        *options,
    ]
    results: dict[str, float] = {}
    pids: list[int] = []
    endpoint_pids: list[int] = []
    with (
        process(
            serve, endpoint_env, folder, r"serving \S+ at (http://\S+)", endpoint_pids
        ) as endpoint,
        process(scheduler, scheduler_env, folder, r"listening at (http://\S+)", pids) as url,
        Client(url, API_KEY) as client,
    ):

        def call(n: int) -> call_pb2.Call:
            built = call_pb2.Call(function="noop", endpoint=endpoint)
            built.input.CopyFrom(values.to_any(n))
            return built

        client.wait(client.dispatch([call(0)])[0])  # warm both up
        used = cpu_seconds(pids)
        with measured([*endpoint_pids, *pids]):
            began = time.perf_counter()
            ids: list[str] = []
            for first in range(0, calls, BATCH):
                ids += client.dispatch([call(n) for n in range(first, min(calls, first + BATCH))])
            client.wait_all(ids)  # the results, 1,000 calls a request
            results["throughput"] = calls / (time.perf_counter() - began)
        results["scheduler cpu us"] = (cpu_seconds(pids) - used) / calls * 1e6
        if singles:
            to_start, to_final = [], []
            for n in range(1, singles + 1):
                sent = time.time()
                (dispatch_id,) = client.dispatch([call(-n)])
                client.wait(dispatch_id)
                to_final.append(time.time() - sent)
                to_start.append(starts(starts_log)[n] - sent)
            results |= latency(to_start, to_final)
    return results


def prefill(database: Path, count: int) -> None:
    """``count`` finished calls in the scheduler's database, as a long history leaves."""
    import asyncio

    from dispatchlet.scheduler.store import NewCall
    from dispatchlet.scheduler.store.sqlite import SQLiteStore

    async def fill() -> None:
        store = await SQLiteStore.open(database)
        try:
            batch = [NewCall("noop", "http://127.0.0.1:1", b"", time.time() + 3600)] * 1000
            for _ in range(count // 1000):
                await store.dispatch(batch, now=time.time())
        finally:
            await store.close()

    asyncio.run(fill())
    db = sqlite3.connect(database)
    with db:
        db.execute("UPDATE calls SET state = 'done', status = 1, finished_at = ready_at")
    db.close()


def huey_run(
    folder: Path, calls: int, singles: int, measured: Measured = unmeasured
) -> dict[str, float]:
    (folder / "bench_huey.py").write_text(HUEY_APP)
    starts_log = folder / "starts-huey.log"
    env = {
        **os.environ,
        "BENCH_HUEY_DB": str(folder / "huey.db"),
        "BENCH_STARTS": str(starts_log),
        "PYTHONPATH": str(folder),
    }
    os.environ.update({k: env[k] for k in ("BENCH_HUEY_DB", "BENCH_STARTS")})
    sys.path.insert(0, str(folder))
    sys.modules.pop("bench_huey", None)  # a run before this one's, on its own file
    import bench_huey  # type: ignore[import-not-found]

    consumer = [
        sys.executable,
        "-m",
        "huey.bin.huey_consumer",
        "bench_huey.huey",
        "-w",
        "8",
        "-k",
        "thread",
        "-d",
        "0.001",
    ]
    results: dict[str, float] = {}
    pids: list[int] = []
    with process(consumer, env, folder, r"(\d+) worker|Huey consumer started", pids):
        bench_huey.noop(0).get(blocking=True, timeout=30)
        # This process enqueues, so it writes to Huey's database too.
        with measured([*pids, os.getpid()]):
            began = time.perf_counter()
            pending = [bench_huey.noop(n) for n in range(calls)]
            for result in pending:
                result.get(blocking=True, timeout=300, backoff=1.0, max_delay=0.01)
            results["throughput"] = calls / (time.perf_counter() - began)
        to_start, to_final = [], []
        for n in range(1, singles + 1):
            sent = time.time()
            bench_huey.noop(-n).get(blocking=True, timeout=30, backoff=1.0, max_delay=0.001)
            to_final.append(time.time() - sent)
            to_start.append(starts(starts_log)[n] - sent)
        if singles:
            results |= latency(to_start, to_final)
    return results


def latency(to_start: list[float], to_final: list[float]) -> dict[str, float]:
    return {
        "start p50 ms": percentile(to_start, 0.5) * 1000,
        "start p99 ms": percentile(to_start, 0.99) * 1000,
        "final p50 ms": percentile(to_final, 0.5) * 1000,
        "final p99 ms": percentile(to_final, 0.99) * 1000,
    }


PGQUEUER_APP = """
import os

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job


async def main() -> PgQueuer:
    connection = await asyncpg.connect(os.environ["BENCH_DSN"])
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    return pgq


if __name__ == "__main__":
    # As `pgqueuer run bench_pgq:main --batch-size 10` would (its CLI fails to set up its
    # logging in pgqueuer 1.6.0).
    import asyncio

    async def consume() -> None:
        pgq = await main()
        print("consuming", flush=True)
        await pgq.run(batch_size=10)

    asyncio.run(consume())
"""


@contextmanager
def database(server: str, name: str) -> Iterator[str]:
    """A new database on ``server``'s PostgreSQL, dropped after the block; its URL."""
    import psycopg

    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = server.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def endpoint_floor(folder: Path, calls: int, cap: int) -> float:
    """Calls per second of the same endpoint with no scheduler: the scheduler's own HTTP
    caller sends ``calls`` signed requests straight to it, ``cap`` at a time, no store.
    What the endpoint process allows at best; the scheduler's runs are bounded by it."""
    import asyncio

    from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
    from dispatchlet.scheduler.http_caller import HttpCaller

    key = Ed25519PrivateKey.generate()
    (folder / "app.py").write_text(ENDPOINT_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
    env["DISPATCH_VERIFICATION_KEY"] = public_key_base64(key.public_key())
    env["BENCH_STARTS"] = str(folder / "starts.log")
    serve = [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"]
    serve += ["--threads", "8"]

    async def send_all(endpoint: str) -> float:
        async with HttpCaller(key) as caller:
            gate = asyncio.Semaphore(cap)

            async def one(n: int) -> None:
                request = function_pb2.RunRequest(function="noop", dispatch_id=f"floor-{n}")
                request.input.CopyFrom(values.to_any(n))
                async with gate:
                    outcome = await caller.run(endpoint, request, timeout=60)
                assert outcome.response is not None, outcome

            await one(0)  # warm up
            began = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(calls)))
            return calls / (time.perf_counter() - began)

    with process(serve, env, folder, r"serving \S+ at (http://\S+)") as endpoint:
        return asyncio.run(send_all(endpoint))


def dispatchlet_postgres_run(
    folder: Path,
    url: str,
    processes: int,
    calls: int,
    cap: int | None,
    options: Sequence[str] = (),
    cpu: dict[str, float] | None = None,
    measured: Measured = unmeasured,
) -> float:
    """Calls per second with ``processes`` schedulers on the database at ``url``, at most
    ``cap`` calls in flight to the endpoint among them (None: no cap, each process's own
    adaptive limit) (in ``cpu``: the schedulers' CPU time per call, in microseconds)."""
    key = Ed25519PrivateKey.generate()
    (folder / "app.py").write_text(ENDPOINT_APP)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
    endpoint_env = {
        **base,
        "DISPATCH_VERIFICATION_KEY": public_key_base64(key.public_key()),
        "BENCH_STARTS": str(folder / "starts.log"),
    }
    scheduler_env = {
        **base,
        "DISPATCH_SIGNING_KEY": private_key_base64(key),
        "DISPATCH_API_KEY": API_KEY,
        "DISPATCHLET_DATABASE_URL": url,
    }
    serve = [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"]
    serve += ["--threads", "8"]
    scheduler = [sys.executable, "-m", "dispatchlet", "scheduler", "--port", "0"]
    if cap is not None:
        scheduler += ["--max-per-destination", str(cap)]
    scheduler += options
    with ExitStack() as stack:
        endpoint = stack.enter_context(
            process(serve, endpoint_env, folder, r"serving \S+ at (http://\S+)")
        )
        urls = []
        pids: list[int] = []
        for number in range(processes):
            log_folder = folder / f"s{number}"
            log_folder.mkdir()
            urls.append(
                stack.enter_context(
                    process(
                        scheduler, scheduler_env, log_folder, r"listening at (http://\S+)", pids
                    )
                )
            )
        client = stack.enter_context(Client(urls[0], API_KEY))

        def call(n: int) -> call_pb2.Call:
            built = call_pb2.Call(function="noop", endpoint=endpoint)
            built.input.CopyFrom(values.to_any(n))
            return built

        client.wait(client.dispatch([call(0)])[0])  # warm up
        used = cpu_seconds(pids)
        with measured(pids):
            began = time.perf_counter()
            for first in range(0, calls, BATCH):
                client.dispatch([call(n) for n in range(first, min(calls, first + BATCH))])
            # The unfinished calls: the partial index that holds only them is read.
            query = "SELECT count(*) FROM dispatchlet_calls WHERE finished_at IS NULL"
            wait_until_empty(url, query, folder)
            took = time.perf_counter() - began
        if cpu is not None:
            cpu["scheduler cpu us"] = (cpu_seconds(pids) - used) / calls * 1e6
        return calls / took


def pgqueuer_run(
    folder: Path,
    url: str,
    processes: int,
    calls: int,
    cap: int,
    measured: Measured = unmeasured,
) -> float:
    """Jobs per second with ``processes`` pgqueuer consumers on the database at ``url``."""
    del cap  # its jobs run in its own processes: no endpoint to protect
    import asyncio

    (folder / "bench_pgq.py").write_text(PGQUEUER_APP)
    env = {**os.environ, "BENCH_DSN": url, "PYTHONPATH": str(folder)}
    pgq = [sys.executable, "-m", "pgqueuer", "--pg-dsn", url]
    subprocess.run([*pgq, "install"], env=env, cwd=folder, check=True, capture_output=True)
    consumer = [sys.executable, str(folder / "bench_pgq.py")]

    async def enqueue() -> None:
        # Installed for this bench only (see the docstring).
        import asyncpg  # type: ignore[import-not-found, import-untyped, unused-ignore]
        from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found, unused-ignore]
        from pgqueuer.queries import Queries  # type: ignore[import-not-found, unused-ignore]

        connection = await asyncpg.connect(url)
        try:
            queries = Queries(AsyncpgDriver(connection))
            for first in range(0, calls, BATCH):
                size = min(BATCH, calls - first)
                await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        finally:
            await connection.close()

    with ExitStack() as stack:
        pids: list[int] = []
        for number in range(processes):
            log_folder = folder / f"c{number}"
            log_folder.mkdir()
            stack.enter_context(process(consumer, env, log_folder, r"consuming", pids))
        time.sleep(1.0)  # the consumers start listening
        with measured(pids):
            began = time.perf_counter()
            asyncio.run(enqueue())
            wait_until_empty(url, "SELECT count(*) FROM pgqueuer", folder)
            return calls / (time.perf_counter() - began)


def wait_until_empty(url: str, query: str, folder: Path) -> None:
    """Until ``query`` counts nothing; stuck for a minute, the run failed (logs in
    ``folder``). On one connection: a new one each time would cost the server a process
    of its own 50 times a second, CPU the system measured no longer has."""
    import psycopg

    last, since = -1, time.monotonic()
    with psycopg.connect(url, autocommit=True) as db:
        # A plain scan of an index, where the query has one: not a read of the whole
        # table 50 times a second (the statistics of a table that grew during the run
        # make that look cheap), nor a bitmap scan, which visits the rows of every entry
        # the finished calls left in the index each time (a plain scan marks them dead
        # as it passes and skips them after), either of which would take from the
        # server CPU the run measures.
        db.execute("SET enable_seqscan = off")
        db.execute("SET enable_bitmapscan = off")
        while count := int((db.execute(query).fetchone() or (0,))[0]):
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since > 60:
                raise SystemExit(f"{count} left and no progress for 60 s: see the logs in {folder}")
            time.sleep(0.02)


def postgres_main(server: str, calls: int, cap: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        rows: list[tuple[int, float, float]] = []
        for processes in (1, 2, 3):
            results = []
            for name, run in (("dispatchlet", dispatchlet_postgres_run), ("pgq", pgqueuer_run)):
                here = folder / f"{name}-{processes}"
                here.mkdir()
                with database(server, f"bench_{name}_{processes}") as url:
                    results.append(run(here, url, processes, calls, cap))
            rows.append((processes, results[0], results[1]))
        (folder / "floor").mkdir()
        floor = endpoint_floor(folder / "floor", calls, cap)
    print(
        f"{calls} no-op calls, calls/s     {'dispatchlet':>12} {'pgqueuer':>10} {'ratio':>7}"
        f" {'of the floor':>13}"
    )
    for count, ours, theirs in rows:
        label = f"{count} process{'es' if count > 1 else ''}"
        print(
            f"{label:>26} {ours:>12.1f} {theirs:>10.1f} {ours / theirs:>7.2f} {ours / floor:>13.2f}"
        )
    print(f"{'endpoint floor':>26} {floor:>12.1f}  (the endpoint alone, {cap} at a time)")
    print(
        json.dumps(
            {
                "processes": [r[0] for r in rows],
                "dispatchlet": [r[1] for r in rows],
                "pgqueuer": [r[2] for r in rows],
                "endpoint_floor": floor,
            }
        )
    )


HISTORY_OFF, HISTORY_ON = ["--attempt-history", "0"], ["--attempt-history", "50"]


def attempt_history_cost(
    calls: int, rounds: int, database_url: str | None, cap: int
) -> dict[str, dict[str, list[float]]]:
    """Calls per second, and the scheduler's CPU time per call, without and with the
    attempt history, alternated ``rounds`` times, in turn first and second (so that a
    shared machine's slower minute weighs on both alike)."""
    figures: dict[str, dict[str, list[float]]] = {
        name: {"throughput": [], "scheduler cpu us": []} for name in ("off", "on")
    }
    order = [("off", HISTORY_OFF), ("on", HISTORY_ON)]
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(rounds):
            for name, options in order if number % 2 == 0 else order[::-1]:
                here = Path(scratch) / f"{name}-{number}"
                here.mkdir()
                if database_url is None:
                    result = dispatchlet_run(here, calls, 0, 0, options)
                else:
                    result = {}
                    with database(database_url, f"bench_history_{name}_{number}") as url:
                        result["throughput"] = dispatchlet_postgres_run(
                            here, url, 1, calls, cap, options, result
                        )
                for key, values_ in figures[name].items():
                    values_.append(result[key])
                print(
                    f"round {number + 1}, history {name}: {result['throughput']:.1f} calls/s,"
                    f" scheduler CPU {result['scheduler cpu us']:.0f} us a call",
                    flush=True,
                )
    return figures


def print_attempt_history_cost(
    figures: dict[str, dict[str, list[float]]], store: str, calls: int
) -> None:
    off, on = figures["off"], figures["on"]
    rounds = len(off["throughput"])
    print(f"{calls} no-op calls on {store}, {rounds} rounds")
    print(f"{'':>26} {'calls/s best':>12} {'median':>8} {'CPU us/call median':>19}")
    for name, shown in (("attempt history off", off), ("attempt history on (50)", on)):
        print(
            f"{name:>26} {max(shown['throughput']):>12.1f}"
            f" {percentile(shown['throughput'], 0.5):>8.1f}"
            f" {percentile(shown['scheduler cpu us'], 0.5):>19.0f}"
        )
    best = max(on["throughput"]) / max(off["throughput"])
    median = percentile(on["throughput"], 0.5) / percentile(off["throughput"], 0.5)
    cpu = percentile(on["scheduler cpu us"], 0.5) / percentile(off["scheduler cpu us"], 0.5)
    print(f"{'on / off':>26} {best:>12.2f} {median:>8.2f} {cpu:>19.2f}")
    ratios = {"throughput_best": best, "throughput_median": median, "scheduler_cpu": cpu}
    print(json.dumps({"store": store, **figures, "on_over_off": ratios}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--history", type=int, default=50000)
    parser.add_argument("--database-url", help="compare 1-3 processes on PostgreSQL instead")
    parser.add_argument(
        "--cap", type=int, default=32, help="with --database-url: --max-per-destination"
    )
    parser.add_argument(
        "--attempt-history-cost",
        action="store_true",
        help="compare the throughput without and with the attempt history instead",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --attempt-history-cost")
    args = parser.parse_args()
    if args.attempt_history_cost:
        figures = attempt_history_cost(args.calls, args.rounds, args.database_url, args.cap)
        store = "PostgreSQL, 1 process" if args.database_url else "SQLite"
        print_attempt_history_cost(figures, store, args.calls)
        return
    if args.database_url:
        postgres_main(args.database_url, args.calls, args.cap)
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        ours = (
            dispatchlet_run(folder / "a", args.calls, args.singles, 0)
            if mkdir(folder / "a")
            else {}
        )
        theirs = huey_run(folder / "b", args.calls, args.singles) if mkdir(folder / "b") else {}
        aged: dict[str, float] = {}
        if args.history and mkdir(folder / "c"):
            aged = dispatchlet_run(folder / "c", args.calls, 0, args.history)
    rows: list[tuple[str, Callable[[dict[str, float]], float]]] = [
        (name, (lambda key: lambda r: r[key])(name))
        for name in ("throughput", "start p50 ms", "start p99 ms", "final p50 ms", "final p99 ms")
    ]
    print(f"{'':>26} {'dispatchlet':>12} {'huey':>10} {'ratio':>7}")
    for name, get in rows:
        print(f"{name:>26} {get(ours):>12.1f} {get(theirs):>10.1f} {get(ours) / get(theirs):>7.2f}")
    if aged:
        print(
            f"{'throughput, ' + str(args.history) + ' done':>26} {aged['throughput']:>12.1f}"
            f" {'':>10} {aged['throughput'] / ours['throughput']:>7.2f} (of the empty run)"
        )
    print(json.dumps({"dispatchlet": ours, "huey": theirs, "dispatchlet_aged": aged}))


def mkdir(path: Path) -> bool:
    path.mkdir(parents=True)
    return True


if __name__ == "__main__":
    main()
