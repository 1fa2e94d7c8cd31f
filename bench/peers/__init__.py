"""What the side-by-side benchmarks (bench/peers_calls.py, bench/peers_workflow.py) share:
the scheduler bench's helpers, a throwaway PostgreSQL server with fsync on, fsyncs
counted with strace, and the table of figures and ratios."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent


def load(name: str, path: Path) -> ModuleType:
    """A script of this repository imported as a module under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The scheduler bench's runs and helpers (process, database, percentile, ...).
shared = load("bench_scheduler", BENCH / "scheduler.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- PostgreSQL --------------------------------------------------------------------------


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """The URL of a PostgreSQL server's maintenance database: ``url`` when given, else a
    throwaway server made as the tests make theirs (tests/postgres_server.py), restarted
    with fsync on (the tests turn it off), stopped and removed after the block."""
    if url:
        yield url
        return
    tests = load("bench_postgres_server", BENCH.parent / "tests" / "postgres_server.py")
    if tests.binary("initdb") is None or tests.binary("pg_ctl") is None:
        raise SystemExit(tests.HOW)
    with tests.cluster() as running:
        running.stop()
        options = (
            f"-p {running.port} -k {running.folder} -c listen_addresses=127.0.0.1 "
            "-c max_connections=300 -c fsync=on -c synchronous_commit=on"
        )
        running.pg_ctl("-o", options, "-l", str(running.folder / "server.log"), "start")
        yield running.url


def server_pids(url: str) -> list[int]:
    """The ids of the server's processes (its postmaster and every child), when it runs
    on this machine; none when it cannot be told."""
    import psycopg

    with psycopg.connect(url) as db:  # read while this connection's backend lives
        row = db.execute("SELECT pg_backend_pid()").fetchone()
        backend = int(row[0]) if row else 0
        try:
            postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return []
    return [postmaster, *(pid for pid in children(postmaster) if pid != backend)]


def children(pid: int) -> list[int]:
    """The ids of the processes under ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        under = [child for child, parent in parents.items() if parent in frontier]
        found += under
        frontier = under
    return found


# --- fsyncs ------------------------------------------------------------------------------

SYNCS = ("fsync", "fdatasync")


def strace() -> str | None:
    return shutil.which("strace")


@dataclass
class Fsyncs:
    """What an fsync count saw: ``calls`` of fsync and fdatasync in all the traced
    processes and their threads and children (``by_call``: each syscall's)."""

    by_call: dict[str, int] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(self.by_call.values())


@contextmanager
def fsyncs_of(pids: Sequence[int], folder: Path) -> Iterator[Fsyncs]:
    """fsync and fdatasync counted in the processes ``pids`` (all their threads, and
    the processes they start meanwhile) while the block runs: ``strace -f -c``
    attached to each, detached after. The count fills in at the block's end."""
    found = Fsyncs()
    command = [strace() or "strace", "-f", "-c", "-e", f"trace={','.join(SYNCS)}"]
    out, log = folder / "strace.out", folder / "strace.log"
    for pid in pids:
        command += ["-p", str(pid)]
    with log.open("w") as errors:
        tracer = subprocess.Popen([*command, "-o", str(out)], stderr=errors)
    try:
        deadline = time.monotonic() + 30
        # A process that ended meanwhile (a database connection's) is no matter.
        while not all(
            f"Process {pid} attached" in log.read_text()
            or f"({pid}): No such process" in log.read_text()
            for pid in pids
        ):
            if tracer.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"strace did not attach to {list(pids)}:\n{log.read_text()}")
            time.sleep(0.02)
        yield found
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
    found.by_call.update(summary_calls(out.read_text() if out.exists() else ""))


def summary_calls(summary: str) -> dict[str, int]:
    """The calls of each fsync-like syscall in ``strace -c``'s summary (its columns: %
    time, seconds, usecs/call, calls, errors when any, syscall)."""
    found = {}
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] in SYNCS and re.fullmatch(r"\d+", fields[3]):
            found[fields[-1]] = int(fields[3])
    return found


class FsyncCounter:
    """A ``Measured`` of bench/scheduler.py that counts the fsyncs of each run it wraps,
    plus those of the PostgreSQL server at ``server`` (all its processes as the run
    begins, and those it starts meanwhile) when given."""

    def __init__(self, folder: Path, server: str | None = None) -> None:
        self.folder, self.server = folder, server
        self.seen: list[Fsyncs] = []

    @contextmanager
    def __call__(self, pids: list[int]) -> Iterator[None]:
        folder = self.folder / f"strace-{len(self.seen)}"
        folder.mkdir(parents=True)
        traced = [*pids, *(server_pids(self.server) if self.server else [])]
        # With the processes they started: a command may be a wrapper of the real one.
        traced += [child for pid in traced for child in children(pid) if child not in traced]
        with fsyncs_of(traced, folder) as found:
            yield
        self.seen.append(found)

    @property
    def last(self) -> int:
        return self.seen[-1].calls if self.seen else 0


# --- the table ---------------------------------------------------------------------------


@dataclass
class Row:
    """One system's figures; ``versus``: the label of the dispatchlet row its ratios are
    computed against (none: a dispatchlet row itself)."""

    label: str
    figures: dict[str, float]
    versus: str | None = None


def table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Row]) -> str:
    """Each row's figures (``columns``: key and heading), and on each peer's row, after
    each figure, dispatchlet's ratio to it in parentheses: dispatchlet's figure over
    the peer's (above 1: dispatchlet's is the higher, better for a rate, worse for a
    latency or a count)."""
    by_label = {row.label: row for row in rows}
    width = max(len(row.label) for row in rows) + 2
    cell = max(20, *(len(head) + 2 for _, head in columns))
    lines = [title, f"{'':<{width}}" + "".join(f"{head:>{cell}}" for _, head in columns)]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.figures.get(key)
            text = "-" if value is None else f"{value:.1f}"
            ours = by_label[row.versus].figures.get(key) if row.versus else None
            if value and ours is not None:
                text += f" ({ours / value:.2f}x)"
            cells.append(f"{text:>{cell}}")
        lines.append(f"{row.label:<{width}}" + "".join(cells))
    against: dict[str, list[str]] = {}
    for row in rows:
        if row.versus:
            against.setdefault(row.versus, []).append(row.label)
    if against:
        lines.append(
            "(Nx): dispatchlet's figure over the row's; "
            + "; ".join(f"{', '.join(labels)}: against {ours}" for ours, labels in against.items())
        )
    return "\n".join(lines)


def report(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Row]) -> None:
    print(table(title, columns, rows))
    print(json.dumps({row.label: row.figures for row in rows}))


def environment_without_dispatch() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
