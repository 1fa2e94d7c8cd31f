"""The local server behind `dispatchlet call --app` and `dispatchlet dev`: started, called
and stopped hundreds of times, it never hangs and never prints a traceback, also when a
function still runs as it stops."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatchlet import Endpoint, Response
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.serving.thread_server import serving
from support import output, run_request

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CYCLES = 300
ABANDONED_CYCLES = 20
COMMAND_RUNS = 25
HELLO = str(ROOT / "examples" / "hello.py")


def post(url: str, request: function_pb2.RunRequest, timeout: float = 30) -> bytes:
    outgoing = urllib.request.Request(
        url + RUN_PATH,
        data=request.SerializeToString(),
        headers={"Content-Type": PROTO},
        method="POST",
    )
    with urllib.request.urlopen(outgoing, timeout=timeout) as answer:
        assert answer.status == 200
        body: bytes = answer.read()
        return body


@pytest.fixture
def problems(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What would print a traceback: an exception no thread caught, and error records
    (the server logs a connection's failure as one)."""
    found: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        found.append(f"{args.thread}: {args.exc_type.__name__}: {args.exc_value}")

    class Errors(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(f"{record.name}: {record.getMessage()}")

    monkeypatch.setattr(threading, "excepthook", hook)
    handler = Errors(level=logging.ERROR)
    logging.getLogger().addHandler(handler)
    try:
        yield found
    finally:
        logging.getLogger().removeHandler(handler)


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dispatchlet-server"]


def test_start_call_stop_cycles_leave_nothing_behind(
    problems: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    endpoint = Endpoint(insecure=True)

    @endpoint.function
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    for _ in range(CYCLES):
        with serving(endpoint) as url:
            body = post(url, run_request("greet", "World"))
        assert output(Response(200, [("Content-Type", PROTO)], body)) == "Hello, World!"
        # Stopped when the block ends: its loop thread is gone, not left to the exit.
        assert server_threads() == []
    assert problems == []
    assert "Traceback" not in capfd.readouterr().err


def test_stopping_while_a_function_runs_neither_waits_nor_breaks(
    problems: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    endpoint = Endpoint(insecure=True)
    started = threading.Semaphore(0)
    release = threading.Event()

    @endpoint.function
    def hold() -> str:
        started.release()
        release.wait(60)
        return "done"

    callers = []
    for _ in range(ABANDONED_CYCLES):
        release.clear()
        with serving(endpoint) as url:
            caller = threading.Thread(target=_call_ignoring_errors, args=(url,))
            caller.start()
            callers.append(caller)
            assert started.acquire(timeout=30), "the function did not start"
        # The function still runs: it finishes after the server stopped, and its
        # connection's thread writes its answer to a connection shut down.
        assert server_threads() == []
        release.set()
    for caller in callers:
        caller.join(timeout=60)
        assert not caller.is_alive()
    # Each abandoned function's connection thread ends once its function returns.
    for worker in [t for t in threading.enumerate() if t.name == "dispatchlet-connection"]:
        worker.join(timeout=30)
        assert not worker.is_alive()
    assert problems == []
    assert "Traceback" not in capfd.readouterr().err


def _call_ignoring_errors(url: str) -> None:
    # The server stops under the call: its connection is shut down.
    with contextlib.suppress(OSError):
        post(url, run_request("hold"), timeout=60)


def test_call_app_never_prints_a_traceback(tmp_path: Path) -> None:
    for run in range(COMMAND_RUNS):
        result = subprocess.run(
            [sys.executable, "-m", "dispatchlet", "call", "--app", HELLO, "greet", "World"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stdout.strip()) == (0, '"Hello, World!"'), (
            run,
            result.stderr,
        )
        assert result.stderr == "", (run, result.stderr)
