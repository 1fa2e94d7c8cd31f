"""Concurrency limits as users meet them: three `dispatchlet scheduler` processes on one
PostgreSQL database and an endpoint served by `dispatchlet serve` (32 threads) whose
functions record each run's entry and exit. A function declared with
``@endpoint.function(concurrency=3)`` never has more than 3 runs at once, counted on the
endpoint's side, while another function's calls run meanwhile; with
``concurrency_per_key=1``, each key's calls run one at a time; with ``rate_limit=(3, 6)``,
no more than 3 attempts start in any 6 s."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.core.keys import private_key_base64, public_key_base64
from postgres_server import fresh_database
from test_scheduler_processes import API_KEY, Process, environment

pytestmark = pytest.mark.slow

WAIT = 60.0  # the longest any step may take, under load
SCHEDULERS = 3

APP = """
import json, os, threading, time
from pathlib import Path
from dispatchlet import Endpoint

endpoint = Endpoint()
lock = threading.Lock()
in_flight: dict[str, int] = {}


def record(name: str, key: str, change: int) -> None:
    with lock:
        in_flight[name] = in_flight.get(name, 0) + change
        line = {"function": name, "key": key, "change": change, "in_flight": in_flight[name]}
        with Path(os.environ["APP_LOG"]).open("a") as log:
            log.write(json.dumps(line) + "\\n")


def held(name: str, key: str, n: int) -> int:
    record(name, key, 1)
    try:
        # Held until the test lets them go (or a minute passed): meanwhile only the
        # limit decides how many more start.
        release = Path(os.environ["APP_RELEASE"])
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return n
    finally:
        record(name, key, -1)


@endpoint.function(concurrency=3)
def limited(n: int) -> int:
    return held("limited", "", n)


@endpoint.function(concurrency_per_key=1)
def per_customer(customer: str, n: int) -> int:
    return held("per_customer", customer, n)


@endpoint.function(rate_limit=(3, 6))
def paced(n: int) -> int:
    record("paced", "", 1)
    record("paced", "", -1)
    return n


@endpoint.function
def free(n: int) -> int:
    record("free", "", 1)
    record("free", "", -1)
    return n
"""


@dataclass
class Stack:
    schedulers: list[str]
    app: ModuleType
    log: Path
    release: Path

    def client(self, index: int = 0) -> Client:
        return Client(self.schedulers[index], API_KEY, timeout=WAIT)

    def lines(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def entered(self, function: str) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e["function"] == function and e["change"] == 1]

    def until(self, what: str, check: Any) -> None:
        """Wait for ``check()`` to hold, at most WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while not check():
            assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
            time.sleep(0.05)


def load_app(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"limits_app_{id(path)}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def started(
    request: pytest.FixtureRequest, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    (folder / "app.py").write_text(APP)
    log, release = folder / "runs.jsonl", folder / "release"
    key = Ed25519PrivateKey.generate()
    url = fresh_database(request.getfixturevalue("postgres_server"))
    env = environment(
        DISPATCH_SIGNING_KEY=private_key_base64(key),
        DISPATCH_API_KEY=API_KEY,
        DISPATCHLET_DATABASE_URL=url,
    )
    command = [sys.executable, "-m", "dispatchlet", "scheduler", "--port", "0"]
    processes = [Process(command, env, folder) for _ in range(SCHEDULERS)]
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0", "--threads", "32"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()),
            APP_LOG=str(log),
            APP_RELEASE=str(release),
        ),
        folder,
    )
    try:
        urls = [p.wait_for(r"listening at (http://\S+)", WAIT).group(1) for p in processes]
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)", WAIT).group(1)
        # The app as the code that dispatches its calls imports it.
        monkeypatch.setenv("DISPATCH_ENDPOINT_URL", endpoint_url)
        monkeypatch.setenv("DISPATCH_API_URL", urls[0])
        monkeypatch.setenv("DISPATCH_API_KEY", API_KEY)
        yield Stack(urls, load_app(folder / "app.py"), log, release)
    finally:
        release.touch()
        endpoint.stop()
        for process in processes:
            process.stop()


def peak(lines: list[dict[str, Any]], function: str) -> int:
    return max((e["in_flight"] for e in lines if e["function"] == function), default=0)


def test_a_concurrency_limit_holds_across_scheduler_processes(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with started(request, tmp_path, monkeypatch) as stack:
        app = stack.app
        # Dispatched through each scheduler in turn: every process claims them.
        limited = [
            stack.client(i % SCHEDULERS).dispatch([app.limited.build_call(i)])[0] for i in range(12)
        ]
        stack.until("3 runs of limited started", lambda: len(stack.entered("limited")) >= 3)
        # While those 3 hold their slots, another function's calls all run.
        free = stack.client(1).dispatch([app.free.build_call(i) for i in range(20)])
        for dispatch_id in free:
            assert stack.client(2).wait(dispatch_id, timeout=WAIT).output is not None
        assert len(stack.entered("limited")) == 3
        waiting = stack.client().get(limited[-1])
        assert (waiting.done, waiting.attempts) == (False, 0)
        stack.release.touch()
        outputs = sorted(stack.client().wait(i, timeout=WAIT).output for i in limited)
        assert outputs == list(range(12))
        lines = stack.lines()
        assert len(stack.entered("limited")) == 12
        assert peak(lines, "limited") == 3


def test_a_limit_per_key_runs_each_keys_calls_one_at_a_time(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with started(request, tmp_path, monkeypatch) as stack:
        app = stack.app
        calls = [
            app.per_customer.options(concurrency_key=customer).build_call(customer, n)
            for n in range(4)
            for customer in ("c1", "c2", "c3")
        ]
        ids = stack.client(0).dispatch(calls)
        stack.until(
            "one run of each customer started", lambda: len(stack.entered("per_customer")) >= 3
        )
        # Each customer's first run holds its key: the others wait.
        assert sorted(e["key"] for e in stack.entered("per_customer")) == ["c1", "c2", "c3"]
        stack.release.touch()
        for dispatch_id in ids:
            assert stack.client(1).wait(dispatch_id, timeout=WAIT).done
        running: dict[str, int] = {}
        for line in stack.lines():
            if line["function"] == "per_customer":
                running[line["key"]] = running.get(line["key"], 0) + line["change"]
                assert running[line["key"]] <= 1, line
        assert len(stack.entered("per_customer")) == 12


def test_a_rate_limit_holds_across_scheduler_processes(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, period = 3, 6.0
    # A start is timed when its attempt begins, a moment after the claim that counted it.
    slack = 2.0
    with started(request, tmp_path, monkeypatch) as stack:
        app = stack.app
        # Dispatched through each scheduler in turn: every process claims them.
        ids = [
            stack.client(i % SCHEDULERS).dispatch([app.paced.build_call(i)])[0] for i in range(9)
        ]
        infos = [stack.client(1).wait(dispatch_id, timeout=WAIT) for dispatch_id in ids]
        assert sorted(info.output for info in infos) == list(range(9))
        starts = sorted(
            attempt.started_at.timestamp() for info in infos for attempt in info.attempts_history
        )
        assert len(starts) >= 9
        # At most 3 in any 6 s: the 4th start after any one comes a period later or more.
        gaps = [starts[i + count] - starts[i] for i in range(len(starts) - count)]
        assert min(gaps) >= period - slack, gaps
        assert len(stack.entered("paced")) == len(starts)
