"""`dispatchlet dispatch --wait` and `dispatchlet calls list|show|wait` as a user runs
them: a real scheduler and endpoint on loopback, the command as a process."""

from __future__ import annotations

import datetime
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatchlet.workflow.v1 import journal_pb2
from support import at_a_terminal
from test_dev_loop import closed_port
from test_scheduler_processes import Process, environment

pytestmark = pytest.mark.slow

API_KEY = "cli-test-key"
WAIT = 60.0  # the longest any step here may take, under load

APP = """
from datetime import timedelta
from dispatchlet import Endpoint, sleep

endpoint = Endpoint()


@endpoint.function
def greet(name: str) -> str:
    return f"Hello, {name}!"


@endpoint.function
def divide(a: float, b: float) -> float:
    if b == 0:
        raise ValueError("cannot divide by zero")
    return a / b


@endpoint.function
def double(n: int) -> int:
    return 2 * n


@endpoint.function
async def doubled_later(n: int) -> int:
    doubled = await double.step(n)
    await sleep(timedelta(hours=1))
    return doubled
"""


@dataclass
class Setup:
    env: dict[str, str]
    cwd: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatchlet", *args],
            env=self.env if env is None else env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            # Ctrl+C is what a user at a terminal sends: SIGINT reaches the command.
            at_a_terminal([sys.executable, "-m", "dispatchlet", *args]),
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def client(self) -> Client:
        return Client(self.env["DISPATCH_API_URL"], API_KEY)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("calls")
    (folder / "app.py").write_text(APP)
    key = Ed25519PrivateKey.generate()
    scheduler = Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "scheduler",
            "--db",
            str(folder / "calls.db"),
            "--port",
            "0",
            "--backoff",
            "0.1",
            "--backoff-cap",
            "0.5",
            # A call to a closed port keeps failing for as long as a test watches it.
            "--max-attempts",
            "1000000",
        ],
        environment(DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY),
        folder,
    )
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"],
        environment(DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key())),
        folder,
    )
    try:
        scheduler_url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        env = environment(
            DISPATCH_API_URL=scheduler_url,
            DISPATCH_API_KEY=API_KEY,
            DISPATCH_ENDPOINT_URL=endpoint_url,
        )
        yield Setup(env, folder)
    finally:
        endpoint.stop()
        scheduler.stop()


class Lines:
    """The lines of a stream, read as they come by a thread, so every wait is bounded."""

    def __init__(self, stream: object) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            for line in stream:  # type: ignore[attr-defined]
                self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.seen)}")

    def rest(self) -> str:
        while (line := self._queue.get(timeout=WAIT)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def interrupted_after_two_failures(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for the second failed attempt on stderr, then Ctrl+C: the dispatch id the
    command told and all it wrote on stderr."""
    stderr = Lines(process.stderr)
    dispatch_id = stderr.wait_for(r"waiting for ([0-9a-f]{32})").group(1)
    first = stderr.wait_for(r"attempt (\d+) failed: TCP_ERROR \S+")
    second = stderr.wait_for(r"attempt (\d+) failed: TCP_ERROR .*; next try in \S+")
    assert int(second.group(1)) == int(first.group(1)) + 1, stderr.seen
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=WAIT) == 130
    return dispatch_id, stderr.rest()


def test_wait_tells_each_failed_attempt_and_stops_on_ctrl_c(setup: Setup) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    process = setup.start("dispatch", "greet", "World", "--endpoint", nowhere, "--wait")
    dispatch_id, stderr = interrupted_after_two_failures(process)
    assert process.stdout is not None
    assert process.stdout.read() == ""
    assert "Traceback" not in stderr
    assert f"the call goes on. Follow it with: dispatchlet calls wait {dispatch_id}" in stderr

    # `calls wait` follows it the same way, from where it is.
    again = setup.start("calls", "wait", dispatch_id)
    assert interrupted_after_two_failures(again)[0] == dispatch_id
    assert setup.run("calls", "cancel", dispatch_id).stdout.strip() == "cancelled 1 call(s)"


def test_list_is_newest_first_by_pages_with_a_cursor(setup: Setup) -> None:
    names = [f"page-{n}" for n in range(3)]
    ids = [setup.run("dispatch", "greet", name).stdout.strip() for name in names]
    failed = setup.run("dispatch", "divide", "[1, 0]", "--wait")
    assert failed.returncode == 1, failed.stderr
    with setup.client() as client:
        for dispatch_id in ids:
            assert client.wait(dispatch_id, timeout=WAIT).done

    first = setup.run("calls", "list", "--function", "greet", "--limit", "2")
    assert first.returncode == 0, first.stderr
    header, *rows = first.stdout.splitlines()
    assert header.split() == [
        "DISPATCH",
        "ID",
        "CREATED",
        "STATE",
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        "FUNCTION",
        "ERROR",
    ]
    assert [row.split()[0] for row in rows] == [ids[2], ids[1]]
    row = rows[0].split()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[1])
    assert row[2:5] == ["done", "OK", "1"]
    assert re.fullmatch(r"\d+(ms|\.\ds)", row[5])
    assert row[6] == "greet"
    cursor = re.fullmatch(r"more: --cursor (\S+)\n", first.stderr)
    assert cursor, first.stderr

    second = setup.run(
        "calls", "list", "--function", "greet", "--limit", "2", "--cursor", cursor[1]
    )
    assert [row.split()[0] for row in second.stdout.splitlines()[1:]][:1] == [ids[0]]

    failures = setup.run("calls", "list", "--status", "failed", "--function", "divide")
    # Every failed divide so far (other tests of this module make some too).
    failed_rows = failures.stdout.splitlines()[1:]
    assert failed_rows, failures.stderr
    for row_text in failed_rows:
        assert "INVALID_ARGUMENT" in row_text
        assert row_text.endswith("ValueError: cannot divide by zero")
    assert setup.run("calls", "list", "--status", "ok", "--function", "divide").stdout == ""

    lines = setup.run("calls", "list", "--function", "greet", "--limit", "2", "--json")
    objects = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [(o["dispatch_id"], o["status"], o["output"]) for o in objects] == [
        (ids[2], "OK", "Hello, page-2!"),
        (ids[1], "OK", "Hello, page-1!"),
    ]
    assert lines.stderr.startswith("more: --cursor ")


def test_list_into_a_closed_pipe_ends_quietly(setup: Setup) -> None:
    assert setup.run("dispatch", "greet", "pipe").returncode == 0
    process = setup.start("calls", "list")
    assert process.stdout is not None
    process.stdout.close()  # as `| head -1` does once it has its line
    assert process.wait(timeout=WAIT) == 141
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr


def _suspended_on_its_timer(client: Client, dispatch_id: str) -> None:
    """Wait (bounded) until the workflow has its step's result and sleeps."""
    deadline = time.monotonic() + WAIT
    info = None
    while time.monotonic() < deadline:
        info = client.get(dispatch_id)
        state = info.coroutine_state
        steps = journal_pb2.Journal.FromString(state.value).steps if state is not None else []
        if info.state == "waiting" and len(steps) == 2:
            return
        time.sleep(0.1)
    raise AssertionError(f"{dispatch_id} did not suspend on its timer: {info}")


def test_show_decodes_input_output_and_a_workflows_journal(setup: Setup) -> None:
    dispatch_id = setup.run("dispatch", "doubled_later", "21").stdout.strip()
    with setup.client() as client:
        _suspended_on_its_timer(client, dispatch_id)

    shown = setup.run("calls", "show", dispatch_id)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert re.search(r"^input\s+21$", text, re.M), text
    assert re.search(r"^state\s+waiting$", text, re.M), text
    assert re.search(r"^journal\s+doubled_later: 2 step\(s\), 1 outcome\(s\) arrived$", text, re.M)
    assert re.search(r"^  slot 0 +call +double +done: 42$", text, re.M), text
    assert re.search(r"^  slot 1 +sleep +sleeping until \d{4}-\S+Z$", text, re.M), text
    assert "\\x" not in text

    as_json = json.loads(setup.run("calls", "show", dispatch_id, "--json").stdout)
    assert as_json["input"] == 21
    journal = as_json["coroutine_state"]["journal"]
    assert journal["function"] == "doubled_later"
    assert journal["input"] == 21
    assert journal["steps"][0] == {
        "slot": 0,
        "kind": "call",
        "function": "double",
        "state": "done",
        "output": 42,
    }
    assert (journal["steps"][1]["kind"], journal["steps"][1]["state"]) == ("sleep", "sleeping")

    failed_id = setup.run("dispatch", "divide", '{"a": 1, "b": 0}').stdout.strip()
    setup.run("calls", "wait", failed_id)
    failed = setup.run("calls", "show", failed_id).stdout
    assert re.search(r'^input\s+\{"a": 1, "b": 0\}$', failed, re.M), failed
    assert re.search(r"^status\s+INVALID_ARGUMENT$", failed, re.M), failed
    assert re.search(r"^error\s+ValueError: cannot divide by zero$", failed, re.M), failed
    assert setup.run("calls", "cancel", dispatch_id).returncode == 0


def test_wait_for_several_calls_prints_each_in_the_order_given(setup: Setup) -> None:
    first = setup.run("dispatch", "greet", "Ada").stdout.strip()
    failed = setup.run("dispatch", "divide", "[1, 0]").stdout.strip()
    second = setup.run("dispatch", "double", "21").stdout.strip()
    result = setup.run("calls", "wait", second, failed, first)
    # Any call that failed fails the command; each is told in the order given.
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [f"{second}\t42", f'{first}\t"Hello, Ada!"']
    assert "waiting for 3 calls" in result.stderr
    assert f"{failed} INVALID_ARGUMENT after 1 attempt(s): ValueError: cannot divide by zero" in (
        result.stderr
    )
    as_json = setup.run("calls", "wait", first, second, "--json")
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert [(c["dispatch_id"], c["output"]) for c in shown] == [
        (first, "Hello, Ada!"),
        (second, 42),
    ]
    unknown = setup.run("calls", "wait", first, "0" * 32)
    assert unknown.returncode == 2
    assert f"not_found: no call '{'0' * 32}'" in unknown.stderr


def test_a_missing_api_key_is_named(setup: Setup) -> None:
    env = {k: v for k, v in setup.env.items() if k != "DISPATCH_API_KEY"}
    result = setup.run("calls", "list", env=env)
    assert result.returncode == 2
    assert "unauthenticated: " in result.stderr
    assert "set DISPATCH_API_KEY" in result.stderr
    assert "`dispatchlet dev` prints" in result.stderr
    wrong = setup.run("calls", "list", env={**env, "DISPATCH_API_KEY": "wrong"})
    assert "invalid API key" in wrong.stderr
    assert "`dispatchlet dev` prints" not in wrong.stderr


def test_list_since_and_until_a_time(setup: Setup) -> None:
    ids = [setup.run("dispatch", "greet", f"timed-{n}").stdout.strip() for n in range(3)]
    with setup.client() as client:
        created = [client.get(dispatch_id).created_at for dispatch_id in ids]

    def listed(*args: str) -> list[str]:
        result = setup.run("calls", "list", "--function", "greet", *args)
        assert result.returncode == 0, result.stderr
        return [row.split()[0] for row in result.stdout.splitlines()[1:]]

    # In UTC unless the time names its offset; at or after --since, before --until.
    assert listed("--since", created[1].replace(tzinfo=None).isoformat()) == [ids[2], ids[1]]
    assert listed("--since", created[1].isoformat(), "--until", created[2].isoformat()) == [ids[1]]
    before = listed(
        "--until",
        created[1].astimezone(datetime.timezone(datetime.timedelta(hours=-5))).isoformat(),
    )
    assert before[0] == ids[0]
    assert ids[1] not in before
    refused = setup.run("calls", "list", "--since", "yesterday")
    assert refused.returncode == 2
    assert "'yesterday' is not a time" in refused.stderr
