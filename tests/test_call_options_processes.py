"""Call options as users meet them: a `dispatchlet scheduler` process (SQLite, or
PostgreSQL) and an endpoint served by `dispatchlet serve`, on loopback, the calls
dispatched with `Function.options(...)` and `@endpoint.function(...)` defaults. A delayed
call first runs no earlier than its time, also when the scheduler is killed (SIGKILL) and
started again in between; a function's max_attempts and per-attempt timeout decide its
attempts; a workflow that makes the same keyed call twice runs it once."""

from __future__ import annotations

import contextlib
import datetime
import json
import runpy
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, Status
from dispatchlet.core.keys import private_key_base64, public_key_base64
from postgres_server import fresh_database
from test_scheduler_processes import API_KEY, Process, environment

pytestmark = pytest.mark.slow

WAIT = 60.0  # the longest any step may take, under load

APP = """
import json, os, time
from pathlib import Path
from dispatchlet import Endpoint, TemporaryError

endpoint = Endpoint()
LOG = Path(os.environ["APP_LOG"])


def record(entry):
    with LOG.open("a") as log:
        log.write(json.dumps(entry) + "\\n")


@endpoint.function
def note(n: int) -> int:
    record({"f": "note", "n": n, "at": time.time()})
    return n


@endpoint.function(max_attempts=2, backoff=0.1)
def flaky(n: int) -> int:
    record({"f": "flaky", "n": n})
    raise TemporaryError("not yet")


@endpoint.function(timeout=1, max_attempts=2, backoff=0.1)
def slow(n: int) -> int:
    record({"f": "slow", "n": n})
    time.sleep(20)
    return n


@endpoint.function
def charge(order: str) -> str:
    record({"f": "charge", "order": order})
    return f"charged {order}"


@endpoint.function
async def checkout(order: str) -> list:
    first = await charge.options(key=f"charge-{order}")(order)
    again = await charge.options(key=f"charge-{order}").step(order)
    return [first, again]
"""


@dataclass
class Stack:
    kind: str
    scheduler: Process
    command: list[str]
    scheduler_env: dict[str, str]
    scheduler_url: str
    endpoint_url: str
    log: Path
    folder: Path
    app: dict[str, Any]

    def client(self) -> Client:
        return Client(self.scheduler_url, API_KEY, timeout=WAIT)

    def runs(self, function: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [entry for entry in entries if entry["f"] == function]

    def function(self, name: str) -> Any:
        return self.app[name]

    def kill_and_restart(self) -> None:
        """The scheduler killed (SIGKILL: nothing flushed, nothing handed back) and
        started again on the same database, at the same URL."""
        self.scheduler.process.send_signal(signal.SIGKILL)
        self.scheduler.process.wait(WAIT)
        port = self.scheduler_url.rsplit(":", 1)[1]
        command = [*self.command[:-1], port]
        self.scheduler = Process(command, self.scheduler_env, self.folder)
        self.scheduler.wait_for(r"listening at (http://\S+)", WAIT)


@contextlib.contextmanager
def started(
    kind: str, request: pytest.FixtureRequest, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    (folder / "app.py").write_text(APP)
    log = folder / "runs.jsonl"
    key = Ed25519PrivateKey.generate()
    options: list[str] = []
    database: dict[str, str] = {}
    if kind == "postgres":
        database = {
            "DISPATCHLET_DATABASE_URL": fresh_database(request.getfixturevalue("postgres_server"))
        }
    else:
        options = ["--db", str(folder / "s.db")]
    command = [sys.executable, "-m", "dispatchlet", "scheduler", *options, "--port", "0"]
    scheduler_env = environment(
        DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY, **database
    )
    scheduler = Process(command, scheduler_env, folder)
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), APP_LOG=str(log)
        ),
        folder,
    )
    stack = None
    try:
        url = scheduler.wait_for(r"listening at (http://\S+)", WAIT).group(1)
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)", WAIT).group(1)
        # The same app in this process, to dispatch its functions with their defaults.
        monkeypatch.setenv("APP_LOG", str(log))
        app = runpy.run_path(str(folder / "app.py"))
        app["endpoint"].endpoint_url = endpoint_url
        app["endpoint"].client = Client(url, API_KEY, timeout=WAIT)
        stack = Stack(kind, scheduler, command, scheduler_env, url, endpoint_url, log, folder, app)
        yield stack
    finally:
        endpoint.stop()
        (stack.scheduler if stack is not None else scheduler).stop()


@pytest.fixture(params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    with started(request.param, request, tmp_path, monkeypatch) as running:
        yield running


def test_a_delayed_call_starts_no_earlier_than_its_time_across_a_scheduler_kill(
    stack: Stack,
) -> None:
    note = stack.function("note")
    # Far enough ahead that the scheduler is killed before either may start, however
    # loaded the machine. Times are compared on the scheduler's clock (what it records),
    # which need not be this process's wall clock to the millisecond.
    delayed = note.options(delay=datetime.timedelta(seconds=10)).dispatch(1)
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=11)
    scheduled = note.options(at=at).dispatch(2)
    now = note.dispatch(3)
    client = stack.client()
    assert client.wait(now, timeout=WAIT).status is Status.OK
    waiting = [client.get(i) for i in (delayed, scheduled)]
    assert [info.state for info in waiting] == ["ready", "ready"]
    due = waiting[0].created_at + datetime.timedelta(seconds=10)
    assert waiting[0].ready_at is not None
    assert abs(waiting[0].ready_at - due) < datetime.timedelta(milliseconds=1)
    assert waiting[1].ready_at is not None
    assert abs(waiting[1].ready_at - at) < datetime.timedelta(milliseconds=1)
    stack.kill_and_restart()
    client = stack.client()
    first_attempts = []
    for dispatch_id in (delayed, scheduled):
        info = client.wait(dispatch_id, timeout=WAIT)
        assert info.status is Status.OK, info
        assert info.attempts_total == 1
        first_attempts.append(info.attempts_history[0].started_at)
    assert first_attempts[0] >= waiting[0].ready_at
    assert first_attempts[1] >= waiting[1].ready_at
    assert sorted(entry["n"] for entry in stack.runs("note")) == [1, 2, 3]


def test_a_functions_max_attempts_ends_its_call_after_that_many(stack: Stack) -> None:
    dispatch_id = stack.function("flaky").dispatch(7)
    info = stack.client().wait(dispatch_id, timeout=WAIT)
    assert info.status is Status.TEMPORARY_ERROR
    assert info.attempts_total == 2
    assert len(stack.runs("flaky")) == 2
    # options() overrides the function's default, per call.
    again = stack.function("flaky").options(max_attempts=3).dispatch(8)
    assert stack.client().wait(again, timeout=WAIT).attempts_total == 3


def test_a_per_attempt_timeout_cuts_a_slow_attempt(stack: Stack) -> None:
    dispatch_id = stack.function("slow").dispatch(1)
    info = stack.client().wait(dispatch_id, timeout=WAIT)
    assert info.status is Status.TIMEOUT
    assert info.attempts_total == 2
    assert len(stack.runs("slow")) == 2


def test_the_same_key_twice_in_a_workflow_gives_one_child(stack: Stack) -> None:
    dispatch_id = stack.function("checkout").dispatch("o-17")
    info = stack.client().wait(dispatch_id, timeout=WAIT)
    assert info.status is Status.OK, info
    assert info.output == ["charged o-17", "charged o-17"]
    assert [entry["order"] for entry in stack.runs("charge")] == ["o-17"]
    # The key is known to Dispatch too: the same key again starts nothing.
    charge = stack.function("charge")
    children = list(stack.client().list(parent_dispatch_id=dispatch_id))
    assert len(children) == 2
    keyed = charge.options(key="charge-o-17").dispatch("o-17")
    assert keyed in {child.dispatch_id for child in children}
    assert len(stack.runs("charge")) == 1


def dispatchlet(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = environment(
        DISPATCH_API_URL=stack.scheduler_url,
        DISPATCH_API_KEY=API_KEY,
        DISPATCH_ENDPOINT_URL=stack.endpoint_url,
    )
    return subprocess.run(
        [sys.executable, "-m", "dispatchlet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
        check=False,
    )


def test_the_cli_dispatches_with_a_delay_and_a_policy(stack: Stack) -> None:
    delayed = dispatchlet(stack, "dispatch", "note", "4", "--delay", "10m")
    assert delayed.returncode == 0, delayed.stderr
    info = stack.client().get(delayed.stdout.strip())
    assert info.state == "ready"
    assert info.ready_at is not None
    waited = info.ready_at - info.created_at
    assert abs(waited - datetime.timedelta(minutes=10)) < datetime.timedelta(milliseconds=1)
    # Its expiration counts from when it may start.
    assert info.expires_at - info.ready_at >= datetime.timedelta(minutes=10)
    flaky = dispatchlet(stack, "dispatch", "flaky", "9", "--max-attempts", "3", "--wait")
    assert flaky.returncode == 1, flaky.stderr
    assert [entry["n"] for entry in stack.runs("flaky")] == [9, 9, 9]
    slow = dispatchlet(
        stack, "dispatch", "slow", "2", "--timeout", "2s", "--max-attempts", "1", "--wait"
    )
    assert slow.returncode == 1, slow.stderr
    assert "TIMEOUT" in slow.stdout + slow.stderr
    assert len(stack.runs("slow")) == 1
