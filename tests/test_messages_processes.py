"""Messages to running workflows end to end: a `dispatchlet scheduler` process (on SQLite
and on PostgreSQL) and the workflows' endpoint served by `dispatchlet serve`, messages
sent with the client and with `dispatchlet calls send`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, ClientError, Status
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from test_scheduler_processes import API_KEY, Loop, Process, database_option, environment

pytestmark = pytest.mark.slow

BOUND = 60.0  # how long any wait may take before the test fails, whatever the load
MAX_INPUT_SIZE = 64 * 1024  # the scheduler's limit on inputs, and on messages

APP = """
import os, time
from datetime import timedelta
from pathlib import Path
from dispatchlet import Endpoint, race, receive, sleep

endpoint = Endpoint()


@endpoint.function
async def approve(order: str) -> dict:
    decision = await receive("approval", timeout=timedelta(seconds=120))
    return {"order": order, "decision": decision}


@endpoint.function
def gate(name: str) -> str:
    # Holds the workflow before its receives until the test opens the gate.
    path = Path(os.environ["GATES"]) / name
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the gate was never opened")
        time.sleep(0.02)
    return name


@endpoint.function
async def collect(name: str) -> list:
    await gate(name)
    return [await receive("item"), await receive("item"), await receive("other")]


@endpoint.function
async def impatient(seconds: float) -> list:
    outcomes = []
    try:
        outcomes.append(await receive("approval", timeout=seconds))
    except TimeoutError as exc:
        outcomes.append(f"TimeoutError: {exc}")
    raced = await race(receive("late"), sleep(seconds))
    outcomes.append("slept" if raced is None else raced)
    return outcomes
"""


class Stack(Loop):
    """A scheduler and the workflows' endpoint, with the folder the gates open in."""

    gates: Path
    env: dict[str, str]

    def client(self) -> Client:
        return Client(self.scheduler, API_KEY)

    def get(self, dispatch_id: str) -> calls_pb2.CallInfo:
        answer = self.rpc(
            "/dispatchlet.scheduler.v1.CallService/Get",
            calls_pb2.GetRequest(dispatch_id=dispatch_id),
            calls_pb2.GetResponse,
        )
        return answer.call

    def done(self, dispatch_id: str) -> calls_pb2.CallInfo:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            info = self.wait(dispatch_id, timeout=5)
            if info.done:
                return info
        raise AssertionError(f"{dispatch_id} not done in {BOUND} s: {self.get(dispatch_id)}")

    def receiving(self, dispatch_id: str, topic: str) -> calls_pb2.CallInfo:
        """The receive child of the call once it waits for a message on ``topic``."""
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            request = calls_pb2.ListRequest(parent_dispatch_id=dispatch_id, state="waiting")
            listed = self.rpc(
                "/dispatchlet.scheduler.v1.CallService/List", request, calls_pb2.ListResponse
            )
            for child in listed.calls:
                if child.function == "dispatchlet.receive":
                    return child
            time.sleep(0.05)
        raise AssertionError(f"{dispatch_id} never waited on {topic!r}: {self.get(dispatch_id)}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatchlet", *args],
            env={**self.env, "DISPATCH_API_URL": self.scheduler, "DISPATCH_API_KEY": API_KEY},
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("messages")
    (folder / "app.py").write_text(APP)
    gates = folder / "gates"
    gates.mkdir()
    key = Ed25519PrivateKey.generate()
    database, database_env = database_option(request, folder)
    scheduler = Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "scheduler",
            *database,
            "--port",
            "0",
            "--max-input-size",
            str(MAX_INPUT_SIZE),
        ],
        environment(
            DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY, **database_env
        ),
        folder,
    )
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), GATES=str(gates)
        ),
        folder,
    )
    try:
        scheduler_url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        running = Stack(scheduler_url, endpoint_url, folder / "unused.jsonl")
        running.gates = gates
        running.env = environment()
        yield running
    finally:
        endpoint.stop()
        assert scheduler.stop() == 0, "".join(scheduler.output)


def test_a_workflow_waits_for_a_message_sent_later_and_finishes_with_it(stack: Stack) -> None:
    (dispatch_id,) = stack.dispatch(stack.call("approve", "o-17"))
    receive = stack.receiving(dispatch_id, "approval")
    assert receive.state == "waiting"
    time.sleep(2)  # the message comes 2 s after the workflow began to wait
    sent = stack.cli("calls", "send", dispatch_id, "approval", '{"ok": true, "by": "ada"}')
    assert (sent.returncode, sent.stdout.strip()) == (0, "received"), sent.stderr
    info = stack.done(dispatch_id)
    assert info.status == Status.OK, info.error
    assert values.from_any(info.output) == {"order": "o-17", "decision": {"ok": True, "by": "ada"}}
    # The workflow is done: a message to it is refused, the sender told why.
    late = stack.cli("calls", "send", dispatch_id, "approval", "true")
    assert late.returncode == 2
    assert "failed_precondition" in late.stderr, late.stderr
    assert "is done" in late.stderr


def test_messages_sent_before_the_wait_are_received_in_order_each_once(stack: Stack) -> None:
    (dispatch_id,) = stack.dispatch(stack.call("collect", f"gate-{time.monotonic_ns()}"))
    name = values.from_any(stack.get(dispatch_id).input)
    with stack.client() as client:
        # The workflow is held before its first receive: each message is kept.
        assert client.send(dispatch_id, "other", "third") is False
        assert client.send(dispatch_id, "item", "first") is False
        assert client.send(dispatch_id, "item", "second") is False
        assert client.send(dispatch_id, "item", "left over") is False
    (stack.gates / name).touch()
    info = stack.done(dispatch_id)
    assert info.status == Status.OK, info.error
    assert values.from_any(info.output) == ["first", "second", "third"]


def test_a_receive_times_out_with_a_timeout_error_the_workflow_catches(stack: Stack) -> None:
    (dispatch_id,) = stack.dispatch(stack.call("impatient", 1.0))
    info = stack.done(dispatch_id)
    assert info.status == Status.OK, info.error
    caught, raced = values.from_any(info.output)
    assert caught.startswith("TimeoutError: no message on the topic 'approval'"), caught
    assert raced == "slept"
    # Two receives, no endpoint ran either: the one the sleep won over ended with the
    # workflow.
    listed = stack.rpc(
        "/dispatchlet.scheduler.v1.CallService/List",
        calls_pb2.ListRequest(parent_dispatch_id=dispatch_id),
        calls_pb2.ListResponse,
    )
    assert [(c.function, c.state) for c in listed.calls] == [("dispatchlet.receive", "done")] * 2
    assert listed.calls[0].status == Status.TIMEOUT
    # A receive runs no function: it is not re-run on its own.
    with stack.client() as client, pytest.raises(ClientError) as raised:
        client.rerun(listed.calls[0].dispatch_id)
    assert raised.value.code == "failed_precondition"
    assert "a workflow's receive" in raised.value.message


def test_a_message_to_an_unknown_call_fails_clearly(stack: Stack) -> None:
    unknown = "0" * 32
    sent = stack.cli("calls", "send", unknown, "approval", '{"ok": true}')
    assert sent.returncode == 2
    assert f"not_found: no call '{unknown}'" in sent.stderr, sent.stderr
    assert "Traceback" not in sent.stderr
    with stack.client() as client, pytest.raises(ClientError) as raised:
        client.send(unknown, "approval", True)
    assert (raised.value.code, raised.value.http_status) == ("not_found", 404)


def test_a_bad_topic_or_a_message_over_the_limit_is_refused(stack: Stack) -> None:
    (dispatch_id,) = stack.dispatch(stack.call("approve", "o-18"))
    with stack.client() as client:
        for topic in ("", "x" * 257, "new\nline"):
            with pytest.raises(ClientError) as raised:
                client.send(dispatch_id, topic, True)
            assert (raised.value.code, raised.value.http_status) == ("invalid_argument", 400)
            assert "invalid topic" in raised.value.message
        with pytest.raises(ClientError) as raised:
            client.send(dispatch_id, "approval", "x" * MAX_INPUT_SIZE)
        assert (raised.value.code, raised.value.http_status) == ("invalid_argument", 400)
        assert "larger than the scheduler's limit" in raised.value.message
        client.cancel(dispatch_id)
    bad = stack.cli("calls", "send", dispatch_id, "", "1")
    assert bad.returncode == 2, bad.stderr
    assert "an empty topic" in bad.stderr
