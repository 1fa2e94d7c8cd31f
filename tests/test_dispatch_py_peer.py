"""dispatchlet's scheduler with the original Dispatch Python SDK, dispatch-py 0.8.0, as a
peer: a dispatch-py application served by dispatch-py's own server (verifying the
scheduler's signatures with its own verifier) and dispatch-py's client, against a
`dispatchlet scheduler` process; outputs read back through dispatchlet's Client."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatch_py_peer import APP, CLIENT, peer_python
from dispatchlet import CallInfo, Client, Request, Status
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.core.signatures import sign_request
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from postgres_server import free_port
from test_scheduler_processes import API_KEY, Process, environment

pytestmark = pytest.mark.slow

WAIT = 45.0  # seconds a call may take before a test gives up on it


@dataclass
class Peer:
    """A scheduler and a dispatch-py endpoint, and the means to drive both."""

    python: Path
    folder: Path
    api_url: str
    endpoint_url: str
    client: Client
    scheduler: Process
    endpoint: Process

    def peer_client(self, command: str, function: str, *args: Any, api_url: str = "") -> str:
        env = environment(
            DISPATCH_API_URL=api_url or self.api_url,
            DISPATCH_API_KEY=API_KEY,
            DISPATCH_ENDPOINT_URL=self.endpoint_url,
        )
        result = subprocess.run(
            [str(self.python), "client.py", command, function, json.dumps(args)],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert result.returncode == 0, f"dispatch-py's client failed:\n{result.stderr}"
        return result.stdout.split()[-1]

    def dispatch(self, function: str, *args: Any, api_url: str = "") -> str:
        """The dispatch id of a call dispatched by dispatch-py's client."""
        return self.peer_client("dispatch", function, *args, api_url=api_url)

    def build_call(self, function: str, *args: Any) -> call_pb2.Call:
        """The Call dispatch-py builds for ``function(*args)`` (its input is a pickle of
        dispatch-py's own argument class, which only dispatch-py can build)."""
        return call_pb2.Call.FromString(bytes.fromhex(self.peer_client("build", function, *args)))

    def finished(self, dispatch_id: str) -> CallInfo:
        info = self.client.wait(dispatch_id, timeout=WAIT)
        assert info.done, (
            f"{info.function} {dispatch_id} is still {info.state} after {WAIT:.0f} s\n"
            f"endpoint:\n{''.join(self.endpoint.drained())}"
        )
        return info

    def children(self, root: str) -> list[CallInfo]:
        """The root's descendants, whole: List gives summaries, Get each call."""
        listed = self.client.list(root_dispatch_id=root)
        return [self.client.get(c.dispatch_id) for c in listed if c.dispatch_id != root]


def ended_ok(info: CallInfo) -> object:
    """The output of a call that ended OK (else the status and error it ended with)."""
    assert info.status is Status.OK, (info.status, info.error)
    return info.output


@pytest.fixture(scope="module")
def peer(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    python = peer_python(pytestconfig, tmp_path_factory)
    folder = tmp_path_factory.mktemp("peer")
    (folder / "app.py").write_text(APP)
    (folder / "client.py").write_text(CLIENT)
    key = Ed25519PrivateKey.generate()
    scheduler = Process(
        [
            *(sys.executable, "-m", "dispatchlet", "scheduler", "--db", str(folder / "s.db")),
            *("--port", "0", "--backoff", "0.05", "--backoff-cap", "0.5"),
        ],
        environment(DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY),
        folder,
    )
    endpoint: Process | None = None
    try:
        api_url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        port = free_port()
        endpoint_url = f"http://127.0.0.1:{port}"
        endpoint = Process(
            [str(python), "app.py"],
            environment(
                DISPATCH_ENDPOINT_ADDR=f"127.0.0.1:{port}",
                DISPATCH_ENDPOINT_URL=endpoint_url,
                DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()),
                # dispatch-py's registry builds a client at import, which needs these.
                DISPATCH_API_URL=api_url,
                DISPATCH_API_KEY=API_KEY,
            ),
            folder,
        )
        endpoint.wait_for("dispatch-py endpoint serving")
        with Client(api_url, API_KEY) as client:
            yield Peer(python, folder, api_url, endpoint_url, client, scheduler, endpoint)
    finally:
        if endpoint is not None:
            endpoint.stop()
        assert scheduler.stop() == 0, "".join(scheduler.drained())


def post_run(url: str, request: Request) -> int:
    """The HTTP status of ``request`` sent to ``url``."""
    sent = urllib.request.Request(
        url + request.path, data=request.body, headers=dict(request.headers), method="POST"
    )
    try:
        with urllib.request.urlopen(sent, timeout=WAIT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def test_the_endpoint_verifies_signatures_itself(peer: Peer) -> None:
    # What makes the calls below prove that dispatch-py accepts the scheduler's signatures:
    # the same endpoint refuses a request that is unsigned or signed with another key.
    # (dispatch-py answers 403 to both, with a JSON body it does not escape.)
    authority = peer.endpoint_url.removeprefix("http://")
    body = function_pb2.RunRequest(function="greet").SerializeToString()
    unsigned = Request("POST", RUN_PATH, authority, [("Content-Type", PROTO)], body)
    assert post_run(peer.endpoint_url, unsigned) in (401, 403)
    forged = sign_request(unsigned, Ed25519PrivateKey.generate())
    assert post_run(peer.endpoint_url, forged) == 403


def test_a_function_dispatched_by_dispatch_py_runs(peer: Peer) -> None:
    dispatch_id = peer.dispatch("greet", "World")
    info = peer.finished(dispatch_id)
    assert ended_ok(info) == "Hello, World!"
    assert (info.function, info.endpoint) == ("greet", peer.endpoint_url)


def test_a_dispatch_py_call_dispatched_by_dispatchlet_runs(peer: Peer) -> None:
    (dispatch_id,) = peer.client.dispatch([peer.build_call("greet", "Ada")])
    assert ended_ok(peer.finished(dispatch_id)) == "Hello, Ada!"


def test_a_coroutine_awaiting_another_function_runs_to_completion(peer: Peer) -> None:
    root = peer.dispatch("shout", "World")
    assert ended_ok(peer.finished(root)) == "HELLO, WORLD!"
    # The awaited function ran as a call of its own, a child of the coroutine's.
    (child,) = peer.children(root)
    assert (child.function, child.parent_dispatch_id) == ("greet", root)
    assert ended_ok(child) == "Hello, World!"


def test_gather_runs_every_call_to_completion(peer: Peer) -> None:
    # More calls than dispatch-py's Poll takes results at a time (max_results 10), and it
    # asks to be resumed on the first result (min_results 1): several polls gather them.
    names = [f"n{i}" for i in range(12)]
    root = peer.dispatch("greet_all", names)
    assert ended_ok(peer.finished(root)) == [f"Hello, {name}!" for name in names]
    children = peer.children(root)
    assert sorted(ended_ok(child) for child in children) == sorted(
        f"Hello, {name}!" for name in names
    )
    assert {(c.function, c.parent_dispatch_id) for c in children} == {("greet", root)}


def test_an_error_of_an_awaited_function_is_raised_in_the_coroutine(peer: Peer) -> None:
    root = peer.dispatch("ask", "no reason")
    assert ended_ok(peer.finished(root)) == "refused: no reason"
    (child,) = peer.children(root)
    assert (child.function, child.status) == ("refuse", Status.INVALID_ARGUMENT)
    assert child.error is not None
    assert (child.error.type, child.error.message) == ("ValueError", "no reason")


def test_a_reset_hands_the_call_over_to_another_function(peer: Peer) -> None:
    dispatch_id = peer.dispatch("hand_over", "Tail")
    info = peer.finished(dispatch_id)
    assert ended_ok(info) == "Hello, Tail!"
    assert info.function == "greet"  # a tail call keeps the dispatch id


def test_dispatch_py_reaches_an_api_url_that_ends_in_a_slash(peer: Peer) -> None:
    # dispatch-py appends "/dispatch.sdk.v1.DispatchService/Dispatch" to the URL as given.
    dispatch_id = peer.dispatch("greet", "Slash", api_url=peer.api_url + "/")
    assert ended_ok(peer.finished(dispatch_id)) == "Hello, Slash!"
