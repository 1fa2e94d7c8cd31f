"""Idempotent Dispatch as users meet it: a `dispatchlet scheduler` process and an
endpoint served by `dispatchlet serve`, on loopback. A client whose connection is reset
after the whole request was sent (the answer lost) sends it again, and the calls are
stored and run once; `dispatchlet dispatch --key` twice starts one call; on PostgreSQL,
two scheduler processes that receive the same request, or the same key, at once store one
set of calls; a key dispatched again after its scheduler was killed and started again
gets the first call."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, Status
from dispatchlet.core import values
from dispatchlet.core.call_options import set_call_options
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2
from postgres_server import fresh_database
from test_scheduler_processes import API_KEY, Process, environment

pytestmark = pytest.mark.slow

WAIT = 60.0  # the longest any step may take, under load
DISPATCHES = 20

APP = """
import json, os
from pathlib import Path
from dispatchlet import Endpoint

endpoint = Endpoint()


@endpoint.function
def note(n: int) -> int:
    with Path(os.environ["APP_LOG"]).open("a") as log:
        log.write(json.dumps(n) + "\\n")
    return n
"""


@dataclass
class Stack:
    schedulers: list[str]
    endpoint: str
    log: Path
    env: dict[str, str]
    folder: Path
    processes: list[Process]

    def client(self, api_url: str | None = None) -> Client:
        return Client(api_url or self.schedulers[0], API_KEY, timeout=WAIT)

    def note(self, n: int, key: str = "") -> call_pb2.Call:
        call = call_pb2.Call(function="note", endpoint=self.endpoint)
        call.input.CopyFrom(values.to_any(n))
        if key:
            set_call_options(call, options_pb2.CallOptions(key=key))
        return call

    def runs(self) -> list[int]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@contextlib.contextmanager
def started(
    kind: str, request: pytest.FixtureRequest, folder: Path, database_url: str | None = None
) -> Iterator[Stack]:
    """An endpoint and the scheduler: one process on SQLite (the file in ``folder``), or
    two sharing PostgreSQL (``database_url``, else a fresh database)."""
    (folder / "app.py").write_text(APP)
    log = folder / "runs.jsonl"
    key = Ed25519PrivateKey.generate()
    if kind == "postgres":
        url = database_url or fresh_database(request.getfixturevalue("postgres_server"))
        databases: list[tuple[list[str], dict[str, str]]] = [
            ([], {"DISPATCHLET_DATABASE_URL": url})
        ] * 2
    else:
        databases = [(["--db", str(folder / "s.db")], {})]
    processes = [
        Process(
            [sys.executable, "-m", "dispatchlet", "scheduler", *options, "--port", "0"],
            environment(
                DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY, **env
            ),
            folder,
        )
        for options, env in databases
    ]
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), APP_LOG=str(log)
        ),
        folder,
    )
    try:
        urls = [p.wait_for(r"listening at (http://\S+)", WAIT).group(1) for p in processes]
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)", WAIT).group(1)
        env = environment(
            DISPATCH_API_URL=urls[0], DISPATCH_API_KEY=API_KEY, DISPATCH_ENDPOINT_URL=endpoint_url
        )
        yield Stack(urls, endpoint_url, log, env, folder, processes)
    finally:
        endpoint.stop()
        for process in processes:
            process.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with started(request.param, request, tmp_path) as running:
        yield running


@pytest.fixture
def two_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Two scheduler processes on one PostgreSQL database."""
    with started("postgres", request, tmp_path) as running:
        yield running


class LosingProxy:
    """A proxy on loopback for HTTP/1.1 requests with a body, which loses the answer to
    the first request with a given body: it forwards that request whole, reads the whole
    answer, then resets the client's connection instead of forwarding it. A request sent
    again (the same body) gets its answer."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen: set[bytes] = set()
        self.lost = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream, timeout=WAIT) as upstream:
            requests, answers = client.makefile("rb"), upstream.makefile("rb")
            while message := _message(requests):
                head, body = message
                upstream.sendall(head + body)
                answer = _message(answers)
                assert answer is not None, "the scheduler closed the connection"
                digest = hashlib.sha256(body).digest()
                with self.lock:
                    first = digest not in self.seen
                    self.seen.add(digest)
                    self.lost += 1 if first else 0
                if first:
                    # An RST, not a FIN: the client sees a reset connection.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                client.sendall(b"".join(answer))

    def close(self) -> None:
        self.listener.close()


def _message(stream: object) -> tuple[bytes, bytes] | None:
    """An HTTP message's head and body (by its Content-Length) from ``stream``; None at
    the end of the stream."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, stream.read(length)  # type: ignore[attr-defined]


def test_a_dispatch_whose_answer_was_lost_is_stored_and_run_once(stack: Stack) -> None:
    proxy = LosingProxy(stack.schedulers[0])
    try:
        with stack.client(proxy.url) as client:
            answered = [client.dispatch([stack.note(n)]) for n in range(DISPATCHES)]
    finally:
        proxy.close()
    # Every first try was handled by the scheduler, and its answer lost.
    assert proxy.lost == DISPATCHES
    with stack.client() as client:
        stored = list(client.list(function="note", page_size=1000))
        for info in stored:
            assert client.wait(info.dispatch_id, timeout=WAIT).status is Status.OK
    duplicated = len(stored) - DISPATCHES
    assert duplicated == 0, f"{len(stored)} calls stored for {DISPATCHES} dispatches"
    assert sorted(c.dispatch_id for c in stored) == sorted(i for (i,) in answered)
    assert sorted(stack.runs()) == list(range(DISPATCHES)), "each call runs once"


def test_the_same_request_at_two_processes_at_once_is_stored_once(
    two_processes: Stack,
) -> None:
    stack = two_processes
    path = "/dispatch.sdk.v1.DispatchService/Dispatch"

    def send(url: str, n: int) -> list[str]:
        request = dispatch_pb2.DispatchRequest(calls=[stack.note(n), stack.note(100 + n)])
        sent = urllib.request.Request(
            url + path,
            data=request.SerializeToString(),
            headers={
                "Content-Type": "application/proto",
                "Authorization": f"Bearer {API_KEY}",
                "Idempotency-Key": f"request-{n}",
            },
        )
        with urllib.request.urlopen(sent, timeout=WAIT) as answer:
            body = answer.read()
        return list(dispatch_pb2.DispatchResponse.FromString(body).dispatch_ids)

    with ThreadPoolExecutor(4) as pool:
        for n in range(DISPATCHES):
            answers = list(pool.map(send, stack.schedulers * 2, [n] * 4))
            assert all(ids == answers[0] for ids in answers), answers
    with stack.client() as client:
        stored = list(client.list(function="note", page_size=1000))
    assert len(stored) == 2 * DISPATCHES


def test_dispatch_with_a_key_twice_starts_one_call(stack: Stack) -> None:
    def dispatch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatchlet", "dispatch", "note", *args],
            env=stack.env,
            cwd=stack.folder,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )

    first = dispatch("7", "--key", "note-7")
    assert first.returncode == 0, first.stderr
    again = dispatch("8", "--key", "note-7", "--wait")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "7"  # the first call's output: no new call
    other = dispatch("9", "--key", "note-9")
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() != first.stdout.strip()
    with stack.client() as client:
        stored = list(client.list(function="note", page_size=1000))
    assert sorted(c.dispatch_id for c in stored) == sorted(
        [first.stdout.strip(), other.stdout.strip()]
    )
    refused = dispatch("7", "--key", "")
    assert refused.returncode == 2
    assert "empty idempotency key" in refused.stderr


def test_a_function_dispatched_with_a_key_again_gets_the_same_id(stack: Stack) -> None:
    from dispatchlet import Endpoint

    endpoint = Endpoint(insecure=True, endpoint_url=stack.endpoint)

    @endpoint.function
    def note(n: int) -> int:
        return n

    with stack.client() as client:
        endpoint.client = client
        first = note.options(key="order-17").dispatch(17)
        assert note.options(key="order-17").dispatch(17) == first
        with endpoint.batch() as batch:
            batch.add(note.options(key="order-17"), 17)
            batch.add(note.options(key="order-18"), 18)
            batch.add(note.options(key="order-18"), 18)
        assert batch.dispatch_ids[0] == first
        assert batch.dispatch_ids[1] == batch.dispatch_ids[2] != first
        for dispatch_id in (first, batch.dispatch_ids[1]):
            assert client.wait(dispatch_id, timeout=WAIT).status is Status.OK
        assert len(list(client.list(function="note", page_size=1000))) == 2
    assert sorted(stack.runs()) == [17, 18]


def _dispatch(url: str, calls: list[call_pb2.Call]) -> list[str]:
    """The ids a Dispatch of ``calls`` to the scheduler at ``url`` is answered with (no
    request id: only the calls' keys make it idempotent)."""
    request = dispatch_pb2.DispatchRequest(calls=calls)
    sent = urllib.request.Request(
        url + "/dispatch.sdk.v1.DispatchService/Dispatch",
        data=request.SerializeToString(),
        headers={"Content-Type": "application/proto", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(sent, timeout=WAIT) as answer:
        return list(dispatch_pb2.DispatchResponse.FromString(answer.read()).dispatch_ids)


def test_the_same_key_at_two_processes_at_once_is_one_call(two_processes: Stack) -> None:
    stack = two_processes
    with ThreadPoolExecutor(4) as pool:
        for n in range(DISPATCHES):
            calls = [[stack.note(n, key=f"order-{n}")]] * 4
            answers = list(pool.map(_dispatch, stack.schedulers * 2, calls))
            assert all(ids == answers[0] for ids in answers), answers
    with stack.client() as client:
        stored = list(client.list(function="note", page_size=1000))
        for info in stored:
            assert client.wait(info.dispatch_id, timeout=WAIT).status is Status.OK
    assert len(stored) == DISPATCHES
    assert sorted(stack.runs()) == list(range(DISPATCHES)), "each keyed call runs once"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_key_outlives_a_scheduler_killed_and_started_again(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = fresh_database(request.getfixturevalue("postgres_server")) if kind == "postgres" else None
    with started(kind, request, tmp_path, url) as stack:
        (first,) = _dispatch(stack.schedulers[0], [stack.note(1, key="order-1")])
        # Acknowledged, then the scheduler dies at once.
        for process in stack.processes:
            process.process.kill()
            process.process.wait(timeout=WAIT)
    with started(kind, request, tmp_path, url) as stack:
        (again,) = _dispatch(stack.schedulers[0], [stack.note(2, key="order-1")])
        (other,) = _dispatch(stack.schedulers[0], [stack.note(3, key="order-3")])
        with stack.client() as client:
            # (The first call's endpoint stopped with the first stack: it is not waited for.)
            assert client.wait(other, timeout=WAIT).status is Status.OK
            stored = sorted(c.dispatch_id for c in client.list(function="note", page_size=1000))
    assert again == first
    assert stored == sorted([first, other])
    assert 2 not in stack.runs(), "the second dispatch with the key ran nothing"
