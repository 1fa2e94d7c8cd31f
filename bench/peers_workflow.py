"""A three-step workflow side by side with the durable engines that run the same steps
(each adds one to a number), fsync on: dispatchlet and DBOS Transact on SQLite and on
PostgreSQL, Restate with the steps as `ctx.run` blocks and as calls to another handler.

    pip install -e '.[bench]'
    sh bench/peers/install_restate.sh      # the Restate server, from npm, into a cache
    python bench/peers_workflow.py [--runs 200] [--workflows 2000] [--clients 50]
        [--quick] [--only dispatchlet,dbos,restate] [--database-url URL]
        [--restate-server PATH] [--no-fsyncs]

Each system is started by the bench on loopback (free ports) and stopped at the end.

- p50: ``--runs`` workflows one after another, the client's request to the result;
- workflows/s: ``--workflows`` workflows run by ``--clients`` threads of this process,
  each with its own connection, each starting its next workflow once the last is done;
- fsyncs per workflow, where strace is installed: ``--fsync-runs`` workflows again, one
  at a time and not timed, with `strace -f -c -e trace=fsync,fdatasync` attached to
  every process the system runs on (on PostgreSQL, the server's too): the fsync and
  fdatasync calls counted meanwhile, divided by the workflows.

dispatchlet: `dispatchlet scheduler` (``--db`` a file, or one process on PostgreSQL) and
`dispatchlet serve` (8 threads) of bench/workflow.py's app, whose `three` awaits `step`
three times, each a child call the scheduler runs; a client dispatches `three` and waits
for it. "dispatchlet inline" runs `three_inline`, the same with `step_inline`, registered
with `inline=True`: its steps run in the workflow's own request, journaled (one Run). The
peers' ratios are against the inline rows. DBOS: a process of its own
serving HTTP (the standard library's threading server) whose handler runs a workflow of
three `@DBOS.step` calls, as an application would. Restate: `restate-server` (the npm
package; found in the cache of bench/peers/install_restate.sh, on the PATH, or given)
and the `restate-sdk` service under hypercorn, called through Restate's HTTP ingress.
PostgreSQL: the server at ``--database-url`` (a database made for each run, dropped
after), else a throwaway one made as the tests make theirs, with fsync on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import peers
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from peers import FsyncCounter, Row, report, shared

# bench/workflow.py's app: `three` awaits `step` three times.
WORKFLOW_APP = peers.load("bench_workflow", peers.BENCH / "workflow.py").APP

DBOS_APP = """
import json, os, signal, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dbos import DBOS

DBOS(config={"name": "bench", "system_database_url": os.environ["BENCH_DBOS_URL"],
              "log_level": "WARNING"})


@DBOS.step()
def step(x: int) -> int:
    return x + 1


@DBOS.workflow(name="three")
def three(x: int) -> int:
    return step(step(step(x)))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body are two writes: without this, Nagle's algorithm holds the
    # body until the client's delayed ACK (40 ms), which would be timed as DBOS's.
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            answer, status = json.dumps(three(json.loads(body))).encode(), 200
        except Exception as exc:  # told to the bench, which stops on it
            answer, status = repr(exc).encode(), 500
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    DBOS.launch()
    ThreadingHTTPServer.request_queue_size = 128  # 50 clients connect at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening at http://127.0.0.1:{server.server_address[1]}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    DBOS.destroy()
"""

RESTATE_APP = """
import restate

service = restate.Service("bench")


def add_one(x: int) -> int:
    return x + 1


@service.handler()
async def step(ctx: restate.Context, x: int) -> int:
    return x + 1


@service.handler()
async def three(ctx: restate.Context, x: int) -> int:
    for name in ("one", "two", "three"):
        x = await ctx.run_typed(name, add_one, restate.RunOptions(), x)
    return x


@service.handler()
async def three_calls(ctx: restate.Context, x: int) -> int:
    for _ in range(3):
        x = await ctx.service_call(step, arg=x)
    return x


app = restate.app([service])
"""

Caller = Callable[[int], int]  # runs one workflow of the number given; its result


class HttpCaller:
    """POSTs a JSON number to ``url`` on one kept-alive connection; the JSON answer."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.path = parts.path
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.connection = http.client.HTTPConnection(parts.netloc, timeout=60)

    def __call__(self, x: int) -> int:
        self.connection.request("POST", self.path, json.dumps(x), self.headers)
        answer = self.connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{self.path}: {answer.status} {body[:200]!r}")
        return int(json.loads(body))

    def close(self) -> None:
        self.connection.close()


def measure(
    new_caller: Callable[[], Any],
    runs: int,
    workflows: int,
    clients: int,
) -> dict[str, float]:
    """p50 and p99 (ms) of ``runs`` workflows one at a time, and workflows/s of
    ``workflows`` run by ``clients`` threads, each with a caller of its own."""
    made: list[Any] = []

    def caller() -> Any:
        made.append(new_caller())
        return made[-1]

    try:
        first = caller()
        if first(0) != 3:
            raise SystemExit("the workflow's result is not its input plus 3")
        samples = []
        for n in range(runs):
            began = time.perf_counter()
            first(n)
            samples.append(time.perf_counter() - began)
        figures = {
            "p50 ms": shared.percentile(samples, 0.5) * 1000,
            "p99 ms": shared.percentile(samples, 0.99) * 1000,
        }
        if workflows:

            def loop(k: int) -> None:
                mine = caller()
                for n in range(k, workflows, clients):
                    if mine(n) != n + 3:
                        raise RuntimeError(f"workflow {n}: wrong result")

            with ThreadPoolExecutor(clients) as pool:
                began = time.perf_counter()
                list(pool.map(loop, range(clients)))
                figures["workflows/s"] = workflows / (time.perf_counter() - began)
        return figures
    finally:
        for each in made:
            each.close()


@contextmanager
def dispatchlet_system(
    folder: Path, database_url: str | None, workflow: str = "three"
) -> Iterator[tuple[Any, list[int]]]:
    """A scheduler and an endpoint of bench/workflow.py's app: a new caller's maker (of
    callers that run ``workflow``), and the ids of the processes."""
    key = Ed25519PrivateKey.generate()
    (folder / "app.py").write_text(WORKFLOW_APP)
    base = peers.environment_without_dispatch()
    endpoint_env = {**base, "DISPATCH_VERIFICATION_KEY": public_key_base64(key.public_key())}
    scheduler_env = {
        **base,
        "DISPATCH_SIGNING_KEY": private_key_base64(key),
        "DISPATCH_API_KEY": shared.API_KEY,
    }
    serve = [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"]
    serve += ["--threads", "8"]
    scheduler = [sys.executable, "-m", "dispatchlet", "scheduler", "--port", "0"]
    if database_url:
        scheduler_env["DISPATCHLET_DATABASE_URL"] = database_url
    else:
        scheduler += ["--db", str(folder / "scheduler.db")]
    pids: list[int] = []
    with (
        shared.process(serve, endpoint_env, folder, r"serving \S+ at (http://\S+)", pids) as at,
        shared.process(scheduler, scheduler_env, folder, r"listening at (http://\S+)", pids) as url,
    ):

        class DispatchletCaller:
            def __init__(self) -> None:
                self.client = Client(url, shared.API_KEY)

            def __call__(self, x: int) -> int:
                call = call_pb2.Call(function=workflow, endpoint=at)
                call.input.CopyFrom(values.to_any(x))
                info = self.client.wait(self.client.dispatch([call])[0])
                if info.status is None or info.status.name != "OK":
                    raise RuntimeError(f"{workflow}({x}) did not end OK: {info}")
                if not isinstance(info.output, int):
                    raise RuntimeError(f"{workflow}({x}) returned {info.output!r}")
                return info.output

            def close(self) -> None:
                self.client.close()

        yield DispatchletCaller, pids


@contextmanager
def dbos_system(folder: Path, url: str) -> Iterator[tuple[Any, list[int]]]:
    (folder / "bench_dbos.py").write_text(DBOS_APP)
    env = {**os.environ, "BENCH_DBOS_URL": url}
    pids: list[int] = []
    command = [sys.executable, str(folder / "bench_dbos.py")]
    with shared.process(command, env, folder, r"listening at (http://\S+)", pids) as at:
        yield (lambda: HttpCaller(at + "/three")), pids


def restate_binary(given: str | None) -> str | None:
    """The restate-server command: ``given``, else the platform's binary in the cache of
    bench/peers/install_restate.sh (the package's own command is a node script that
    starts it as a child), else restate-server on the PATH."""
    if given:
        return given
    cache = os.environ.get("RESTATE_CACHE", str(Path.home() / ".cache/dispatchlet-bench/restate"))
    found = sorted(Path(cache).glob("node_modules/@restatedev/restate-server-*/bin/restate-server"))
    return str(found[-1]) if found else shutil.which("restate-server")


@contextmanager
def restate_system(folder: Path, binary: str, handler: str) -> Iterator[tuple[Any, list[int]]]:
    """restate-server and the SDK's service under hypercorn, the service registered."""
    ports = {name: peers.free_port() for name in ("admin", "ingress", "fabric", "service")}
    env = {
        **os.environ,
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{ports['admin']}",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ports['ingress']}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{ports['fabric']}",
        "NO_COLOR": "1",
    }
    # (The node's name third: bench/scheduler.py's process() names its log after it.)
    server = [binary, "--node-name", "restate-server", "--no-logo", "--listen-mode", "tcp"]
    server += ["--base-dir", str(folder / "restate-data")]
    (folder / "bench_restate.py").write_text(RESTATE_APP)
    service = [sys.executable, "-m", "hypercorn", "bench_restate:app"]
    service += ["--bind", f"127.0.0.1:{ports['service']}"]
    pids: list[int] = []
    admin = f"127.0.0.1:{ports['admin']}"
    with ExitStack() as stack:
        stack.enter_context(shared.process(server, env, folder, r"My Node ID is", pids))
        stack.enter_context(shared.process(service, env, folder, r"Running on", pids))
        registration = json.dumps({"uri": f"http://127.0.0.1:{ports['service']}", "force": True})
        deadline = time.monotonic() + 60
        while True:  # the admin API answers once the node has joined its cluster
            connection = http.client.HTTPConnection(admin, timeout=30)
            try:
                connection.request(
                    "POST", "/deployments", registration, {"Content-Type": "application/json"}
                )
                answer = connection.getresponse()
                body = answer.read()
                if answer.status in (200, 201):
                    break
                problem = f"{answer.status} {body[:300]!r}"
            except OSError as exc:
                problem = str(exc)
            finally:
                connection.close()
            if time.monotonic() > deadline:
                raise SystemExit(f"Restate did not register the service: {problem}")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{ports['ingress']}/bench/{handler}"
        while True:  # the ingress learns of the deployment a moment after
            caller = HttpCaller(url)
            try:
                caller(0)
                break
            except (OSError, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"Restate's ingress did not run {handler}: {exc}") from exc
                time.sleep(0.2)
            finally:
                caller.close()
        yield (lambda: HttpCaller(url)), pids


def run_system(
    system: Any,
    args: argparse.Namespace,
    folder: Path,
    server: str | None,
) -> dict[str, float]:
    """The figures of one system, made fresh for the timed runs and again for the fsync
    count (``system(folder)`` enters it)."""
    (folder / "timed").mkdir(parents=True)
    with system(folder / "timed") as (new_caller, _):
        figures = measure(new_caller, args.runs, args.workflows, args.clients)
    if args.fsync_runs:
        (folder / "counted").mkdir()
        with system(folder / "counted") as (new_caller, pids):
            counter = FsyncCounter(folder / "strace", server)
            caller = new_caller()
            try:
                caller(0)  # warm up
                with counter(pids):
                    for n in range(args.fsync_runs):
                        caller(n)
            finally:
                caller.close()
        figures["fsyncs per workflow"] = counter.last / args.fsync_runs
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--fsync-runs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few workflows")
    parser.add_argument("--only", default="dispatchlet,dbos,restate")
    parser.add_argument("--database-url", help="a PostgreSQL server to use (CREATEDB)")
    parser.add_argument("--restate-server", help="the restate-server command")
    parser.add_argument("--no-fsyncs", action="store_true", help="do not count fsyncs")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.workflows, args.clients, args.fsync_runs = 10, 100, 10, 5
    if args.no_fsyncs:
        args.fsync_runs = 0
    elif peers.strace() is None:
        print("strace is not installed: no fsyncs per workflow (Debian: apt-get install strace)")
        args.fsync_runs = 0
    only = set(args.only.split(","))
    # SIGTERM ends the run as Ctrl-C does: every process started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ours_sqlite, ours_pg = "dispatchlet, SQLite", "dispatchlet, PostgreSQL"
    # The peers' ratios are against dispatchlet's inline steps, the same kind of step as
    # DBOS's and Restate's ctx.run: run in the workflow's own process, journaled.
    inline_sqlite, inline_pg = "dispatchlet inline, SQLite", "dispatchlet inline, PostgreSQL"
    rows: list[Row] = []

    def add(label: str, versus: str | None, system: Any, server: str | None = None) -> None:
        print(f"{label}: {args.runs} workflows, then {args.workflows} by {args.clients} clients")
        here = folder / f"system{len(rows)}"
        rows.append(Row(label, run_system(system, args, here, server), versus))

    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        folder = Path(scratch)
        if "dispatchlet" in only:
            add(ours_sqlite, None, lambda here: dispatchlet_system(here, None))
            add(inline_sqlite, None, lambda here: dispatchlet_system(here, None, "three_inline"))
        if "dbos" in only:
            add(
                "DBOS, SQLite",
                inline_sqlite if "dispatchlet" in only else None,
                lambda here: dbos_system(here, f"sqlite:///{here / 'dbos.db'}"),
            )
        if only & {"dispatchlet", "dbos"}:
            server = stack.enter_context(peers.postgres(args.database_url))

            @contextmanager
            def on_postgres(system: Any, here: Path) -> Iterator[Any]:
                name = f"bench_workflow_{len(rows)}_{here.name}"
                with shared.database(server, name) as url, system(here, url) as running:
                    yield running

            if "dispatchlet" in only:
                add(ours_pg, None, lambda here: on_postgres(dispatchlet_system, here), server)

                def inline_system(here: Path, url: str) -> Any:
                    return dispatchlet_system(here, url, "three_inline")

                add(inline_pg, None, lambda here: on_postgres(inline_system, here), server)
            if "dbos" in only:
                add(
                    "DBOS, PostgreSQL",
                    inline_pg if "dispatchlet" in only else None,
                    lambda here: on_postgres(dbos_system, here),
                    server,
                )
        if "restate" in only:
            binary = restate_binary(args.restate_server)
            if binary is None:
                print(
                    "no restate-server: run `sh bench/peers/install_restate.sh` (npm) or pass"
                    " --restate-server; Restate left out"
                )
            else:
                versus = inline_sqlite if "dispatchlet" in only else None
                for label, handler in (("ctx.run", "three"), ("service calls", "three_calls")):
                    add(
                        f"Restate, {label}",
                        versus,
                        lambda here, handler=handler: restate_system(here, binary, handler),
                    )
    columns = [("p50 ms", "p50 ms"), ("workflows/s", f"workflows/s, {args.clients} clients")]
    columns.append(("fsyncs per workflow", "fsyncs/workflow"))
    report("Three-step workflow, each step adds one", columns, rows)


if __name__ == "__main__":
    main()
