"""Wall-clock jumps under real scheduler processes (libfaketime, Debian's ``faketime``):
a call never runs beside itself, the ready backlog never stalls, and no call expires
early; PostgreSQL processes whose wall clocks disagree keep the database's time.

The machine's clock jumps for the scheduler and its endpoint alike (both read the same
faketime file); the monotonic clock does not move (``DONT_FAKE_MONOTONIC``), as with a
real jump."""

from __future__ import annotations

import glob
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Status
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from postgres_server import fresh_database
from test_scheduler_processes import API_KEY, Loop, Process, environment

pytestmark = pytest.mark.slow

BOUND = 45.0
"""The longest any wait of these tests lasts, in seconds (a stall lasts 600); under the
API's longest Wait and its client's timeout."""

APP = """
import json, os, threading, time
from pathlib import Path
from dispatchlet import Endpoint, RunContext

# A scheduler process ahead of this one signs requests ahead: tolerated here.
endpoint = Endpoint(clock_skew=300.0)
LOG = Path(os.environ["APP_LOG"])
RELEASE = LOG.with_suffix(".release")


def note(key, context):
    with LOG.open("a") as log:
        log.write(json.dumps({"key": key, "dispatch_id": context.dispatch_id}) + "\\n")


@endpoint.function
def hold(key: str, context: RunContext) -> str:
    note(key, context)
    deadline = time.monotonic() + 120
    pause = threading.Event()  # time.sleep fails under libfaketime once the clock moved
    while not RELEASE.exists() and time.monotonic() < deadline:
        pause.wait(0.02)
    return key


@endpoint.function
def quick(key: str, context: RunContext) -> str:
    note(key, context)
    return key
"""


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.fail(
            "the clock-jump tests need libfaketime: apt-get install faketime", pytrace=False
        )
    return found[-1]


def faked(**settings: str) -> dict[str, str]:
    """The environment of a process whose wall clock libfaketime moves (``settings``:
    FAKETIME or FAKETIME_TIMESTAMP_FILE), its monotonic clock left alone."""
    return {"LD_PRELOAD": libfaketime(), "DONT_FAKE_MONOTONIC": "1", **settings}


# Room for calls held and their duplicates, and calls beside them.
SERVE_OPTIONS = ["--port", "0", "--threads", "8"]
# An attempt's lease lasts its timeout and 30 s more: 90 s here, under the jumps below.
ATTEMPT = ["--attempt-timeout", "60"]
# One attempt at a time: what is dispatched behind the held call waits ready.
ONE_AT_A_TIME = ["--max-per-destination", "1"]


class Machine:
    """An endpoint and scheduler processes on loopback, sharing one key and one log."""

    def __init__(self, folder: Path, stack: ExitStack) -> None:
        self.folder = folder
        self.stack = stack
        self.log = folder / "runs.jsonl"
        self.release = self.log.with_suffix(".release")
        self.jump_file = folder / "faketime"
        self.jump_file.write_text("+0\n")
        self.key = Ed25519PrivateKey.generate()
        (folder / "app.py").write_text(APP)
        self.endpoint = ""

    def jump(self, offset: str) -> None:
        """The wall clock of every process started with ``jumping`` moves to ``offset``
        from the real time (``+120``, ``-600``)."""
        self.jump_file.write_text(offset + "\n")

    @property
    def jumping(self) -> dict[str, str]:
        return faked(FAKETIME_TIMESTAMP_FILE=str(self.jump_file), FAKETIME_NO_CACHE="1")

    def start(self, command: list[str], env: dict[str, str]) -> Process:
        process = Process(command, env, self.folder)
        self.stack.callback(process.stop)
        return process

    def serve(self, clock: dict[str, str]) -> None:
        endpoint = self.start(
            [sys.executable, "-m", "dispatchlet", "serve", "app.py", *SERVE_OPTIONS],
            environment(
                DISPATCH_VERIFICATION_KEY=public_key_base64(self.key.public_key()),
                APP_LOG=str(self.log),
                **clock,
            ),
        )
        self.endpoint = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)

    def scheduler(self, options: list[str], clock: dict[str, str]) -> tuple[Process, Loop]:
        scheduler = self.start(
            [sys.executable, "-m", "dispatchlet", "scheduler", "--port", "0", *options],
            environment(
                DISPATCH_SIGNING_KEY=private_key_base64(self.key), DISPATCH_API_KEY=API_KEY, **clock
            ),
        )
        url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        return scheduler, Loop(url, self.endpoint, self.log)

    def runs(self, key: str) -> int:
        """How many times the function was run with ``key``."""
        if not self.log.exists():
            return 0
        lines = self.log.read_text().splitlines()
        return sum(1 for line in lines if json.loads(line)["key"] == key)

    def until(self, holds: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + BOUND
        while not holds():
            assert time.monotonic() < deadline, f"not within {BOUND:.0f} s: {what}"
            time.sleep(0.02)


@contextmanager
def machine(tmp_path: Path) -> Iterator[Machine]:
    with ExitStack() as stack:
        yield Machine(tmp_path, stack)


def call(loop: Loop, function: str, key: str, expires_in: int = 0) -> call_pb2.Call:
    built = loop.call(function, key)
    if expires_in:
        built.expiration.FromSeconds(expires_in)
    return built


def finished(loop: Loop, dispatch_id: str) -> tuple[bool, Status]:
    """Whether the call ended within ``BOUND`` seconds, and its status."""
    info = loop.wait(dispatch_id, timeout=BOUND)
    return info.done, Status(info.status)


def test_a_forward_jump_during_an_attempt_does_not_run_the_call_again(tmp_path: Path) -> None:
    with machine(tmp_path) as box:
        box.serve(box.jumping)
        scheduler, loop = box.scheduler(["--db", str(tmp_path / "s.db"), *ATTEMPT], box.jumping)
        (held,) = loop.dispatch(call(loop, "hold", "held"))
        box.until(lambda: box.runs("held") == 1, "the held call started")
        box.jump("+120")  # past the attempt's 90 s lease
        # A call dispatched after the jump runs: the engine claimed since the jump.
        (after,) = loop.dispatch(call(loop, "quick", "after"))
        assert finished(loop, after) == (True, Status.OK)
        box.release.touch()
        assert finished(loop, held) == (True, Status.OK)
        assert box.runs("held") == 1, box.log.read_text()
        scheduler.wait_for(r"the wall clock jumped forward by 1[12]\d\.\d s")


def test_a_backward_jump_does_not_stall_the_ready_backlog(tmp_path: Path) -> None:
    with machine(tmp_path) as box:
        box.serve(box.jumping)
        options = ["--db", str(tmp_path / "s.db"), *ATTEMPT, *ONE_AT_A_TIME]
        scheduler, loop = box.scheduler(options, box.jumping)
        (held,) = loop.dispatch(call(loop, "hold", "held"))
        box.until(lambda: box.runs("held") == 1, "the held call started")
        backlog = loop.dispatch(*(call(loop, "quick", f"backlog-{n}") for n in range(5)))
        box.jump("-600")
        box.release.touch()
        # Ready before the jump, ready after it: run now, not in ten minutes.
        for dispatch_id in [held, *backlog]:
            assert finished(loop, dispatch_id) == (True, Status.OK), dispatch_id
        assert [box.runs(f"backlog-{n}") for n in range(5)] == [1] * 5
        scheduler.wait_for(r"the wall clock jumped back by 60\d\.\d s")


def test_a_forward_jump_does_not_expire_calls_early(tmp_path: Path) -> None:
    with machine(tmp_path) as box:
        box.serve(box.jumping)
        options = ["--db", str(tmp_path / "s.db"), *ATTEMPT, *ONE_AT_A_TIME]
        scheduler, loop = box.scheduler(options, box.jumping)
        (held,) = loop.dispatch(call(loop, "hold", "held"))
        box.until(lambda: box.runs("held") == 1, "the held call started")
        # Ten minutes to run, of which the wall clock skips fifteen.
        waiting = loop.dispatch(
            *(call(loop, "quick", f"waiting-{n}", expires_in=600) for n in range(3))
        )
        box.jump("+900")
        box.release.touch()
        for dispatch_id in [held, *waiting]:
            assert finished(loop, dispatch_id) == (True, Status.OK), dispatch_id
        assert [box.runs(f"waiting-{n}") for n in range(3)] == [1] * 3
        assert box.runs("held") == 1, box.log.read_text()
        scheduler.wait_for(r"the wall clock jumped forward by 90\d\.\d s")


def test_a_postgres_process_ahead_takes_no_call_in_flight_of_another(
    tmp_path: Path, postgres_server: str
) -> None:
    """Two scheduler processes on one database, the second one's wall clock 90 s ahead:
    past the leases (60 s) of the first one's calls in flight, by its own clock."""
    url = fresh_database(postgres_server)
    database = {"DISPATCHLET_DATABASE_URL": url}
    options = ["--attempt-timeout", "30"]
    with machine(tmp_path) as box:
        box.serve({})
        _, first = box.scheduler(options, database)
        held = first.dispatch(*(call(first, "hold", f"held-{n}") for n in range(2)))
        box.until(lambda: box.runs("held-0") == box.runs("held-1") == 1, "held calls started")
        ahead, second = box.scheduler(options, {**database, **faked(FAKETIME="+90")})
        # Until the second process has run calls (claimed since it started).
        dispatched = 0
        while not any("attempt 1 of quick" in line for line in ahead.drained()):
            assert dispatched < 100, "the second process ran no call:\n" + "".join(ahead.output)
            (dispatch_id,) = second.dispatch(call(second, "quick", f"ahead-{dispatched}"))
            assert finished(second, dispatch_id) == (True, Status.OK)
            dispatched += 1
        box.release.touch()
        for dispatch_id in held:
            assert finished(first, dispatch_id) == (True, Status.OK), dispatch_id
        assert [box.runs(f"held-{n}") for n in range(2)] == [1, 1], box.log.read_text()
        told = re.compile(r"wall clock is 9\d\.\d s ahead of the database's")
        assert any(told.search(line) for line in ahead.drained()), "".join(ahead.output)


def test_a_restart_after_a_backward_jump_does_not_stall_the_ready_backlog(
    tmp_path: Path,
) -> None:
    """The scheduler dies with calls ready, the wall clock is set back ten minutes, and a
    scheduler starts again on the database: it runs them now, not in ten minutes."""
    with machine(tmp_path) as box:
        box.serve(box.jumping)
        database = ["--db", str(tmp_path / "s.db"), *ATTEMPT]
        first, loop = box.scheduler([*database, *ONE_AT_A_TIME], box.jumping)
        loop.dispatch(call(loop, "hold", "held"))
        box.until(lambda: box.runs("held") == 1, "the held call started")
        backlog = loop.dispatch(*(call(loop, "quick", f"backlog-{n}") for n in range(3)))
        first.process.kill()
        first.process.wait(timeout=10)
        box.jump("-600")
        # Without the cap, which the held call's lease, still in force, would fill.
        second, loop = box.scheduler(database, box.jumping)
        for dispatch_id in backlog:
            assert finished(loop, dispatch_id) == (True, Status.OK), dispatch_id
        assert [box.runs(f"backlog-{n}") for n in range(3)] == [1] * 3
        # Ten minutes, less the time between the last write and the restart.
        told = re.compile(r"the wall clock is (59|60)\d\.\d s behind the latest time")
        assert any(told.search(line) for line in second.drained()), "".join(second.output)
        box.release.touch()
