"""Several `dispatchlet scheduler` processes on one PostgreSQL database, as users run
them when one machine is not enough: killed with SIGKILL and paused past their leases
while thousands of calls run, PostgreSQL itself restarted under load, a hard cap held
across processes. The server is a throwaway one this module starts (and restarts)."""

from __future__ import annotations

import itertools
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, ClientError, Status
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from postgres_server import Cluster, cluster, fresh_database
from test_scheduler_processes import API_KEY, Gauged, Process, environment, http_server

pytestmark = pytest.mark.slow

APP = """
import json, os, threading, time, uuid
from dispatchlet import Endpoint, RunContext

endpoint = Endpoint()
LOG = open(os.environ["RUNS_LOG"], "a", buffering=1)
LOCK = threading.Lock()


@endpoint.function
def work(n: int, context: RunContext) -> str:
    token = uuid.uuid4().hex
    started = time.time()
    time.sleep(0.002)
    line = json.dumps(
        {"id": context.dispatch_id, "token": token, "start": started, "end": time.time()}
    )
    with LOCK:
        LOG.write(line + "\\n")
    return token
"""

LEASE_SECONDS = 4.0  # --attempt-timeout 2: the attempt, then as long again


@dataclass
class Fleet:
    """Scheduler processes on one database, and the endpoint they call."""

    folder: Path
    database: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    schedulers: list[Process] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    endpoint: Process | None = None
    endpoint_url: str = ""
    extra: tuple[str, ...] = ()
    retired: list[Process] = field(default_factory=list)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dispatchlet",
            "scheduler",
            "--database-url",
            self.database,
            "--port",
            "0",
            "--attempt-timeout",
            "2",
            "--backoff",
            "0.05",
            "--backoff-cap",
            "0.5",
            *self.extra,
        ]

    def start_scheduler(self, index: int | None = None) -> None:
        env = environment(
            DISPATCH_SIGNING_KEY=private_key_base64(self.key), DISPATCH_API_KEY=API_KEY
        )
        process = Process(self.command(), env, self.folder)
        url = process.wait_for(r"listening at (http://\S+)", timeout=60).group(1)
        if index is None:
            self.schedulers.append(process)
            self.urls.append(url)
        else:
            self.retired.append(self.schedulers[index])
            self.schedulers[index], self.urls[index] = process, url

    def start_endpoint(self) -> None:
        (self.folder / "app.py").write_text(APP)
        self.endpoint = Process(
            [
                sys.executable,
                "-m",
                "dispatchlet",
                "serve",
                "app.py",
                "--port",
                "0",
                "--threads",
                "8",
            ],
            environment(
                DISPATCH_VERIFICATION_KEY=public_key_base64(self.key.public_key()),
                RUNS_LOG=str(self.folder / "runs.jsonl"),
            ),
            self.folder,
        )
        self.endpoint_url = self.endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)

    def kill(self, index: int) -> None:
        process = self.schedulers[index].process
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in [*self.schedulers, *([self.endpoint] if self.endpoint else [])]:
            process.stop()

    def dispatch(self, calls: list[call_pb2.Call], deadline: float) -> list[str]:
        """Dispatch ``calls`` through any scheduler that answers; their ids once one
        acknowledged them."""
        while time.monotonic() < deadline:
            url = random.choice(self.urls)
            try:
                with Client(url, API_KEY, timeout=10) as client:
                    return client.dispatch(calls)
            except (ClientError, OSError):
                time.sleep(0.05)  # killed, restarting, or its database is: another one
        raise AssertionError("no scheduler acknowledged a dispatch in time")

    def mentions(self, dispatch_id: str) -> str:
        """What the schedulers, live and killed, logged about ``dispatch_id``."""
        lines = [
            line
            for process in [*self.retired, *self.schedulers]
            for line in process.drained()
            if dispatch_id in line
        ]
        return "".join(lines)

    def runs(self) -> list[dict[str, Any]]:
        path = self.folder / "runs.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def calls(fleet: Fleet, count: int) -> list[call_pb2.Call]:
    return [
        call_pb2.Call(function="work", endpoint=fleet.endpoint_url, input=values.to_any(n))
        for n in range(count)
    ]


def wait_until_done(database: str, ids: set[str], timeout: float) -> dict[str, tuple[Any, ...]]:
    """The final rows of ``ids``, once every one is done."""
    deadline = time.monotonic() + timeout
    rows: dict[str, tuple[Any, ...]] = {}
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(database, connect_timeout=5) as db:
                found = db.execute(
                    "SELECT dispatch_id, state, status, result, finished_at FROM dispatchlet_calls"
                ).fetchall()
        except psycopg.OperationalError:
            time.sleep(0.5)  # the server is restarting
            continue
        rows = {row[0]: row for row in found}
        if all(i in rows and rows[i][1] == "done" for i in ids):
            return rows
        time.sleep(0.5)
    pending = [i for i in ids if i not in rows or rows[i][1] != "done"]
    raise AssertionError(f"{len(pending)} calls not done in {timeout} s, e.g. {pending[:3]}")


def check_outcomes(
    fleet: Fleet,
    ids: set[str],
    rows: dict[str, tuple[Any, ...]],
) -> None:
    """Every acknowledged call is final and OK; no call ran twice at once; no result was
    overwritten by a stale attempt's."""
    assert {rows[i][2] for i in ids} == {Status.OK.value}
    runs: dict[str, list[dict[str, Any]]] = {}
    for run in fleet.runs():
        runs.setdefault(run["id"], []).append(run)
    for dispatch_id in ids:
        history = sorted(runs[dispatch_id], key=lambda r: r["start"])
        for earlier, later in itertools.pairwise(history):
            assert later["start"] >= earlier["end"], (
                f"{dispatch_id} ran twice at once: {history}\n{fleet.mentions(dispatch_id)}"
            )
        output = values.from_any(call_pb2.CallResult.FromString(rows[dispatch_id][3]).output)
        (recorded,) = [r for r in history if r["token"] == output]
        # A result recorded over a newer one would be older than a run that had ended
        # before the call was finished. (A run that started after the call was finished,
        # by a process paused past its lease, is harmless: its result is refused.)
        finished = rows[dispatch_id][4]
        newer = [r for r in history if r["start"] > recorded["start"] and r["end"] < finished]
        assert not newer, f"{dispatch_id}: a stale attempt's result was recorded over {newer}"


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    with cluster() as running:
        yield running


@pytest.fixture
def fleet(server: Cluster, tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(tmp_path, fresh_database(server.url))
    try:
        running.start_endpoint()
        for _ in range(3):
            running.start_scheduler()
        yield running
    finally:
        running.stop()


def test_three_schedulers_lose_nothing_when_killed_and_paused(fleet: Fleet) -> None:
    total, batch = 10_000, 100
    # Chaos is driven by the dispatches, not by the clock: after these acknowledged
    # batches, a scheduler is killed (and started again) or paused past its leases, so
    # every run has the same number of each, with calls in flight, however fast the
    # machine runs them.
    kill_after = {10, 30, 50, 70}
    pause_after = 40
    acknowledged: set[str] = set()
    rng = random.Random(9)
    kills = pauses = 0
    resumers: list[threading.Thread] = []

    def pause(index: int) -> None:
        # Paused past its leases: others take its calls; what it records on waking is
        # refused. A request it is frozen in the middle of sending reaches the endpoint
        # when it wakes, past its attempt's expiration: refused, not run beside the
        # attempt another process has made since.
        process = fleet.schedulers[index].process
        process.send_signal(signal.SIGSTOP)
        resumer = threading.Timer(LEASE_SECONDS + 1.5, process.send_signal, (signal.SIGCONT,))
        resumer.start()
        resumers.append(resumer)

    try:
        deadline = time.monotonic() + 240
        pending = calls(fleet, total)
        for number, first in enumerate(range(0, total, batch), start=1):
            acknowledged.update(fleet.dispatch(pending[first : first + batch], deadline))
            if number in kill_after:
                index = rng.randrange(3)
                fleet.kill(index)
                kills += 1
                fleet.start_scheduler(index)
            elif number == pause_after:
                pause(rng.randrange(3))
                pauses += 1
        rows = wait_until_done(fleet.database, acknowledged, timeout=300)
    finally:
        for resumer in resumers:
            resumer.join(timeout=30)
    assert len(acknowledged) == total
    assert (kills, pauses) == (len(kill_after), 1)
    check_outcomes(fleet, acknowledged, rows)


def test_postgres_restarted_under_load(server: Cluster, fleet: Fleet) -> None:
    total = 3000
    acknowledged: set[str] = set()
    pending = calls(fleet, total)
    deadline = time.monotonic() + 240
    for number, first in enumerate(range(0, total, 100)):
        if number in (8, 20):
            # A clean stop, then a crash: both times the schedulers reconnect.
            server.stop("fast" if number == 8 else "immediate")
            time.sleep(1.0)
            server.start()
        acknowledged.update(fleet.dispatch(pending[first : first + 100], deadline))
    rows = wait_until_done(fleet.database, acknowledged, timeout=240)
    assert len(acknowledged) == total
    check_outcomes(fleet, acknowledged, rows)
    for process in fleet.schedulers:
        assert process.process.poll() is None, "".join(process.output)


def test_a_cap_holds_across_schedulers(server: Cluster, tmp_path: Path) -> None:
    Gauged.most, Gauged.gather = 0, 3
    with http_server(Gauged) as endpoint:
        fleet = Fleet(tmp_path, fresh_database(server.url), extra=("--max-per-destination", "3"))
        try:
            for _ in range(3):
                fleet.start_scheduler()
            ids = fleet.dispatch(
                [call_pb2.Call(function="f", endpoint=endpoint)] * 45, time.monotonic() + 60
            )
            rows = wait_until_done(fleet.database, set(ids), timeout=120)
        finally:
            fleet.stop()
            Gauged.gather = 0
    assert {rows[i][2] for i in ids} == {Status.OK.value}
    # Three processes, each free to run 3: together never more than 3.
    assert Gauged.most == 3
