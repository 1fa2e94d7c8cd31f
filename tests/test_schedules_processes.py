"""Schedules through real processes: three `dispatchlet scheduler` processes on one
PostgreSQL database and an endpoint served by `dispatchlet serve`; a schedule that ticks
every second dispatches each tick once, and the CLI manages schedules and refuses bad
ones with one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.core.keys import private_key_base64, public_key_base64
from postgres_server import free_port, fresh_database
from prometheus_client.parser import text_string_to_metric_families
from test_scheduler_processes import API_KEY, Process, environment

pytestmark = pytest.mark.slow

APP = """
import json, os
from pathlib import Path
from dispatchlet import Endpoint, RunContext

endpoint = Endpoint()
LOG = Path(os.environ["APP_LOG"])


@endpoint.function
def tick(label: str, context: RunContext) -> str:
    with LOG.open("a") as log:
        log.write(json.dumps({"dispatch_id": context.dispatch_id, "label": label}) + "\\n")
    return label
"""

TICKS = 10
"""Ticks of the every-second schedule the test waits for."""


@dataclass
class Cluster:
    schedulers: list[str]
    endpoint: str
    database: str
    log: Path
    folder: Path

    def client(self, index: int = 0) -> Client:
        return Client(self.schedulers[index], API_KEY)

    def runs(self) -> list[dict[str, str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatchlet", "schedules", *args],
            env=environment(DISPATCH_API_URL=self.schedulers[1], DISPATCH_API_KEY=API_KEY),
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("schedules")
    (folder / "app.py").write_text(APP)
    log = folder / "runs.jsonl"
    key = Ed25519PrivateKey.generate()
    database = fresh_database(request.getfixturevalue("postgres_server"))
    schedulers = [
        Process(
            [sys.executable, "-m", "dispatchlet", "scheduler", "--port", "0"],
            environment(
                DISPATCH_SIGNING_KEY=private_key_base64(key),
                DISPATCH_API_KEY=API_KEY,
                DISPATCHLET_DATABASE_URL=database,
            ),
            folder,
        )
        for _ in range(3)
    ]
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), APP_LOG=str(log)
        ),
        folder,
    )
    try:
        urls = [s.wait_for(r"listening at (http://\S+)").group(1) for s in schedulers]
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        yield Cluster(urls, endpoint_url, database, log, folder)
    finally:
        endpoint.stop()
        codes = [s.stop() for s in schedulers]
        assert codes == [0, 0, 0], "".join(line for s in schedulers for line in s.output)


def wait_until(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.2)


def keys_of(database: str, name: str) -> dict[str, str]:
    """The idempotency keys of ``name``'s ticks in the database, with their calls."""
    import psycopg

    with psycopg.connect(database) as connection:
        rows = connection.execute(
            "SELECT call_key, dispatch_id FROM dispatchlet_calls_by_key WHERE call_key LIKE %s",
            (f"schedule:{name}:%",),
        ).fetchall()
    return dict(rows)


def ticks_counted(scheduler: str) -> float:
    """``dispatchlet_schedule_ticks_total`` of one scheduler process."""
    request = urllib.request.Request(
        scheduler + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dispatchlet_schedule_ticks_total":
                return sample.value
    raise AssertionError(f"no dispatchlet_schedule_ticks_total in {text[:2000]}")


def test_a_schedule_ticking_every_second_on_three_schedulers_dispatches_each_tick_once(
    cluster: Cluster,
) -> None:
    with cluster.client(0) as client:
        created = client.create_schedule(
            "every-second", "* * * * * *", "tick", "beat", endpoint=cluster.endpoint
        )
        assert created.next_tick is not None
        wait_until(lambda: len(cluster.runs()) >= TICKS, f"{TICKS} ticks run")
        # Paused through another process: no tick after its answer.
        with cluster.client(2) as other:
            other.pause_schedule("every-second")
        keys = keys_of(cluster.database, "every-second")
        for dispatch_id in keys.values():
            assert client.wait(dispatch_id, timeout=60).done
        listed = {s.name: s for s in client.list_schedules()}
    runs = cluster.runs()
    per_call = Counter(run["dispatch_id"] for run in runs)
    assert len(keys) >= TICKS
    # Each tick's call once, and each ran once on the endpoint.
    assert sorted(per_call) == sorted(keys.values())
    assert set(per_call.values()) == {1}, per_call
    assert {run["label"] for run in runs} == {"beat"}
    # One key per tick: distinct seconds, in UTC.
    ticks = sorted(key.removeprefix("schedule:every-second:") for key in keys)
    assert len(set(ticks)) == len(ticks)
    assert all(tick.endswith("Z") and len(tick) == 20 for tick in ticks), ticks

    # The schedulers' counters tell the same: the ticks were dispatched once in all
    # (each counted just after its transaction: read until all are).
    def counted() -> float:
        return sum(ticks_counted(url) for url in cluster.schedulers)

    wait_until(lambda: counted() >= len(keys), "the ticks counted")
    assert counted() == len(keys)
    schedule = listed["every-second"]
    assert schedule.paused
    assert schedule.last_dispatch_id in keys.values()
    assert schedule.last_tick is not None
    assert f"schedule:every-second:{schedule.last_tick:%Y-%m-%dT%H:%M:%SZ}" in keys


def test_the_cli_creates_lists_pauses_resumes_and_deletes_a_schedule(cluster: Cluster) -> None:
    created = cluster.cli(
        "create",
        "nightly",
        "0 3 * * *",
        "tick",
        '"night"',
        "--timezone",
        "Europe/Paris",
        "--endpoint",
        cluster.endpoint,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created nightly: next tick 20")
    listed = cluster.cli("list")
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if row.startswith("nightly ")]
    assert "0 3 * * *" in line
    assert "Europe/Paris" in line
    assert "active" in line
    # 03:00 in Paris is 01:00 or 02:00 UTC.
    assert "T01:00:00Z" in line or "T02:00:00Z" in line
    assert cluster.cli("pause", "nightly").stdout == "paused nightly\n"
    as_json = cluster.cli("list", "--json").stdout.splitlines()
    shown = {entry["name"]: entry for entry in map(json.loads, as_json)}
    assert shown["nightly"]["paused"] is True
    assert shown["nightly"]["input"] == "night"
    assert cluster.cli("resume", "nightly").stdout.startswith("resumed nightly: next tick 20")
    assert cluster.cli("delete", "nightly").stdout == "deleted nightly\n"
    gone = cluster.cli("delete", "nightly")
    assert gone.returncode == 2
    assert gone.stderr == "dispatchlet schedules: error: not_found: no schedule 'nightly'\n"


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["bad-cron", "every day", "tick"], "invalid cron expression 'every day'"),
        (["bad-cron", "61 * * * *", "tick"], "invalid cron expression '61 * * * *'"),
        (["bad-zone", "0 9 * * *", "tick", "--timezone", "Mars/Olympus"], "unknown time zone"),
        (["bad name", "0 9 * * *", "tick"], "invalid schedule name 'bad name'"),
        (["bad-function", "0 9 * * *", "no-such!"], "invalid function name"),
        (["bad-endpoint", "0 9 * * *", "tick", "--endpoint", "ftp://x"], "invalid endpoint"),
    ],
)
def test_the_cli_refuses_a_bad_schedule_in_one_line(
    cluster: Cluster, arguments: list[str], reason: str
) -> None:
    if "--endpoint" not in arguments:
        arguments = [*arguments, "--endpoint", cluster.endpoint]
    refused = cluster.cli("create", *arguments)
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith("dispatchlet schedules: error: invalid_argument: ")
    assert reason in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    listed = cluster.cli("list", "--json").stdout
    assert arguments[0] not in listed


DECLARED = """
from dispatchlet import Endpoint

endpoint = Endpoint()


@endpoint.function(schedule="{nightly}")
def nightly_report() -> str:
    return "done"


@endpoint.function{hourly}
def hourly_cleanup() -> None:
    pass


@endpoint.function
def not_scheduled() -> None:
    pass
"""


def declared(folder: Path, *, nightly: str = "0 9 * * *", hourly: bool = True) -> None:
    text = DECLARED.replace("{nightly}", nightly)
    text = text.replace("{hourly}", '(schedule="0 * * * *")' if hourly else "")
    (folder / "declared.py").write_text(text)


def test_sync_pushes_the_declared_schedules_and_deletes_only_its_own(cluster: Cluster) -> None:
    url = "http://127.0.0.1:18000"
    with cluster.client() as client:
        client.create_schedule("by-hand", "0 1 * * *", "tick", endpoint=cluster.endpoint)
        declared(cluster.folder)
        first = cluster.cli("sync", "declared.py", "--endpoint", url)
        assert first.returncode == 0, first.stderr
        assert first.stdout == (f"schedules for {url}: created hourly_cleanup, nightly_report\n")
        synced = {s.name: s for s in client.list_schedules() if s.synced_for == url}
        assert sorted(synced) == ["hourly_cleanup", "nightly_report"]
        assert synced["nightly_report"].cron == "0 9 * * *"
        assert synced["nightly_report"].endpoint == url
        assert synced["nightly_report"].timezone == "UTC"
        nightly_tick = synced["nightly_report"].next_tick

        # Changed code: one schedule gone, one moved; the one created by hand stays.
        declared(cluster.folder, nightly="30 9 * * *", hourly=False)
        second = cluster.cli("sync", "declared.py", "--endpoint", url)
        assert second.returncode == 0, second.stderr
        assert second.stdout == (
            f"schedules for {url}: updated nightly_report; deleted hourly_cleanup\n"
        )
        after = {s.name: s for s in client.list_schedules()}
        assert "hourly_cleanup" not in after
        assert after["nightly_report"].cron == "30 9 * * *"
        assert after["nightly_report"].next_tick != nightly_tick
        assert after["by-hand"].synced_for == ""
        again = cluster.cli("sync", "declared.py", "--endpoint", url)
        assert again.stdout == f"schedules for {url}: unchanged nightly_report\n"

        # Another endpoint declaring the same name: refused, nothing changed.
        refused = cluster.cli("sync", "declared.py", "--endpoint", "http://127.0.0.1:18001")
        assert refused.returncode == 2
        assert refused.stderr.startswith("dispatchlet schedules: error: already_exists: ")
        assert "nightly_report" in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert {s.name for s in client.list_schedules()} == set(after)
        for name in ("by-hand", "nightly_report"):
            client.delete_schedule(name)


def start_dev(folder: Path, port: int = 0) -> Process:
    return Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "dev",
            "declared.py",
            "--port",
            str(port),
            "--scheduler-port",
            "0",
            "--db",
            str(folder / "dev.db"),
        ],
        environment(),
        folder,
    )


def dev_schedules(process: Process) -> dict[str, tuple[str, str]]:
    """The schedules of the dev loop's scheduler: each one's endpoint and owner."""
    exports = dict(re.findall(r"export (DISPATCH_\w+)=(\S+)", "".join(process.drained())))
    with Client(exports["DISPATCH_API_URL"], exports["DISPATCH_API_KEY"].strip("'")) as client:
        return {s.name: (s.endpoint, s.synced_for) for s in client.list_schedules()}


def test_dev_syncs_the_declared_schedules_on_start_and_a_restart_takes_them_over(
    tmp_path: Path,
) -> None:
    declared(tmp_path)
    owner = f"dispatchlet dev {(tmp_path / 'declared.py').resolve()}"
    process = start_dev(tmp_path)
    try:
        synced = process.wait_for(
            r"dispatchlet dev: schedules for (\S+): created hourly_cleanup, nightly_report"
        )
        first_url = synced.group(1)
        assert dev_schedules(process) == {
            "hourly_cleanup": (first_url, owner),
            "nightly_report": (first_url, owner),
        }
    finally:
        assert process.stop() == 0, "".join(process.output)
    # Started again (on another free port), one schedule gone from the code: the dev
    # loop's schedules follow the app, not its old address.
    declared(tmp_path, hourly=False)
    port = free_port()
    while f":{port}" in first_url:
        port = free_port()
    process = start_dev(tmp_path, port)
    try:
        synced = process.wait_for(
            r"dispatchlet dev: schedules for (\S+): updated nightly_report; "
            r"deleted hourly_cleanup"
        )
        second_url = synced.group(1)
        assert second_url.endswith(f":{port}")
        assert dev_schedules(process) == {"nightly_report": (second_url, owner)}
    finally:
        assert process.stop() == 0, "".join(process.output)
