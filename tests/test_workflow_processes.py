"""Durable workflows end to end: a `dispatchlet scheduler` process and the workflow's
endpoint served by `dispatchlet serve` (waitress), on loopback, with processes killed
and restarted with edited code while workflows are in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Status
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from google.protobuf import message
from test_scheduler_processes import API_KEY, Process, environment, post

pytestmark = pytest.mark.slow

APP = """
import json, os, time
from pathlib import Path
from dispatchlet import Endpoint, PermanentError, any, gather, patched, race, sleep

endpoint = Endpoint()
LOG = Path(os.environ["APP_LOG"])
#ABOVE


def note(entry):
    with LOG.open("a") as log:
        log.write(json.dumps(entry) + "\\n")


@endpoint.function
def double(x: int) -> int:
    return 2 * x


@endpoint.function
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slow"


@endpoint.function
def fail(kind: str) -> None:
    if kind == "permanent":
        raise PermanentError("card declined")
    raise ValueError("bad amount")


@endpoint.function
async def long_haul(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await double(x + 1)
    note({"haul": n})
    if sum(1 for line in LOG.read_text().splitlines() if '"haul"' in line) < 3:
        raise TimeoutError("the workflow's own hiccup")
    return x


@endpoint.function
def charge(order: str) -> str:
    note({"step": "charge", "order": order})
    return order


@endpoint.function
def ship(order: str) -> str:
    note({"step": "ship", "order": order})
    return order


@endpoint.function
async def three_steps(x: int) -> list:
    a = await double(x)
    b = await double(a)
    return [a, b, await double(b)]


@endpoint.function
async def fan_out(n: int) -> int:
    return sum(await gather(*(double(i) for i in range(n))))


@endpoint.function
async def first_success() -> list:
    won = await any(fail("value"), double(21), slow(20))
    return [won, await race(slow(20), double(4))]


@endpoint.function
async def careful() -> str:
    try:
        await fail("permanent")
    except PermanentError as exc:
        return f"caught {exc.status.name}: {exc.message}"
    return "not raised"


@endpoint.function
async def careless() -> None:
    await fail("permanent")


@endpoint.function
async def nap(seconds: float) -> str:
    note({"step": "nap"})
    await sleep(seconds)
    return "rested"

#WORKFLOWS
"""

ORIGINAL = """
async def steps(order):
    return [await charge(order), await ship(order)]


@endpoint.function
async def order_a(order: str) -> list:
    done = await steps(order)
    await sleep(4)
    return done + [await charge(order + "-fee")]


@endpoint.function
async def order_b(order: str) -> list:
    done = await steps(order)
    await sleep(4)
    return done + [await charge(order + "-fee")]


@endpoint.function
async def order_c(order: str) -> list:
    done = await steps(order)
    await sleep(4)
    return done + [await charge(order + "-fee")]
"""

EDITED = """
async def steps(order):
    return [await charge(order), await ship(order)]


@endpoint.function
def added(x: int) -> int:
    return x


@endpoint.function
async def order_a(order: str) -> list:
    done = await steps(order)
    await sleep(4)
    return done + [await charge(order + "-fee")]


@endpoint.function
async def order_b(order: str) -> list:
    done = [await ship(order), await charge(order)]
    await sleep(4)
    return done + [await charge(order + "-fee")]


@endpoint.function
async def order_c(order: str) -> list:
    if patched("ship-first"):
        done = [await ship(order), await charge(order)]
    else:
        done = await steps(order)
    await sleep(4)
    return done + [await charge(order + "-fee")]
"""


def app(workflows: str, above: str = "") -> str:
    return APP.replace("#ABOVE", above).replace("#WORKFLOWS", workflows)


@dataclass
class Stack:
    """A scheduler and an endpoint, each of which can be killed and started again."""

    folder: Path
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    port: int = 0
    scheduler: Process | None = None
    endpoint: Process | None = None
    api: str = ""
    url: str = ""

    @property
    def log(self) -> Path:
        return self.folder / "app.jsonl"

    def start_scheduler(self, *flags: str) -> None:
        """Start the scheduler, with ``flags`` after (and over) the usual ones."""
        self.scheduler = Process(
            [
                sys.executable,
                "-m",
                "dispatchlet",
                "scheduler",
                "--db",
                str(self.folder / "s.db"),
                "--port",
                "0",
                "--backoff",
                "0.05",
                "--backoff-cap",
                "0.3",
                "--max-attempts",
                "5",
                *flags,
            ],
            environment(
                DISPATCH_SIGNING_KEY=private_key_base64(self.key), DISPATCH_API_KEY=API_KEY
            ),
            self.folder,
        )
        self.api = self.scheduler.wait_for(r"listening at (http://\S+)").group(1)

    def start_endpoint(self, code: str) -> None:
        (self.folder / "app.py").write_text(code)
        self.endpoint = Process(
            [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", str(self.port)],
            environment(
                DISPATCH_VERIFICATION_KEY=public_key_base64(self.key.public_key()),
                APP_LOG=str(self.log),
            ),
            self.folder,
        )
        self.url = self.endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.process.send_signal(signal.SIGKILL)
        self.scheduler.process.wait(timeout=10)

    def stop_endpoint(self) -> None:
        assert self.endpoint is not None
        self.endpoint.stop()

    def stop(self) -> None:
        for process in (self.endpoint, self.scheduler):
            if process is not None:
                process.stop()

    def rpc(self, path: str, request: message.Message, reply: type[Any]) -> Any:
        status, body = post(self.api + path, request.SerializeToString(), API_KEY)
        assert status == 200, (status, body)
        return reply.FromString(body)

    def dispatch(self, function: str, value: Any = None) -> str:
        call = call_pb2.Call(function=function, endpoint=self.url, input=values.to_any(value))
        answer = self.rpc(
            "/dispatch.sdk.v1.DispatchService/Dispatch",
            dispatch_pb2.DispatchRequest(calls=[call]),
            dispatch_pb2.DispatchResponse,
        )
        return str(answer.dispatch_ids[0])

    def get(self, dispatch_id: str) -> calls_pb2.CallInfo:
        answer = self.rpc(
            "/dispatchlet.scheduler.v1.CallService/Get",
            calls_pb2.GetRequest(dispatch_id=dispatch_id),
            calls_pb2.GetResponse,
        )
        return answer.call

    def wait(self, dispatch_id: str, timeout: float = 60) -> calls_pb2.CallInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = calls_pb2.WaitRequest(dispatch_id=dispatch_id)
            request.timeout.FromSeconds(5)
            info = self.rpc(
                "/dispatchlet.scheduler.v1.CallService/Wait", request, calls_pb2.WaitResponse
            ).call
            if info.done:
                return info
        raise AssertionError(f"{dispatch_id} did not end in {timeout} s: {self.get(dispatch_id)}")

    def wait_for_state(self, dispatch_id: str, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get(dispatch_id).state == state:
                return
            time.sleep(0.02)
        raise AssertionError(f"{dispatch_id} is not {state}: {self.get(dispatch_id)}")

    def tree(self, root: str) -> list[calls_pb2.CallInfo]:
        answer = self.rpc(
            "/dispatchlet.scheduler.v1.CallService/List",
            calls_pb2.ListRequest(root_dispatch_id=root, page_size=1000),
            calls_pb2.ListResponse,
        )
        return list(answer.calls)

    def notes(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def wait_for_notes(self, predicate: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.notes()):
                return
            time.sleep(0.05)
        raise AssertionError(f"not seen in time; notes: {self.notes()}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        running.start_scheduler()
        running.start_endpoint(app(ORIGINAL))
        yield running
    finally:
        running.stop()


def result(info: calls_pb2.CallInfo) -> Any:
    assert info.status == Status.OK, (Status(info.status).name, info.error)
    return values.from_any(info.output)


def test_a_three_step_workflow(stack: Stack) -> None:
    dispatch_id = stack.dispatch("three_steps", 5)
    info = stack.wait(dispatch_id)
    assert result(info) == [10, 20, 40]
    children = [c for c in stack.tree(dispatch_id) if c.dispatch_id != dispatch_id]
    assert [c.function for c in children] == ["double"] * 3
    assert all(c.parent_dispatch_id == dispatch_id for c in children)


def test_a_gather_of_two_thousand_children(stack: Stack) -> None:
    dispatch_id = stack.dispatch("fan_out", 2000)
    info = stack.wait(dispatch_id, timeout=240)
    assert result(info) == 2 * sum(range(2000))


def test_any_and_race_cancel_the_losers(stack: Stack) -> None:
    dispatch_id = stack.dispatch("first_success")
    info = stack.wait(dispatch_id)
    assert result(info) == [42, 8]
    slow = [c for c in stack.tree(dispatch_id) if c.function == "slow"]
    assert len(slow) == 2
    # Ended with the workflow, not after their 20 s.
    for child in slow:
        assert child.done
        assert child.status == Status.PERMANENT_ERROR
        assert child.error.type == "Cancelled"


def test_a_childs_error_is_caught_or_ends_the_workflow_with_its_status(stack: Stack) -> None:
    careful = stack.wait(stack.dispatch("careful"))
    assert result(careful) == "caught PERMANENT_ERROR: card declined"
    careless = stack.wait(stack.dispatch("careless"))
    assert careless.status == Status.PERMANENT_ERROR
    assert "card declined" in careless.error.message
    assert careless.attempts == 1  # the resume that re-raised: not retried


def test_each_resume_has_the_whole_retry_budget(stack: Stack) -> None:
    # More steps than --max-attempts (5), then its last resume fails twice: it is retried
    # (attempts count from the last Poll), not ended for the attempts of earlier steps.
    info = stack.wait(stack.dispatch("long_haul", 8))
    assert result(info) == 510
    assert info.attempts == 3


def test_a_sleep_outlives_a_scheduler_kill_and_an_endpoint_restart(stack: Stack) -> None:
    dispatch_id = stack.dispatch("nap", 2.0)
    stack.wait_for_notes(lambda notes: {"step": "nap"} in notes)
    stack.wait_for_state(dispatch_id, "waiting")  # the Poll is recorded
    stack.kill_scheduler()
    stack.stop_endpoint()
    stack.start_endpoint(app(ORIGINAL))
    stack.start_scheduler()
    info = stack.wait(dispatch_id)
    assert result(info) == "rested"
    slept = info.finished_at.ToNanoseconds() - info.created_at.ToNanoseconds()
    assert slept >= 2e9, "the timer fired early"
    # One run that slept, and one that woke: the kill lost neither.
    assert stack.notes().count({"step": "nap"}) >= 2


def test_workflows_in_flight_across_a_deploy_of_edited_code(stack: Stack) -> None:
    ids = {name: stack.dispatch(name, name) for name in ("order_a", "order_b", "order_c")}
    # Each has charged and shipped, and sleeps: deploy the edited code now.
    stack.wait_for_notes(lambda notes: sum(n.get("step") == "ship" for n in notes) == 3)
    for dispatch_id in ids.values():
        stack.wait_for_state(dispatch_id, "waiting")
    # Before the deploy: which runs in flight would the edited code resume?
    (stack.folder / "edited.py").write_text(app(EDITED))
    checked = subprocess.run(
        [sys.executable, "-m", "dispatchlet", "check-replay", "edited.py", "--scheduler"],
        env=environment(
            DISPATCH_API_URL=stack.api, DISPATCH_API_KEY=API_KEY, APP_LOG=str(stack.log)
        ),
        cwd=stack.folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 1, checked.stderr
    lines = {line.split()[1].rstrip(":"): line for line in checked.stdout.splitlines()[:-1]}
    assert lines[ids["order_a"]].startswith("ok ")
    assert lines[ids["order_c"]].startswith("ok ")
    assert lines[ids["order_b"]].startswith("FAIL")
    assert "slot 0" in lines[ids["order_b"]]
    assert checked.stdout.splitlines()[-1] == "2 of 3 would resume"
    stack.stop_endpoint()
    stack.start_endpoint(app(EDITED, above="\nEDITED = True  # a line above the workflows\n"))
    fresh = stack.dispatch("order_c", "fresh")

    # A line added above and a function added: it finishes.
    assert result(stack.wait(ids["order_a"])) == ["order_a", "order_a", "order_a-fee"]
    # Steps in another order: INCOMPATIBLE_STATE naming the slot and both functions,
    # final (starting it over would charge again).
    b = stack.wait(ids["order_b"])
    assert b.status == Status.INCOMPATIBLE_STATE
    assert b.error.type == "dispatchlet.core.errors.StepMismatch"
    assert "slot 0" in b.error.message
    assert "'charge'" in b.error.message
    assert "'ship'" in b.error.message
    charged_b = [n for n in stack.notes() if n == {"step": "charge", "order": "order_b"}]
    assert len(charged_b) == 1
    # The same change behind patched(): the run in flight keeps its old branch, a run
    # started after the deploy takes the new one.
    assert result(stack.wait(ids["order_c"])) == ["order_c", "order_c", "order_c-fee"]
    assert result(stack.wait(fresh)) == ["fresh", "fresh", "fresh-fee"]
    steps = [n["step"] for n in stack.notes() if n.get("order") == "fresh"]
    assert steps == ["ship", "charge"]


INLINE_ABOVE = """
from dispatchlet import RunContext

GATE = LOG.with_name("gate")
"""

INLINE = """
@endpoint.function(inline=True)
def inline_step(name: str, ctx: RunContext) -> str:
    note({"inline": name, "id": ctx.dispatch_id})
    if name == "b":
        time.sleep(2.2)  # longer than the workflow's checkpoint_after
    if name == "e":
        while not GATE.exists():
            time.sleep(0.02)
    return name


@endpoint.function(checkpoint_after=2.0)
async def inline_chain() -> list:
    return [await inline_step(name) for name in "abcde"]
"""


def test_an_endpoint_killed_in_an_inline_chain_runs_again_only_the_steps_since_the_checkpoint(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path)
    try:
        # Attempts enough to outlast the endpoint's restart.
        stack.start_scheduler("--max-attempts", "1000")
        code = app(ORIGINAL + INLINE, above=INLINE_ABOVE)
        stack.start_endpoint(code)
        dispatch_id = stack.dispatch("inline_chain")
        # b took longer than checkpoint_after: c ran as a child call, in the Poll that
        # stored the journal of a and b; the resume ran d inline and waits in e.
        stack.wait_for_notes(lambda notes: any(n.get("inline") == "e" for n in notes), 60)
        assert stack.endpoint is not None
        stack.endpoint.process.send_signal(signal.SIGKILL)
        stack.endpoint.process.wait(timeout=10)
        (stack.folder / "gate").touch()
        stack.start_endpoint(code)
        info = stack.wait(dispatch_id, timeout=120)
        assert result(info) == list("abcde")
        children = [c for c in stack.tree(dispatch_id) if c.dispatch_id != dispatch_id]
    finally:
        stack.stop()
    runs: dict[str, list[str]] = {}
    for note in stack.notes():
        if "inline" in note:
            runs.setdefault(note["inline"], []).append(note["id"])
    # A step run inline has the workflow's id and its slot as dispatch id, on every run;
    # a step the checkpoint handed to the scheduler ran as a child call, with its own.
    inline_ids = {name: f"{dispatch_id}:{slot}" for slot, name in enumerate("abcde")}
    handed = [name for name, ids in runs.items() if ids[0] != inline_ids[name]]
    assert sorted(c.dispatch_id for c in children) == sorted(runs[name][0] for name in handed)
    assert handed, f"no checkpoint: {runs}"
    last = max("abcde".index(name) for name in handed)
    for slot, name in enumerate("abcde"):
        assert len(set(runs[name])) == 1, runs  # the same id on every run
        if slot <= last:
            # Up to the last checkpoint, in its journal: never run again.
            assert len(runs[name]) == 1, runs
        else:
            # Inline since: run by the killed attempt, and again by its retry.
            assert len(runs[name]) == 2, runs
    assert "e" not in handed
