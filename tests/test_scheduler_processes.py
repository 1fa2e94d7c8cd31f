"""The scheduler as users run it: `dispatchlet scheduler` and an endpoint served by
`dispatchlet serve` (waitress), real processes on loopback, called over HTTP."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import CallInfo, Client, ClientError, Endpoint, Status
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from google.protobuf import message
from postgres_server import fresh_database
from prometheus_client.parser import text_string_to_metric_families
from support import EndpointServer

pytestmark = pytest.mark.slow

API_KEY = "test-api-key"
START_TIMEOUT = 20.0

APP = """
import json, os, time
from pathlib import Path
from dispatchlet import Endpoint, RunContext

endpoint = Endpoint()
LOG = Path(os.environ["APP_LOG"])


def record(entry):
    with LOG.open("a") as log:
        log.write(json.dumps(entry) + "\\n")


@endpoint.function
def greet(name: str) -> str:
    return f"Hello, {name}!"


@endpoint.function
def flaky(key: str, context: RunContext) -> int:
    record({"key": key, "dispatch_id": context.dispatch_id, "at": time.time()})
    seen = sum(1 for line in LOG.read_text().splitlines() if json.loads(line).get("key") == key)
    if seen <= 2:
        raise TimeoutError(f"attempt {seen} timed out")
    return seen


@endpoint.function
def refuse() -> None:
    raise ValueError("never valid")


@endpoint.function
def give_up() -> None:
    from dispatchlet import PermanentError

    raise PermanentError("this will not work later either")


@endpoint.function
def hand_over(name: str):
    return whoami.tail_call(name)


@endpoint.function
def whoami(name: str, context: RunContext) -> dict:
    return {
        "name": name,
        "function": context.function,
        "dispatch_id": context.dispatch_id,
        "parent": context.parent_dispatch_id,
        "root": context.root_dispatch_id,
        "created": context.creation_time.isoformat(),
    }
"""


@dataclass
class Process:
    """A command whose output is read as it comes, so every wait is bounded."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    output: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.output)}")

    def drained(self) -> list[str]:
        """Every line of output so far, those not yet waited for included."""
        try:
            while (line := self._lines.get_nowait()) is not None:
                self.output.append(line)
        except queue.Empty:
            pass
        return self.output

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(variables)
    return env


@dataclass
class Loop:
    scheduler: str
    endpoint: str
    log: Path

    def rpc(self, path: str, request: message.Message, reply: type[Any], key: str = API_KEY) -> Any:
        status, body = post(self.scheduler + path, request.SerializeToString(), key)
        assert status == 200, (status, body)
        return reply.FromString(body)

    def dispatch(self, *calls: call_pb2.Call) -> list[str]:
        request = dispatch_pb2.DispatchRequest(calls=calls)
        answer = self.rpc(
            "/dispatch.sdk.v1.DispatchService/Dispatch", request, dispatch_pb2.DispatchResponse
        )
        return list(answer.dispatch_ids)

    def call(self, function: str, value: Any = None, **fields: Any) -> call_pb2.Call:
        built = call_pb2.Call(function=function, endpoint=self.endpoint, **fields)
        if value is not None:
            built.input.CopyFrom(values.to_any(value))
        return built

    def wait(self, dispatch_id: str, timeout: float = 30) -> calls_pb2.CallInfo:
        request = calls_pb2.WaitRequest(dispatch_id=dispatch_id)
        request.timeout.FromSeconds(int(timeout))
        answer = self.rpc(
            "/dispatchlet.scheduler.v1.CallService/Wait", request, calls_pb2.WaitResponse
        )
        return answer.call


def post(
    url: str, body: bytes, key: str | None, content_type: str = "application/proto"
) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def database_option(
    request: pytest.FixtureRequest, folder: Path
) -> tuple[list[str], dict[str, str]]:
    """Where the scheduler keeps its calls (arguments, environment): a SQLite file, or a
    fresh PostgreSQL database named by DISPATCHLET_DATABASE_URL (as --database-url does
    in test_postgres_cluster)."""
    if request.param == "postgres":
        url = fresh_database(request.getfixturevalue("postgres_server"))
        return [], {"DISPATCHLET_DATABASE_URL": url}
    return ["--db", str(folder / "s.db")], {}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def loop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loop]:
    folder = tmp_path_factory.mktemp("loop")
    (folder / "app.py").write_text(APP)
    log = folder / "attempts.jsonl"
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
            "--backoff",
            "0.05",
            "--backoff-cap",
            "0.3",
        ],
        environment(
            DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY, **database_env
        ),
        folder,
    )
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), APP_LOG=str(log)
        ),
        folder,
    )
    try:
        scheduler_url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        yield Loop(scheduler_url, endpoint_url, log)
    finally:
        endpoint.stop()
        assert scheduler.stop() == 0, "".join(scheduler.output)


def test_the_database_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from dispatchlet.cli.main import main

    both = ["scheduler", "--db", "x.db", "--database-url", "postgresql://h/db", "--insecure"]
    assert main(both) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["scheduler", "--database-url", "mysql://h/db", "--insecure"]) == 2
    assert "not a PostgreSQL URL" in capsys.readouterr().err


def error_of(info: calls_pb2.CallInfo) -> tuple[str, str]:
    return info.error.type, info.error.message


def test_a_call_runs_on_its_endpoint(loop: Loop) -> None:
    (dispatch_id,) = loop.dispatch(loop.call("greet", "World"))
    info = loop.wait(dispatch_id)
    assert info.done
    assert info.status == Status.OK
    assert values.from_any(info.output) == "Hello, World!"
    assert (info.attempts, info.state, info.root_dispatch_id) == (1, "done", dispatch_id)


def test_a_timeout_error_is_retried_until_it_succeeds(loop: Loop) -> None:
    (dispatch_id,) = loop.dispatch(loop.call("flaky", "k1"))
    info = loop.wait(dispatch_id)
    assert info.status == Status.OK, info
    assert values.from_any(info.output) == 3
    assert info.attempts == 3
    attempts = [json.loads(line) for line in loop.log.read_text().splitlines()]
    mine = [a for a in attempts if a["key"] == "k1"]
    # Every attempt saw the same dispatch id: the user's idempotency key.
    assert [a["dispatch_id"] for a in mine] == [dispatch_id] * 3
    # The delays grow: the first wait is drawn from [0.025, 0.05] s, the second from
    # [0.05, 0.1] s (--backoff 0.05, doubled, jitter of half). Load only lengthens them.
    first, second = (b["at"] - a["at"] for a, b in itertools.pairwise(mine))
    assert first >= 0.025
    assert second >= 0.05


def test_a_permanent_error_is_not_retried(loop: Loop) -> None:
    (dispatch_id,) = loop.dispatch(loop.call("refuse"))
    info = loop.wait(dispatch_id)
    assert (info.status, info.attempts) == (Status.INVALID_ARGUMENT, 1)
    assert error_of(info) == ("ValueError", "never valid")


def test_a_permanent_error_status_is_final_after_one_attempt(loop: Loop) -> None:
    (dispatch_id,) = loop.dispatch(loop.call("give_up"))
    info = loop.wait(dispatch_id)
    assert (info.status, info.attempts) == (Status.PERMANENT_ERROR, 1)
    assert info.error.message == "this will not work later either"


def test_the_api_speaks_json_too(loop: Loop) -> None:
    body = json.dumps(
        {
            "calls": [
                {
                    "function": "greet",
                    "endpoint": loop.endpoint,
                    "input": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": "JSON",
                    },
                }
            ]
        }
    ).encode()
    status, answer = post(
        loop.scheduler + "/dispatch.sdk.v1.DispatchService/Dispatch",
        body,
        API_KEY,
        "application/json",
    )
    assert status == 200, answer
    (dispatch_id,) = json.loads(answer)["dispatchIds"]
    assert values.from_any(loop.wait(dispatch_id).output) == "Hello, JSON!"


def test_an_unknown_function_is_final_with_the_endpoints_reason(loop: Loop) -> None:
    (dispatch_id,) = loop.dispatch(loop.call("nope"))
    info = loop.wait(dispatch_id)
    assert (info.status, info.attempts) == (Status.NOT_FOUND, 1)
    assert "HTTP 404 not_found: function 'nope' does not exist" in info.error.message


def test_a_tail_call_keeps_the_dispatch_id_parent_root_and_creation_time(loop: Loop) -> None:
    (dispatch_id,) = loop.dispatch(loop.call("hand_over", "Ada"))
    info = loop.wait(dispatch_id)
    assert info.status == Status.OK, info
    context = values.from_any(info.output)
    assert context["function"] == "whoami"
    assert context["name"] == "Ada"
    assert context["dispatch_id"] == context["root"] == dispatch_id
    assert context["parent"] == ""
    assert context["created"] == info.created_at.ToDatetime().isoformat() + "+00:00"


def test_an_endpoint_not_listening_is_retried_until_the_call_expires(loop: Loop) -> None:
    call = call_pb2.Call(function="greet", endpoint="http://127.0.0.1:9")
    call.expiration.FromMilliseconds(1500)
    (dispatch_id,) = loop.dispatch(call)
    info = loop.wait(dispatch_id)
    assert info.status == Status.TIMEOUT, info
    assert info.attempts > 2
    assert info.error.type == "ConnectionRefusedError"


def test_health_and_metrics(loop: Loop) -> None:
    (dispatch_id,) = loop.dispatch(loop.call("greet", "metrics"))
    loop.wait(dispatch_id)
    with urllib.request.urlopen(loop.scheduler + "/healthz", timeout=10) as answer:
        assert json.loads(answer.read()) == {"status": "ok"}
    # /metrics names destinations: it needs the key.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(loop.scheduler + "/metrics", timeout=10)
    assert refused.value.code == 401
    scrape = urllib.request.Request(
        loop.scheduler + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(scrape, timeout=10) as answer:
        text = answer.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    ok = (("function", "greet"), ("status", "OK"))
    assert samples[("dispatchlet_attempts_total", ok)] >= 1
    assert ("dispatchlet_attempts_in_flight", ()) in samples
    assert ("dispatchlet_queue_calls", (("state", "ready"),)) in samples
    destination = (("destination", loop.endpoint),)
    assert samples[("dispatchlet_destination_limit", destination)] >= 1


def test_dispatch_is_refused_without_the_api_key(loop: Loop) -> None:
    body = dispatch_pb2.DispatchRequest(calls=[loop.call("greet", "x")]).SerializeToString()
    for key in (None, "wrong"):
        status, answer = post(
            loop.scheduler + "/dispatch.sdk.v1.DispatchService/Dispatch", body, key
        )
        assert status == 401
        assert json.loads(answer)["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ([("greet", "http://x")] * 1001, "1001 calls in one Dispatch: at most 1000"),
        ([("greet", "http://x"), ("bad name", "http://x")], "call 1: invalid function name"),
        ([("greet", "ftp://x")], "call 0: invalid endpoint 'ftp://x'"),
        ([("greet", "http://x", 400 * 86400)], "call 0: expiration beyond"),
        ([("greet", "http://x", -1)], "call 0: negative expiration"),
    ],
)
def test_invalid_dispatches_are_400_and_store_nothing(
    loop: Loop, calls: list[tuple[Any, ...]], message: str
) -> None:
    request = dispatch_pb2.DispatchRequest()
    for function, endpoint, *expiration in calls:
        call = request.calls.add(function=function, endpoint=endpoint)
        if expiration:
            call.expiration.FromSeconds(expiration[0])
    status, answer = post(
        loop.scheduler + "/dispatch.sdk.v1.DispatchService/Dispatch",
        request.SerializeToString(),
        API_KEY,
    )
    assert status == 400
    assert json.loads(answer)["code"] == "invalid_argument"
    assert message in json.loads(answer)["message"]


def test_garbage_is_a_clear_400(loop: Loop) -> None:
    status, answer = post(
        loop.scheduler + "/dispatch.sdk.v1.DispatchService/Dispatch", b"\xff\xff\xff", API_KEY
    )
    assert status == 400
    assert "cannot decode DispatchRequest" in json.loads(answer)["message"]
    status, answer = post(
        loop.scheduler + "/dispatch.sdk.v1.DispatchService/Dispatch", b"{}", API_KEY, "text/plain"
    )
    assert status == 415


def test_calls_are_listed_and_cancelled(loop: Loop) -> None:
    call = call_pb2.Call(function="greet", endpoint="http://127.0.0.1:9")
    (dispatch_id,) = loop.dispatch(call)
    cancelled = loop.rpc(
        "/dispatchlet.scheduler.v1.CallService/Cancel",
        calls_pb2.CancelRequest(dispatch_id=dispatch_id),
        calls_pb2.CancelResponse,
    )
    assert cancelled.cancelled == 1
    info = loop.wait(dispatch_id)
    assert (info.done, info.status, info.error.type) == (True, Status.PERMANENT_ERROR, "Cancelled")
    listed = loop.rpc(
        "/dispatchlet.scheduler.v1.CallService/List",
        calls_pb2.ListRequest(function="greet", page_size=1000),
        calls_pb2.ListResponse,
    )
    assert dispatch_id in [c.dispatch_id for c in listed.calls]


# --- the client ---------------------------------------------------------------------


@pytest.fixture
def client(loop: Loop) -> Iterator[Client]:
    with Client(api_url=loop.scheduler, api_key=API_KEY) as opened:
        yield opened


def test_the_client_dispatches_waits_lists_and_cancels(loop: Loop, client: Client) -> None:
    (dispatch_id,) = client.dispatch([loop.call("greet", "Client")])
    info = client.wait(dispatch_id, timeout=30)
    assert isinstance(info, CallInfo)
    assert (info.done, info.status, info.output, info.attempts) == (
        True,
        Status.OK,
        "Hello, Client!",
        1,
    )
    assert info.error is None
    assert info.root_dispatch_id == dispatch_id
    assert info.finished_at is not None
    assert info.finished_at >= info.created_at
    assert client.get(dispatch_id) == info
    assert dispatch_id in [c.dispatch_id for c in client.list(function="greet", page_size=2)]
    (waiting,) = client.dispatch([call_pb2.Call(function="greet", endpoint="http://127.0.0.1:9")])
    assert client.cancel(waiting) == 1
    cancelled = client.wait(waiting, timeout=10)
    assert cancelled.status == Status.PERMANENT_ERROR
    assert cancelled.error is not None
    assert cancelled.error.type == "Cancelled"


def test_the_client_raises_the_schedulers_errors(loop: Loop) -> None:
    with (
        Client(api_url=loop.scheduler, api_key="wrong") as wrong,
        pytest.raises(ClientError) as info,
    ):
        wrong.dispatch([loop.call("greet", "x")])
    assert (info.value.code, info.value.http_status) == ("unauthenticated", 401)
    with (
        Client(api_url=loop.scheduler, api_key=API_KEY) as client,
        pytest.raises(ClientError, match="not_found"),
    ):
        client.get("no-such-call")
    with (
        Client(api_url="http://127.0.0.1:9", api_key=API_KEY) as unreachable,
        pytest.raises(ClientError, match="cannot reach the scheduler") as down,
    ):
        unreachable.get("x")
    assert down.value.code == "unavailable"


def test_registered_functions_dispatch_themselves_and_in_batches(
    loop: Loop, client: Client
) -> None:
    # The code of the app, imported by a program that starts calls of it.
    endpoint = Endpoint(insecure=True, endpoint_url=loop.endpoint)

    @endpoint.function
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    endpoint.client = client
    dispatch_id = greet.dispatch("Function")
    assert client.wait(dispatch_id, timeout=30).output == "Hello, Function!"
    with endpoint.batch() as batch:
        batch.add(greet, "A")
        batch.add(greet.build_call("B"))
    assert len(batch.dispatch_ids) == 2
    outputs = [client.wait(i, timeout=30).output for i in batch.dispatch_ids]
    assert outputs == ["Hello, A!", "Hello, B!"]
    failed = endpoint.batch()

    def fail_inside_the_block() -> None:
        with failed:
            failed.add(greet, "never")
            raise RuntimeError("the block failed")

    with pytest.raises(RuntimeError):
        fail_inside_the_block()
    assert failed.dispatch_ids == []


# --- endpoints that misbehave ---------------------------------------------------------


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """An endpoint whose first path segment says how it answers."""

    hits: ClassVar[dict[str, int]] = {}

    def do_POST(self) -> None:
        mode = self.path.split("/")[1]
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Misbehaving.hits[mode] = Misbehaving.hits.get(mode, 0) + 1
        if mode == "close":
            self.close_connection = True
            return
        if mode == "garbage":
            self.answer(200, "text/plain", b"garbage")
        elif mode == "garbage-proto":
            self.answer(200, "application/proto", b"\xff\xff\xff\xff")
        elif mode == "huge":
            self.answer(200, "application/proto", b"\x00" * (17 * 1024 * 1024))
        elif mode == "busy" and Misbehaving.hits[mode] == 1:
            self.answer(503, "text/plain", b"busy", [("Retry-After", "0")])
        elif mode in ("busy", "fine"):
            response = function_pb2.RunResponse(status=Status.OK.value)
            response.exit.result.output.CopyFrom(values.to_any("fine"))
            self.answer(200, "application/proto", response.SerializeToString())
        else:
            error = json.dumps({"code": "permission_denied", "message": "nope"}).encode()
            self.answer(int(mode), "application/json", error)

    def answer(
        self,
        status: int,
        kind: str,
        body: bytes,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        # The scheduler stops reading an answer past its bound (the huge one) and
        # closes the connection: the rest of the write fails, as it should.
        with suppress(ConnectionError):
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free loopback port in a thread; its base URL."""
    server = EndpointServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    with http_server(Misbehaving) as url:
        yield url


@pytest.mark.parametrize(
    ("mode", "status", "attempts", "message"),
    [
        ("garbage", Status.INVALID_RESPONSE, 1, "unexpected Content-Type 'text/plain'"),
        ("garbage-proto", Status.INVALID_RESPONSE, 1, "cannot decode the RunResponse"),
        ("huge", Status.INVALID_RESPONSE, 1, "an output of at most 16777216 bytes"),
        ("401", Status.UNAUTHENTICATED, 1, "HTTP 401 permission_denied: nope"),
        ("403", Status.PERMISSION_DENIED, 1, "HTTP 403 permission_denied: nope"),
        ("busy", Status.OK, 2, ""),
    ],
)
def test_what_the_endpoint_answers_decides_the_outcome(
    loop: Loop, misbehaving: str, mode: str, status: Status, attempts: int, message: str
) -> None:
    Misbehaving.hits.pop(mode, None)  # "busy" answers 503 the first time only
    call = call_pb2.Call(function="f", endpoint=f"{misbehaving}/{mode}")
    (dispatch_id,) = loop.dispatch(call)
    info = loop.wait(dispatch_id)
    assert (info.status, info.attempts) == (status, attempts), info
    assert message in info.error.message


def test_a_connection_closed_without_an_answer_is_retried(loop: Loop, misbehaving: str) -> None:
    call = call_pb2.Call(function="f", endpoint=f"{misbehaving}/close")
    call.expiration.FromMilliseconds(1500)
    (dispatch_id,) = loop.dispatch(call)
    info = loop.wait(dispatch_id)
    assert info.status == Status.TIMEOUT
    assert info.attempts > 1
    assert info.error.type == "EndpointClosed"
    # The scheduler is still there for everything else.
    (other,) = loop.dispatch(call_pb2.Call(function="f", endpoint=f"{misbehaving}/fine"))
    assert loop.wait(other).status == Status.OK


# --- Poll: an endpoint that suspends and is resumed ------------------------------------


class Coroutines(http.server.BaseHTTPRequestHandler):
    """An endpoint that answers Run requests with Polls, as a coroutine runtime does,
    written against the protocol alone (it checks no signature)."""

    restarts: ClassVar[dict[str, int]] = {}

    def do_POST(self) -> None:
        request = function_pb2.RunRequest.FromString(
            self.rfile.read(int(self.headers["Content-Length"]))
        )
        response = getattr(self, f"run_{request.function}")(request)
        body = response.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass

    @staticmethod
    def poll(state: str, calls: list[call_pb2.Call], low: int, high: int, wait: float = 20) -> Any:
        response = function_pb2.RunResponse(status=Status.OK.value)
        response.poll.typed_coroutine_state.CopyFrom(values.to_any(state))
        response.poll.calls.extend(calls)
        response.poll.min_results, response.poll.max_results = low, high
        response.poll.max_wait.FromMilliseconds(int(wait * 1000))
        return response

    @staticmethod
    def exit(value: Any, status: Status = Status.OK) -> Any:
        response = function_pb2.RunResponse(status=status.value)
        response.exit.result.output.CopyFrom(values.to_any(value))
        return response

    @staticmethod
    def child(function: str, value: Any, correlation_id: int) -> call_pb2.Call:
        built = call_pb2.Call(function=function, correlation_id=correlation_id)
        built.input.CopyFrom(values.to_any(value))
        return built

    def run_double(self, request: Any) -> Any:
        return self.exit(2 * values.from_any(request.input))

    def run_context(self, request: Any) -> Any:
        return self.exit(
            [request.dispatch_id, request.parent_dispatch_id, request.root_dispatch_id]
        )

    def run_fanout(self, request: Any) -> Any:
        """Doubles 0..n-1 in n children; resumed once, with every result."""
        if request.WhichOneof("directive") != "poll_result":
            n = values.from_any(request.input)
            calls = [self.child("double", k, correlation_id=100 + k) for k in range(n)]
            calls.append(self.child("context", None, correlation_id=1))
            return self.poll("fanout", calls, n + 1, n + 1)
        resume = request.poll_result
        assert values.from_any(resume.typed_coroutine_state) == "fanout"
        outputs = {r.correlation_id: values.from_any(r.output) for r in resume.results}
        context = outputs.pop(1)
        return self.exit({"sum": sum(outputs.values()), "ids": sorted(outputs), "child": context})

    def run_trickle(self, request: Any) -> Any:
        """Three children, resumed with one result at a time (min 1, max 1)."""
        if request.WhichOneof("directive") != "poll_result":
            calls = [self.child("double", k, correlation_id=k) for k in range(3)]
            return self.poll("0", calls, 1, 1)
        resume = request.poll_result
        seen = int(values.from_any(resume.typed_coroutine_state)) + len(resume.results)
        if seen < 3:
            return self.poll(str(seen), [], 1, 1)
        return self.exit(seen)

    def run_sleep(self, request: Any) -> Any:
        """A Poll with no calls: a timer of max_wait."""
        if request.WhichOneof("directive") != "poll_result":
            return self.poll(str(time.time()), [], 1, 1, wait=1.0)
        started = float(values.from_any(request.poll_result.typed_coroutine_state))
        return self.exit(time.time() - started)

    def run_incompatible(self, request: Any) -> Any:
        """Refuses to resume its state twice: started over each time."""
        if request.WhichOneof("directive") != "poll_result":
            runs = Coroutines.restarts.get(request.dispatch_id, 0)
            Coroutines.restarts[request.dispatch_id] = runs + 1
            if runs == 2:
                return self.exit(f"run {runs + 1}")
            return self.poll("old", [self.child("double", 1, correlation_id=0)], 1, 1)
        return self.exit("cannot resume", Status.INCOMPATIBLE_STATE)

    def run_bad_poll(self, request: Any) -> Any:
        return self.poll("x", [], 2, 1)

    def run_bad_tail(self, request: Any) -> Any:
        response = function_pb2.RunResponse(status=Status.OK.value)
        response.exit.tail_call.function = "not a name"
        return response


@pytest.fixture(scope="module")
def coroutines() -> Iterator[str]:
    with http_server(Coroutines) as url:
        yield url


def run(loop: Loop, endpoint: str, function: str, value: Any = None) -> calls_pb2.CallInfo:
    call = call_pb2.Call(function=function, endpoint=endpoint)
    if value is not None:
        call.input.CopyFrom(values.to_any(value))
    (dispatch_id,) = loop.dispatch(call)
    return loop.wait(dispatch_id)


def test_a_poll_runs_its_children_and_resumes_with_their_results(
    loop: Loop, coroutines: str
) -> None:
    info = run(loop, coroutines, "fanout", 5)
    assert info.status == Status.OK, info
    output = values.from_any(info.output)
    assert output["sum"] == 2 * (0 + 1 + 2 + 3 + 4)
    assert output["ids"] == [100, 101, 102, 103, 104]  # every correlation id came back
    # A child runs with the polling call as its parent, and the same root.
    child_id, parent, root = output["child"]
    assert (parent, root) == (info.dispatch_id, info.dispatch_id)
    assert child_id != info.dispatch_id


def test_min_and_max_results_resume_one_result_at_a_time(loop: Loop, coroutines: str) -> None:
    info = run(loop, coroutines, "trickle")
    assert (info.status, values.from_any(info.output)) == (Status.OK, 3), info


def test_a_poll_without_calls_sleeps_max_wait(loop: Loop, coroutines: str) -> None:
    info = run(loop, coroutines, "sleep")
    assert info.status == Status.OK, info
    assert 1.0 <= values.from_any(info.output) < 5.0


def test_incompatible_state_restarts_the_call_from_its_input(loop: Loop, coroutines: str) -> None:
    info = run(loop, coroutines, "incompatible")
    assert (info.status, values.from_any(info.output)) == (Status.OK, "run 3"), info


def test_an_invalid_poll_is_a_final_invalid_response(loop: Loop, coroutines: str) -> None:
    info = run(loop, coroutines, "bad_poll")
    assert info.status == Status.INVALID_RESPONSE
    assert "min_results must be 1 to max_results" in info.error.message


def test_an_invalid_tail_call_is_a_final_invalid_response(loop: Loop, coroutines: str) -> None:
    info = run(loop, coroutines, "bad_tail")
    assert (info.status, info.error.type) == (Status.INVALID_RESPONSE, "InvalidTailCall")
    assert "invalid function name 'not a name'" in info.error.message


class Gauged(http.server.BaseHTTPRequestHandler):
    """An endpoint that takes 0.1 s per call and records how many ran at once.

    With ``gather`` set, the first calls are held until that many run at once (or a
    generous bound passes), so that whether a cap is reached does not depend on how fast
    the machine happens to be."""

    lock = threading.Condition()
    in_flight = 0
    most = 0
    gather = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with Gauged.lock:
            Gauged.in_flight += 1
            Gauged.most = max(Gauged.most, Gauged.in_flight)
            Gauged.lock.notify_all()
            if Gauged.most < Gauged.gather:
                Gauged.lock.wait_for(lambda: Gauged.most >= Gauged.gather, timeout=30)
        time.sleep(0.1)
        with Gauged.lock:
            Gauged.in_flight -= 1
        body = Coroutines.exit("ok").SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_cap_per_destination_holds(tmp_path: Path) -> None:
    Gauged.most, Gauged.gather = 0, 3
    try:
        with http_server(Gauged) as endpoint:
            capped(tmp_path, endpoint)
    finally:
        Gauged.gather = 0


def capped(tmp_path: Path, endpoint: str) -> None:
    key = Ed25519PrivateKey.generate()
    scheduler = Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "scheduler",
            "--db",
            str(tmp_path / "s.db"),
            "--port",
            "0",
            "--max-per-destination",
            "3",
        ],
        environment(DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY),
        tmp_path,
    )
    try:
        url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        with Client(url, API_KEY) as client:
            ids = client.dispatch([call_pb2.Call(function="f", endpoint=endpoint)] * 30)
            infos = [client.wait(i, timeout=60) for i in ids]
        assert {i.status for i in infos} == {Status.OK}
        assert Gauged.most == 3  # reached, and never passed
    finally:
        scheduler.stop()


def test_sigterm_lets_attempts_in_flight_finish(tmp_path: Path) -> None:
    with http_server(Gauged) as endpoint:
        ids = stopped_mid_flight(tmp_path, endpoint)
    # What was in flight finished and was recorded: nothing is left running. Read from
    # the file the stopped process left, not through a scheduler started on it, which
    # may claim a call that had not started (still ready) before it is read.
    db = sqlite3.connect(f"{(tmp_path / 's.db').as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT dispatch_id, state FROM calls").fetchall()
    finally:
        db.close()
    states = dict(rows)
    assert sorted(states) == sorted(ids)
    assert "running" not in states.values(), states


def stopped_mid_flight(tmp_path: Path, endpoint: str) -> list[str]:
    """Five calls dispatched, and the scheduler sent SIGTERM while they run."""
    key = Ed25519PrivateKey.generate()
    env = environment(DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY)
    database = tmp_path / "s.db"
    command = [
        sys.executable,
        "-m",
        "dispatchlet",
        "scheduler",
        "--db",
        str(database),
        "--port",
        "0",
    ]
    scheduler = Process(command, env, tmp_path)
    try:
        url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        with Client(url, API_KEY) as client:
            ids = client.dispatch([call_pb2.Call(function="f", endpoint=endpoint)] * 5)
        deadline = time.monotonic() + 10
        while Gauged.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        scheduler.process.send_signal(signal.SIGTERM)
        assert scheduler.process.wait(timeout=30) == 0
    finally:
        scheduler.stop()
    return ids


@pytest.mark.parametrize(
    ("endpoint", "kinds"),
    [
        ("http://no-such-host.invalid", ("gaierror",)),
        ("https://127.0.0.1:{port}", ("ClientConnectorSSLError", "ClientSSLError", "SSLError")),
    ],
    ids=["dns", "tls"],
)
def test_dns_and_tls_failures_are_retried(
    loop: Loop, misbehaving: str, endpoint: str, kinds: tuple[str, ...]
) -> None:
    # TLS: an https:// endpoint that answers plain HTTP.
    call = call_pb2.Call(function="f", endpoint=endpoint.format(port=misbehaving.rsplit(":")[-1]))
    call.expiration.FromMilliseconds(1500)
    (dispatch_id,) = loop.dispatch(call)
    info = loop.wait(dispatch_id)
    assert info.status == Status.TIMEOUT  # retried until the call expired
    assert info.attempts > 1
    assert info.error.type in kinds, info.error


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    from email.utils import formatdate

    from dispatchlet.scheduler.http_caller import retry_after

    assert retry_after("7") == 7.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    later = retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None
    assert 25 <= later <= 31


BUSY_APP = """
import json, os, time
from pathlib import Path
from dispatchlet import Endpoint, RunContext

endpoint = Endpoint()
LOG = Path(os.environ["RUNS_LOG"])


def note(**fields: object) -> None:
    with LOG.open("a") as log:
        log.write(json.dumps(fields) + "\\n")


@endpoint.function
def hold(seconds: float) -> str:
    held = LOG.with_suffix(".held")
    if not held.exists():  # the first run only: its retries answer at once
        held.touch()
        note(function="hold", start=time.time())
        time.sleep(seconds)
    return "held"


@endpoint.function
def record(context: RunContext) -> str:
    assert context.expiration_time is not None
    note(function="record", start=time.time(), expires=context.expiration_time.timestamp())
    return "recorded"
"""


def test_a_request_that_waited_past_its_attempt_is_not_run(tmp_path: Path) -> None:
    """The endpoint's only thread is busy for longer than the attempt timeout: the
    scheduler gives up on the requests queued behind it and sends them again. The ones
    it gave up on are not run when the thread frees up; the call runs once."""
    (tmp_path / "app.py").write_text(BUSY_APP)
    runs = tmp_path / "runs.jsonl"
    key = Ed25519PrivateKey.generate()
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0", "--threads", "1"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), RUNS_LOG=str(runs)
        ),
        tmp_path,
    )
    scheduler = Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "scheduler",
            "--db",
            str(tmp_path / "s.db"),
            "--port",
            "0",
            "--attempt-timeout",
            "1",
            "--backoff",
            "0.05",
            "--backoff-cap",
            "0.2",
        ],
        environment(DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY),
        tmp_path,
    )
    try:
        url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        scheduler_url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        with Client(scheduler_url, API_KEY) as client:
            (held,) = client.dispatch(
                [call_pb2.Call(function="hold", endpoint=url, input=values.to_any(3.0))]
            )
            deadline = time.monotonic() + 20
            while not (runs.exists() and "hold" in runs.read_text()):
                assert time.monotonic() < deadline, "hold never started"
                time.sleep(0.02)
            (recorded,) = client.dispatch([call_pb2.Call(function="record", endpoint=url)])
            infos = [client.wait(i, timeout=60) for i in (held, recorded)]
    finally:
        scheduler.stop()
        endpoint.stop()
    assert [i.status for i in infos] == [Status.OK, Status.OK]
    # The scheduler gave up on ``record`` while ``hold`` held the thread.
    assert infos[1].attempts >= 2, infos[1]
    notes = [json.loads(line) for line in runs.read_text().splitlines()]
    records = [n for n in notes if n["function"] == "record"]
    assert len(records) == 1, records
    assert records[0]["start"] < records[0]["expires"]
