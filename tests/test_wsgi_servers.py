"""The WSGI adapter on real servers: gunicorn (sync and gthread workers), waitress, and
``dispatchlet serve``'s own (a thread per connection).

Each server runs in its own process on a loopback port. Requests are written byte by
byte on raw sockets, so that the request line, the framing and the body are exactly
what each test says, as an HTTP client library would not allow.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from dispatchlet import Request
from dispatchlet.core import values
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.keys import public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from support import PUBLIC_KEY, http_request, independently_signed, run_request, signed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "wsgi"
MAX_BODY = 1 << 20
BODY_TIMEOUT = 1.0
WAITRESS_CHANNEL_TIMEOUT = 2
# waitress counts a chunked body's framing against its limit, as serve_waitress.py says.
WAITRESS_MARGIN = 65536

APP = f"""
from dispatchlet import Endpoint
from dispatchlet.adapters.wsgi import wsgi_app

endpoint = Endpoint(max_body_size={MAX_BODY})  # key: DISPATCH_VERIFICATION_KEY


@endpoint.function
def echo(value):
    return value


app = wsgi_app(endpoint, body_timeout={BODY_TIMEOUT})
"""

GUNICORN = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--graceful-timeout", "2"]
SERVERS = {
    "gunicorn-sync": [*GUNICORN, "--worker-class", "sync", "--workers", "2", "server_app:app"],
    "gunicorn-gthread": [
        *GUNICORN,
        *("--worker-class", "gthread", "--workers", "1", "--threads", "8", "server_app:app"),
    ],
    "waitress": [
        *(sys.executable, "-m", "waitress", "--listen", "127.0.0.1:0", "--threads", "8"),
        f"--max-request-body-size={MAX_BODY + WAITRESS_MARGIN}",
        f"--channel-timeout={WAITRESS_CHANNEL_TIMEOUT}",
        "--cleanup-interval=1",
        "server_app:app",
    ],
    "dispatchlet-serve": [
        *(sys.executable, "-m", "dispatchlet", "serve", "server_app.py:endpoint"),
        *("--port", "0", "--threads", "8"),
    ],
}
# dispatchlet serve's own server gives a body that stops arriving this long (then the
# app answers that it stopped arriving).
SERVE_CHANNEL_TIMEOUT = 10
LISTENING = re.compile(r"(?:Listening at|Serving on|serving \S+ at):? http://127\.0\.0\.1:(\d+)")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> tuple[int, str, str]:
        """Status, Connect code and message of an error answer."""
        assert self.headers["content-type"] == "application/json", self
        error = json.loads(self.body)
        return self.status, error["code"], error["message"]

    def output(self) -> Any:
        """The decoded output of a successful run."""
        assert (self.status, self.headers["content-type"]) == (200, PROTO), self
        result = function_pb2.RunResponse.FromString(self.body)
        assert result.status == 1, result
        return values.from_any(result.exit.result.output)


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def exchange(self, data: bytes, *, half_close: bool = False) -> Answer | None:
        """Send one request, then read its answer (None: closed without one)."""
        with self.connect() as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            return read_answer(sock)

    def sign(self, value: Any, path: str = RUN_PATH) -> Request:
        return signed(http_request(run_request("echo", value), path=path, authority=self.authority))

    def call(self, value: Any, path: str = RUN_PATH) -> Any:
        answer = self.exchange(encode(self.sign(value, path)))
        assert answer is not None
        return answer.output()

    def assert_serves(self) -> None:
        """A signed request still gets its answer, and the server process is alive."""
        assert self.process.poll() is None, self.log.read_text()
        assert self.call("still serving") == "still serving"

    def memory(self) -> int:
        """Resident memory of the server and its worker processes, in bytes."""
        pids = [self.process.pid, *children(self.process.pid)]
        return sum(resident_bytes(pid) for pid in pids)


def read_answer(sock: socket.socket) -> Answer | None:
    """One answer framed by Content-Length (None: closed without one)."""
    data = b""
    try:
        while not complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass  # a server closing on a body it did not read resets, after its answer
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    assert len(body) == int(headers["content-length"]), (status_line, headers, body)
    return Answer(int(status_line.split()[1]), headers, body)


def complete(data: bytes) -> bool:
    head, separator, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"^content-length:\s*(\d+)", head, re.IGNORECASE | re.MULTILINE)
    return bool(separator) and length is not None and len(body) >= int(length.group(1))


def encode(
    request: Request,
    *,
    host: bool = True,
    body: bytes | None = None,
    content_length: int | None = None,
    chunks: Sequence[int] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    """The request's bytes on the wire: request line as given, Host, its headers, body.

    ``chunks``: send the body chunked, in pieces of these sizes (the rest in one).
    """
    payload = request.body if body is None else body
    lines = [f"{request.method} {request.path} {version}"]
    if host:
        lines.append(f"Host: {request.authority}")
    lines += [f"{name}: {value}" for name, value in request.headers]
    if chunks:
        lines.append("Transfer-Encoding: chunked")
        pieces, rest = [], payload
        for size in chunks:
            pieces.append(rest[:size])
            rest = rest[size:]
        pieces.append(rest)
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
    else:
        length = len(payload) if content_length is None else content_length
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + payload


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def resident_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def server_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["DISPATCH_VERIFICATION_KEY"] = public_key_base64(PUBLIC_KEY)
    # gunicorn 25.1+ opens a control socket under XDG_RUNTIME_DIR (or ~/.gunicorn):
    # one place per server, so that servers running side by side do not collide.
    env["XDG_RUNTIME_DIR"] = str(tmp)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def launch(name: str, command: list[str], cwd: Path, tmp: Path, env: dict[str, str]) -> Server:
    """Start a server process and wait until it answers; the caller stops it."""
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers in its own process group, to stop
        )
    server = Server(name, process, log)
    try:
        server.port = wait_for_port(process, log)
        wait_until_answering(server)
    except BaseException:
        stop(process)
        raise
    return server


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """``start(name, command, cwd, env)``: a server stopped when the test ends."""
    started: list[Server] = []

    def start_server(name: str, command: list[str], cwd: Path, env: dict[str, str]) -> Server:
        started.append(launch(name, command, cwd, tmp_path, env))
        return started[-1]

    yield start_server
    for server in started:
        stop(server.process)


def wait_for_port(process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"server did not start:\n{log.read_text(errors='replace')}")


def wait_until_answering(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    probe = f"GET / HTTP/1.1\r\nHost: {server.authority}\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        try:
            if server.exchange(probe.encode()) is not None:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"server did not answer:\n{server.log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    # Workers outliving their master: the group is this server's alone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wsgi_app")
    (directory / "server_app.py").write_text(APP)
    return directory


@pytest.fixture(scope="module", params=list(SERVERS))
def server(
    request: pytest.FixtureRequest, app_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    # Module scope: each server starts once for all the tests below.
    name: str = request.param
    tmp = tmp_path_factory.mktemp(name)
    running = launch(name, SERVERS[name], app_dir, tmp, server_env(tmp))
    yield running
    stop(running.process)


ENCODED_PATHS = {
    "plain": RUN_PATH,
    "encoded-slash": "/a%2Fb" + RUN_PATH,
    "encoded-space-and-utf8": "/x%20y/caf%C3%A9" + RUN_PATH,
    "double-slashes": "//double//slashes" + RUN_PATH,
    "params": "/p;a=1/q;b" + RUN_PATH,
    "everything": "/v1%2F2;k=v//%E2%9C%93%20ok" + RUN_PATH,
}


@pytest.mark.parametrize("path", list(ENCODED_PATHS.values()), ids=list(ENCODED_PATHS))
def test_percent_encoded_path_prefix_verifies(server: Server, path: str) -> None:
    assert server.call(path, path) == path


def test_signature_binds_the_path_as_sent_not_as_decoded(server: Server) -> None:
    # Both paths decode to the same PATH_INFO: only the raw one can tell them apart.
    request = server.sign("x", "/a/b" + RUN_PATH)
    answer = server.exchange(encode(replace(request, path="/a%2Fb" + RUN_PATH)))
    assert answer is not None
    status, code, message = answer.error()
    assert (status, code) == (403, "permission_denied")
    assert message.startswith("invalid signature")


def test_independently_signed_request(server: Server) -> None:
    path = "/base%20path/v%C3%A9%2Fx" + RUN_PATH
    body = run_request("echo", "interop").SerializeToString()
    request = independently_signed(
        body,
        path=path,
        authority=server.authority,
        scheme="http",
        expires=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1),
    )
    answer = server.exchange(encode(request))
    assert answer is not None
    assert answer.output() == "interop"


def test_chunked_body(server: Server) -> None:
    value = {"text": "chunked " * 200, "n": 7}
    request = server.sign(value)
    answer = server.exchange(encode(request, chunks=(1, 7, 300, 1000)))
    assert answer is not None
    assert answer.output() == value


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_missing_host_is_400(server: Server, version: str) -> None:
    answer = server.exchange(encode(server.sign("x"), host=False, version=version))
    assert answer is not None
    assert answer.error() == (400, "invalid_argument", "missing Host header")


def run_request_of_size(size: int) -> bytes:
    """A serialized RunRequest for echo of exactly ``size`` bytes."""
    text = "x" * size
    while excess := len(run_request("echo", text).SerializeToString()) - size:
        text = "x" * (len(text) - excess)
    return run_request("echo", text).SerializeToString()


@pytest.mark.parametrize("chunks", [(), (65536,)], ids=["content-length", "chunked"])
def test_body_limit_is_exact(server: Server, chunks: tuple[int, ...]) -> None:
    body = run_request_of_size(MAX_BODY)
    request = signed(http_request(body, authority=server.authority))
    answer = server.exchange(encode(request, chunks=chunks))
    assert answer is not None
    assert answer.output() == values.from_any(function_pb2.RunRequest.FromString(body).input)

    over = signed(http_request(run_request_of_size(MAX_BODY + 1), authority=server.authority))
    answer = server.exchange(encode(over, chunks=chunks))
    assert answer is not None
    assert answer.error() == (400, "invalid_argument", f"request body exceeds {MAX_BODY} bytes")


def test_announced_oversized_body_is_refused_at_once(server: Server) -> None:
    request = server.sign("x")
    started = time.monotonic()
    answer = server.exchange(encode(request, body=b"x" * 16384, content_length=1 << 30))
    # Well under the 10 s the client waits for an answer: refused, not read (a loaded
    # machine may take a few seconds to get there).
    assert time.monotonic() - started < 8
    assert answer is not None
    if server.name == "waitress":
        # waitress reads a body before calling the app; past max_request_body_size (the
        # endpoint's limit here) it refuses it itself, unread.
        assert answer.status == 413
    else:
        assert answer.error() == (400, "invalid_argument", f"request body exceeds {MAX_BODY} bytes")
    server.assert_serves()


def test_endless_chunked_body_is_cut_off_at_the_limit(server: Server) -> None:
    before = server.memory()
    sent = 0
    with server.connect() as sock:
        head = f"POST {RUN_PATH} HTTP/1.1\r\nHost: {server.authority}\r\n"
        sock.sendall(f"{head}Content-Type: {PROTO}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())

        def send() -> None:
            nonlocal sent
            piece = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
            try:
                while sent < 64 * MAX_BODY:
                    sock.sendall(piece)
                    sent += 0x10000
            except OSError:
                pass  # the server answered and closed: what is expected

        sender = threading.Thread(target=send, daemon=True)
        started = time.monotonic()
        sender.start()
        answer = read_answer(sock)
        elapsed = time.monotonic() - started
        with contextlib.suppress(OSError):  # unblocks the sender, if the server has not
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=10)
    assert elapsed < 8  # the client gives up at 10 s
    assert answer is not None
    if server.name == "waitress":
        assert answer.status == 413
    else:
        assert answer.error() == (400, "invalid_argument", f"request body exceeds {MAX_BODY} bytes")
    assert sent < 64 * MAX_BODY  # the server stopped taking the body
    if before:
        assert server.memory() - before < 16 * MAX_BODY
    server.assert_serves()


def test_body_shorter_than_announced_then_half_close(server: Server) -> None:
    started = time.monotonic()
    answer = server.exchange(
        encode(server.sign("x"), body=b"x" * 100, content_length=1000), half_close=True
    )
    assert time.monotonic() - started < 8  # the client gives up at 10 s
    if server.name == "waitress":
        # waitress waits for the whole body before calling the app: it just closes.
        assert answer is None
    else:
        assert answer is not None
        assert answer.error() == (
            400,
            "invalid_argument",
            "incomplete request body: 100 of 1000 bytes arrived",
        )
    server.assert_serves()


def test_stalled_body_is_given_up_while_others_are_served(server: Server) -> None:
    with server.connect(timeout=25) as sock:
        sock.sendall(encode(server.sign("x"), body=b"x" * 100, content_length=1000))
        started = time.monotonic()
        server.assert_serves()
        answer = read_answer(sock)
        elapsed = time.monotonic() - started
    if server.name == "waitress":
        # channel_timeout, checked every cleanup_interval, drops the connection.
        assert answer is None
        assert elapsed < WAITRESS_CHANNEL_TIMEOUT + 10  # the client gives up at 25 s
    else:
        # The adapter's body_timeout on gunicorn's socket; dispatchlet serve's server
        # reads the body itself, and hands what came to the app once it stalls.
        assert answer is not None
        assert answer.error() == (
            400,
            "invalid_argument",
            "incomplete request body: it stopped arriving (timed out)",
        )
        waited = SERVE_CHANNEL_TIMEOUT if server.name == "dispatchlet-serve" else BODY_TIMEOUT
        assert waited / 2 < elapsed < waited + 10  # the client gives up at 25 s
    server.assert_serves()


def test_concurrent_clients_each_get_their_own_answer(server: Server) -> None:
    def one(n: int) -> tuple[int, Any]:
        value = {"n": n, "text": f"request {n}", "items": list(range(n % 7))}
        return n, (value, server.call(value, f"/c{n}" + RUN_PATH))

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = dict(pool.map(one, range(400)))
    assert sorted(results) == list(range(400))
    for sent, received in results.values():
        assert received == sent
    server.assert_serves()


def test_deployed_gunicorn_config_behind_a_rewriting_proxy(start: Any, tmp_path: Path) -> None:
    # As behind a proxy that serves https://functions.example.com/team/... and forwards
    # to gunicorn with its own Host and without the prefix: DISPATCH_ENDPOINT_URL says
    # what the scheduler signed.
    public = "https://functions.example.com/team"
    env = server_env(tmp_path, DISPATCH_ENDPOINT_URL=public, WEB_CONCURRENCY="2")
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
    server = start("gunicorn-conf", [*command, "--bind", "127.0.0.1:0"], DEPLOY, env)
    request = signed(
        http_request(
            run_request("greet", "World"),
            path="/team" + RUN_PATH,
            authority="functions.example.com",
        )
    )
    as_forwarded = replace(request, path=RUN_PATH, authority=server.authority)
    answer = server.exchange(encode(as_forwarded))
    assert answer is not None
    assert answer.output() == "Hello, World!"
    # The access log line of the configured format: request line as sent, status, time.
    deadline = time.monotonic() + 5
    while f'"POST {RUN_PATH} HTTP/1.1" 200' not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    assert re.search(r'" 200 \d+ \d+ms "', server.log.read_text())


def test_gunicorn_without_a_key_says_so_when_it_starts(
    start: Any, app_dir: Path, tmp_path: Path
) -> None:
    env = server_env(tmp_path)
    del env["DISPATCH_VERIFICATION_KEY"]
    command = [*GUNICORN, "--worker-class", "sync", "--workers", "1", "server_app:app"]
    # Started: listening, and a worker answered a probe, so it has imported the app.
    server = start("gunicorn-no-key", command, app_dir, env)
    started = server.log.read_text()
    warning = "DISPATCH_VERIFICATION_KEY is not set"
    assert started.count(warning) == 1, started
    line = next(line for line in started.splitlines() if warning in line)
    assert "every request will be refused with 401" in line
    assert "`dispatchlet scheduler` prints it at start" in line
    # What it warned of: a signed request is refused, and the start warning is not repeated.
    answer = server.exchange(encode(server.sign("hello")))
    assert answer is not None
    assert answer.error()[:2] == (401, "unauthenticated")
    assert server.log.read_text().count(warning) == 1


@pytest.mark.parametrize(
    ("args", "env", "model"),
    [
        ([], {}, "ThreadWorker, 1 worker(s) x 8 thread(s)"),
        (["-k", "sync"], {}, "SyncWorker, 1 worker(s) x 1 thread(s)"),
        (["--worker-class=sync"], {}, "SyncWorker, 1 worker(s) x 1 thread(s)"),
        ([], {"GUNICORN_WORKER_CLASS": "sync"}, "SyncWorker, 1 worker(s) x 1 thread(s)"),
    ],
    ids=["default", "-k sync", "--worker-class=sync", "env sync"],
)
def test_gunicorn_config_runs_the_worker_model_asked_for(
    start: Any, tmp_path: Path, args: list[str], env: dict[str, str], model: str
) -> None:
    # threads = 8 in a config file silently turns `-k sync` into gthread; this one doesn't.
    environment = server_env(tmp_path, WEB_CONCURRENCY="1", **env)
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", *args]
    server = start("gunicorn-model", [*command, "--bind", "127.0.0.1:0"], DEPLOY, environment)
    assert f"worker model: {model}" in server.log.read_text()
    request = signed(http_request(run_request("greet", "Ada"), authority=server.authority))
    answer = server.exchange(encode(request))
    assert answer is not None
    assert answer.output() == "Hello, Ada!"


USER_APP = """
from dispatchlet import Endpoint

endpoint = Endpoint()


@endpoint.function
def shout(text: str) -> str:
    return text.upper() + "!"
"""


def test_waitress_launcher_serves_the_users_app(start: Any, tmp_path: Path) -> None:
    # The user's own folder, outside this repository, with no app.py of the example.
    user_dir = tmp_path / "myproject"
    user_dir.mkdir()
    (user_dir / "myapp.py").write_text(USER_APP)
    env = server_env(tmp_path, HOST="127.0.0.1", PORT="0")
    launcher = str(DEPLOY / "serve_waitress.py")
    server = start("waitress-launcher", [sys.executable, launcher, "myapp"], user_dir, env)
    request = signed(http_request(run_request("shout", "hey"), authority=server.authority))
    answer = server.exchange(encode(request))
    assert answer is not None
    assert answer.output() == "HEY!"
    # The example app's function is not there: it is the user's app that runs.
    other = signed(http_request(run_request("greet", "Ada"), authority=server.authority))
    answer = server.exchange(encode(other))
    assert answer is not None
    assert answer.error()[:2] == (404, "not_found")
    # A body far past the endpoint's limit is refused by waitress itself, unread.
    refused = server.exchange(encode(request, body=b"", content_length=1 << 30))
    assert refused is not None
    assert refused.status == 413


def test_waitress_launcher_names_a_missing_app(tmp_path: Path) -> None:
    launcher = str(DEPLOY / "serve_waitress.py")
    result = subprocess.run(
        [sys.executable, launcher, "nosuchapp"],
        cwd=tmp_path,
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no module named 'nosuchapp'" in result.stderr


def test_waitress_launcher_logs_as_json_and_warns_of_a_missing_key(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(USER_APP)
    env = server_env(tmp_path, HOST="127.0.0.1", PORT="0")
    del env["DISPATCH_VERIFICATION_KEY"]
    launcher = str(DEPLOY / "serve_waitress.py")
    process = subprocess.Popen(
        [sys.executable, launcher, "myapp", "--log-format", "json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        reader = ThreadPoolExecutor(max_workers=1)
        # The first line it logs, bounded: the warning comes as the app is wrapped.
        line = reader.submit(process.stderr.readline).result(timeout=60)
        reader.shutdown(wait=False)
    finally:
        process.terminate()
        process.wait(timeout=30)
    record = json.loads(line)
    assert record["level"] == "warning"
    assert "DISPATCH_VERIFICATION_KEY" in record["message"]
