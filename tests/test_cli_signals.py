"""Stopping the long-running commands (serve, scheduler, dev) as users and service
managers do: SIGINT from a shell that started them in the background (SIGINT ignored),
SIGTERM and SIGINT to PID 1 of a container, a second Ctrl+C while attempts are in flight.
Real processes on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from support import as_pid_one, ignoring_sigint, namespace_init
from test_scheduler_processes import Process, environment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="PID namespaces and POSIX signals"),
]

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello.py")
EXIT_TIMEOUT = 30.0
API_KEY = "signals-test-key"

BLOCKING_APP = """
import os, time
from pathlib import Path
from dispatchlet import Endpoint

endpoint = Endpoint()
HERE = Path(os.environ["BLOCK_DIR"])


@endpoint.function
def block() -> str:
    (HERE / "started").touch()
    deadline = time.monotonic() + 120
    while not (HERE / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"
"""


def dispatchlet(*args: str) -> list[str]:
    return [sys.executable, "-m", "dispatchlet", *args]


def long_running(command: str, folder: Path) -> tuple[list[str], str]:
    """The command line of ``command`` on free ports, and the line that says it is up."""
    if command == "serve":
        return dispatchlet("serve", HELLO, "--port", "0"), r"Press Ctrl\+C to stop"
    if command == "scheduler":
        db = str(folder / "s.db")
        return dispatchlet("scheduler", "--insecure", "--db", db, "--port", "0"), "listening at"
    db = str(folder / "dev.db")
    line = dispatchlet("dev", HELLO, "--port", "0", "--scheduler-port", "0", "--db", db)
    return line, r"Press Ctrl\+C to stop"


def wait_exit(process: Process, timeout: float = EXIT_TIMEOUT) -> int:
    try:
        return process.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running {timeout} s after the signal:\n{''.join(process.drained())}"
        ) from None


def wait_for_file(path: Path, process: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or process.process.poll() is not None:
            output = "".join(process.drained())
            raise AssertionError(f"no {path.name} within {timeout} s:\n{output}")
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["serve", "scheduler", "dev"])
def test_sigint_stops_a_command_started_with_sigint_ignored(command: str, tmp_path: Path) -> None:
    line, ready = long_running(command, tmp_path)
    # As `dispatchlet serve app.py &` in a script: SIGINT is ignored when it starts.
    process = Process(ignoring_sigint(line), environment(), tmp_path)
    try:
        process.wait_for(ready)
        process.process.send_signal(signal.SIGINT)
        assert wait_exit(process) == 130
        assert f"dispatchlet {command}: stopped" in "".join(process.drained())
    finally:
        process.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["serve", "scheduler", "dev"])
def test_a_command_running_as_pid_1_stops_on_a_signal(
    command: str, signum: int, tmp_path: Path
) -> None:
    line, ready = long_running(command, tmp_path)
    # PID 1 of a PID namespace, as in a container: the kernel drops a signal it has no
    # handler for. If unshare is not permitted here, this fails: it does not skip.
    process = Process(as_pid_one(line), environment(), tmp_path)
    try:
        process.wait_for(ready)
        os.kill(namespace_init(process.process.pid), signum)
        # unshare exits with the status of the command it ran.
        assert wait_exit(process) == (130 if signum == signal.SIGINT else 0)
        assert f"dispatchlet {command}: stopped" in "".join(process.drained())
    finally:
        process.stop()


@pytest.fixture
def blocking_app(tmp_path: Path) -> Iterator[Path]:
    """A folder with app.py, whose function ``block`` runs until the file ``release``
    appears beside it (created when the test ends)."""
    (tmp_path / "app.py").write_text(BLOCKING_APP)
    try:
        yield tmp_path
    finally:
        (tmp_path / "release").touch()


def test_the_scheduler_stops_in_two_stages(blocking_app: Path) -> None:
    folder = blocking_app
    key = Ed25519PrivateKey.generate()
    endpoint = Process(
        dispatchlet("serve", "app.py", "--port", "0"),
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), BLOCK_DIR=str(folder)
        ),
        folder,
    )
    scheduler = Process(
        dispatchlet("scheduler", "--db", str(folder / "s.db"), "--port", "0"),
        environment(DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY),
        folder,
    )
    try:
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        scheduler_url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        with Client(scheduler_url, API_KEY) as client:
            client.dispatch([call_pb2.Call(function="block", endpoint=endpoint_url)])
        wait_for_file(folder / "started", scheduler)

        scheduler.process.send_signal(signal.SIGINT)
        scheduler.wait_for(
            r"dispatchlet scheduler: stopping: waiting up to 10 s for 1 attempt\(s\) in "
            r"flight; Ctrl\+C again stops at once"
        )
        scheduler.process.send_signal(signal.SIGINT)
        assert wait_exit(scheduler) == 130
        output = "".join(scheduler.drained())
        assert "dispatchlet scheduler: stopped at once" in output
        # Not the graceful stop's end after the grace period.
        assert "attempts still running after" not in output
    finally:
        scheduler.stop()
        endpoint.stop()


def test_dev_stops_in_two_stages(blocking_app: Path) -> None:
    folder = blocking_app
    process = Process(
        dispatchlet(
            "dev",
            "app.py",
            "--port",
            "0",
            "--scheduler-port",
            "0",
            "--db",
            str(folder / "dev.db"),
        ),
        environment(BLOCK_DIR=str(folder)),
        folder,
    )
    try:
        exports = {}
        for _ in range(3):
            match = process.wait_for(r"export (DISPATCH_\w+)=(\S+)")
            exports[match.group(1)] = match.group(2).strip("'")
        process.wait_for(r"Press Ctrl\+C to stop")
        with Client(exports["DISPATCH_API_URL"], exports["DISPATCH_API_KEY"]) as client:
            call = call_pb2.Call(function="block", endpoint=exports["DISPATCH_ENDPOINT_URL"])
            client.dispatch([call])
        wait_for_file(folder / "started", process)

        process.process.send_signal(signal.SIGINT)
        process.wait_for(
            r"dispatchlet dev: stopping: waiting up to 10 s for 1 attempt\(s\) in flight; "
            r"Ctrl\+C again stops at once"
        )
        process.process.send_signal(signal.SIGINT)
        assert wait_exit(process) == 130
        output = "".join(process.drained())
        assert "dispatchlet dev: stopped at once" in output
        assert "attempts still running after" not in output
    finally:
        process.stop()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_dev_with_a_function_at_once(
    blocking_app: Path, signum: signal.Signals, status: int
) -> None:
    folder = blocking_app
    process = Process(
        ignoring_sigint(dispatchlet("dev", "app.py", "block")),
        environment(BLOCK_DIR=str(folder)),
        folder,
    )
    try:
        wait_for_file(folder / "started", process)
        process.process.send_signal(signum)
        # The function still runs (until the test ends): dev does not wait for it, and
        # says with its exit status that the call did not end.
        assert wait_exit(process) == status
        output = "".join(process.drained())
        assert re.search(r"dispatchlet dev: interrupted \(dispatch id [0-9a-f]{32}\)", output)
        assert "Traceback" not in output
    finally:
        process.stop()
