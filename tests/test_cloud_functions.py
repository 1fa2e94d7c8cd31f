"""The Cloud Functions adapter, served by the real functions-framework server on loopback,
and deploy/cloud_functions/deploy.py (staging a user's app, the gcloud steps)."""

from __future__ import annotations

import dataclasses
import http.client
import importlib.metadata
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flask
import pytest
from dispatchlet import Endpoint, Request, Response
from dispatchlet.adapters.cloud_functions import cloud_function
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.keys import public_key_base64, public_key_pem, public_keys_from_env
from support import (
    OTHER_KEY,
    PUBLIC_KEY,
    connect_error,
    http_request,
    independently_signed,
    output,
    run_request,
    signed,
)
from werkzeug.test import EnvironBuilder

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "cloud_functions"
LIMIT = 64 * 1024
BODY_TIMEOUT = 1.0
ENCODED_PREFIX = "/base%20path/v%C3%A9/a%2Fb"

APP = f"""
from dispatchlet import Endpoint
from dispatchlet.adapters.cloud_functions import cloud_function

endpoint = Endpoint(max_body_size={LIMIT})


@endpoint.function
def echo(value: object) -> object:
    return value


run = cloud_function(endpoint, body_timeout={BODY_TIMEOUT})
"""


# -- translation, on Flask requests built in-process ---------------------------------


def flask_request(request: Request, **environ: Any) -> flask.Request:
    """A Flask request for ``request`` as a WSGI server would hand it over."""
    builder = EnvironBuilder(
        method=request.method,
        path=request.path,
        headers=[("Host", request.authority), *request.headers],
        data=request.body,
    )
    env = builder.get_environ()
    for name, value in environ.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return flask.Request(env)


def answer(run: Any, request: flask.Request) -> Response:
    reply = run(request)
    assert isinstance(reply, flask.Response)
    return Response(reply.status_code, list(reply.headers.items()), reply.get_data())


def echo_endpoint() -> Endpoint:
    endpoint = Endpoint(verification_key=PUBLIC_KEY, max_body_size=LIMIT)
    endpoint.function(name="echo")(lambda value: value)
    return endpoint


def test_path_comes_from_the_raw_request_line() -> None:
    path = f"{ENCODED_PREFIX}{RUN_PATH}"
    request = signed(http_request(run_request("echo", "raw"), path=path))
    run = cloud_function(echo_endpoint())
    # Werkzeug's PATH_INFO is decoded ("/a/b"): only the raw line keeps "%2F".
    assert "%2F" not in flask_request(request).environ["PATH_INFO"]
    assert output(answer(run, flask_request(request, RAW_URI=path, REQUEST_URI=None))) == "raw"
    assert output(answer(run, flask_request(request, RAW_URI=None, REQUEST_URI=path))) == "raw"


def test_without_a_raw_request_line_the_decoded_path_is_reencoded() -> None:
    path = f"/base%20path/v%C3%A9{RUN_PATH}"
    request = signed(http_request(run_request("echo", "again"), path=path))
    flask_req = flask_request(request, RAW_URI=None, REQUEST_URI=None)
    assert flask_req.environ["PATH_INFO"].startswith("/base path/")
    assert output(answer(cloud_function(echo_endpoint()), flask_req)) == "again"


def test_oversized_body_is_refused_without_reading_it() -> None:
    request = http_request(b"x" * (LIMIT + 1))
    flask_req = flask_request(request)
    stream = flask_req.environ["wsgi.input"]
    status, code, message = connect_error(answer(cloud_function(echo_endpoint()), flask_req))
    assert (status, code) == (400, "invalid_argument")
    assert str(LIMIT) in message
    assert stream.tell() == 0


def test_body_shorter_than_its_length_is_refused() -> None:
    request = signed(http_request(run_request("echo", "short")))
    flask_req = flask_request(request, CONTENT_LENGTH=str(len(request.body) + 10))
    status, code, message = connect_error(answer(cloud_function(echo_endpoint()), flask_req))
    assert (status, code) == (400, "invalid_argument")
    assert message.startswith("incomplete request body")


def test_unterminated_stream_without_length_is_an_empty_body() -> None:
    request = signed(http_request(run_request("echo", "chunked")))
    run = cloud_function(echo_endpoint())
    # A body without Content-Length can only be read to its end when the server says
    # it terminates the stream; otherwise it counts as empty.
    unsafe = flask_request(request, CONTENT_LENGTH=None)
    assert connect_error(answer(run, unsafe))[:2] == (400, "invalid_argument")
    safe = flask_request(request, CONTENT_LENGTH=None, **{"wsgi.input_terminated": True})
    assert output(answer(run, safe)) == "chunked"


def test_response_keeps_the_cores_status_and_headers() -> None:
    request = http_request(run_request("echo", 1), method="GET")
    response = answer(cloud_function(echo_endpoint()), flask_request(request))
    assert connect_error(response)[:2] == (405, "unimplemented")
    assert response.header("allow") == "POST"


# -- the real functions-framework server ---------------------------------------------


@dataclass
class Server:
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


def functions_framework() -> str:
    found = shutil.which("functions-framework", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("functions-framework is not installed: pip install -e '.[test]'")
    return found


@contextmanager
def serve(source: Path, runtime_dir: Path, **env: str) -> Iterator[Server]:
    """functions-framework serving target ``run`` of ``source`` on a free loopback port."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    environ.update(env)
    # At info level gunicorn logs the port it bound (we ask for port 0: no race for a
    # free port); its control socket goes in a private folder, not in $HOME.
    environ.update(GUNICORN_LOG_LEVEL="info", XDG_RUNTIME_DIR=str(runtime_dir))
    command = [functions_framework(), "--target", "run", "--source", str(source)]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", "0"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server = Server(port=0)
    lines: queue.Queue[str] = queue.Queue()

    def read_log() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.log.append(line)
            lines.put(line)

    threading.Thread(target=read_log, daemon=True).start()
    try:
        server.port = wait_for_port(process, lines, server.log, time.monotonic() + 20)
        wait_until_accepting(server.port, time.monotonic() + 10)
        yield server
    finally:
        stop(process)


def wait_for_port(
    process: subprocess.Popen[str], lines: queue.Queue[str], log: list[str], deadline: float
) -> int:
    pattern = re.compile(r"(?:Listening at:|Running on) http://127\.0\.0\.1:(\d+)")
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if process.poll() is not None:
                pytest.fail(f"functions-framework exited:\n{''.join(log)}")
            continue
        if match := pattern.search(line):
            return int(match.group(1))
    pytest.fail(f"functions-framework did not report its port:\n{''.join(log)}")


def wait_until_accepting(port: int, deadline: float) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def post(
    server: Server, request: Request, connection: http.client.HTTPConnection | None = None
) -> Response:
    """Send ``request`` with its path and Host exactly as given."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    target = f"{request.path}?{request.query}" if request.query else request.path
    conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", request.authority)
    for name, value in request.headers:
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(request.body)))
    conn.endheaders(request.body)
    reply = conn.getresponse()
    body = reply.read()
    if connection is None:
        conn.close()
    return Response(reply.status, reply.getheaders(), body)


def send_raw(server: Server, data: bytes, *, end: bool = False) -> Response:
    """Write ``data`` (then nothing more, with ``end``) and read one response, whatever
    else the server still expects."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        if end:
            sock.shutdown(socket.SHUT_WR)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return Response(reply.status, reply.getheaders(), reply.read())


def call(server: Server, function: str, value: Any, **options: Any) -> Request:
    return signed(http_request(run_request(function, value), authority=server.authority, **options))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("cloud-function")
    (folder / "main.py").write_text(APP)
    with serve(
        folder / "main.py", folder, DISPATCH_VERIFICATION_KEY=public_key_base64(PUBLIC_KEY)
    ) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [RUN_PATH, f"{ENCODED_PREFIX}{RUN_PATH}", f"{ENCODED_PREFIX}{RUN_PATH}?q=%20"],
)
def test_signed_call(server: Server, target: str) -> None:
    path, _, query = target.partition("?")
    request = dataclasses.replace(call(server, "echo", {"n": [1, 2]}, path=path), query=query)
    assert output(post(server, request)) == {"n": [1, 2]}


@pytest.mark.slow
def test_signature_covers_the_path_as_sent_not_reencoded(server: Server) -> None:
    # Decoding and re-encoding the path loses the %2F: a signature over that is refused.
    reencoded = call(server, "echo", "x", path=f"/base%20path/v%C3%A9/a/b{RUN_PATH}")
    sent = dataclasses.replace(reencoded, path=f"{ENCODED_PREFIX}{RUN_PATH}")
    assert connect_error(post(server, sent))[:2] == (403, "permission_denied")


@pytest.mark.slow
def test_independently_signed_call(server: Server) -> None:
    path = f"{ENCODED_PREFIX}{RUN_PATH}"
    body = run_request("echo", "interop").SerializeToString()
    request = independently_signed(body, path=path, authority=server.authority, scheme="http")
    assert output(post(server, request)) == "interop"


@pytest.mark.slow
def test_http_errors(server: Server) -> None:
    unknown = post(server, call(server, "nope", 1))
    assert connect_error(unknown)[:2] == (404, "not_found")
    wrong_key = post(
        server, signed(http_request(run_request("echo", 1), authority=server.authority), OTHER_KEY)
    )
    assert connect_error(wrong_key)[:2] == (403, "permission_denied")
    unsigned = post(server, http_request(run_request("echo", 1), authority=server.authority))
    assert connect_error(unsigned)[:2] == (401, "unauthenticated")
    wrong_method = post(server, call(server, "echo", 1, method="PUT"))
    assert connect_error(wrong_method)[:2] == (405, "unimplemented")
    assert wrong_method.header("allow") == "POST"


def request_head(server: Server, *fields: str) -> bytes:
    lines = [f"POST {RUN_PATH} HTTP/1.1", f"Host: {server.authority}", *fields, "", ""]
    return "\r\n".join(lines).encode()


@pytest.mark.slow
def test_oversized_body_is_refused_before_it_is_sent(server: Server) -> None:
    # Only 1 KiB of the announced 1 MiB is sent: the answer cannot wait for the rest.
    head = request_head(server, f"Content-Type: {PROTO}", f"Content-Length: {1 << 20}")
    status, code, message = connect_error(send_raw(server, head + b"x" * 1024))
    assert (status, code) == (400, "invalid_argument")
    assert str(LIMIT) in message
    assert output(post(server, call(server, "echo", "still up"))) == "still up"


def chunked(data: bytes, size: int = 16 * 1024) -> bytes:
    return b"".join(
        b"%x\r\n%b\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    )


@pytest.mark.slow
def test_oversized_chunked_body_is_refused_at_the_limit(server: Server) -> None:
    head = request_head(server, f"Content-Type: {PROTO}", "Transfer-Encoding: chunked")
    # No last chunk: the server answers once the limit is passed.
    status, code, _ = connect_error(send_raw(server, head + chunked(b"x" * (LIMIT + 1024))))
    assert (status, code) == (400, "invalid_argument")
    assert output(post(server, call(server, "echo", "still up"))) == "still up"


@pytest.mark.slow
def test_chunked_body_within_the_limit(server: Server) -> None:
    request = call(server, "echo", "c" * 40_000)
    fields = [f"{name}: {value}" for name, value in request.headers]
    data = request_head(server, *fields, "Transfer-Encoding: chunked")
    assert output(send_raw(server, data + chunked(request.body) + b"0\r\n\r\n")) == "c" * 40_000


@pytest.mark.slow
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_incomplete_body_is_refused(server: Server, framing: str) -> None:
    request = call(server, "echo", "cut short")
    fields = [f"{name}: {value}" for name, value in request.headers]
    if framing == "content-length":
        head = request_head(server, *fields, f"Content-Length: {len(request.body)}")
        data = head + request.body[:-3]
    else:  # a chunk size that is not hexadecimal
        head = request_head(server, *fields, "Transfer-Encoding: chunked")
        data = head + chunked(request.body[:-3]) + b"zz\r\n"
    # 400 for the broken body, not a 403 for a digest over a part of it.
    status, code, message = connect_error(send_raw(server, data, end=True))
    assert (status, code) == (400, "invalid_argument")
    assert message.startswith("incomplete request body")
    assert output(post(server, call(server, "echo", "still up"))) == "still up"


@pytest.mark.slow
def test_stalled_body_is_given_up(server: Server) -> None:
    request = call(server, "echo", "stalls")
    fields = [f"{name}: {value}" for name, value in request.headers]
    head = request_head(server, *fields, f"Content-Length: {len(request.body)}")
    started = time.monotonic()
    # The client keeps the connection open but sends no more of the body.
    status, code, message = connect_error(send_raw(server, head + request.body[:-3]))
    assert (status, code) == (400, "invalid_argument")
    assert "timed out" in message
    # Given up after the body timeout, well before the client's own 10 s.
    assert BODY_TIMEOUT <= time.monotonic() - started < BODY_TIMEOUT + 8


@pytest.mark.slow
def test_concurrent_signed_calls(server: Server) -> None:
    local = threading.local()
    opened: list[http.client.HTTPConnection] = []

    def one(i: int) -> Any:
        if not hasattr(local, "conn"):  # one kept-alive connection per client thread
            local.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            opened.append(local.conn)
        return output(post(server, call(server, "echo", f"call {i}"), local.conn))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(100)))
    for conn in opened:
        conn.close()
    assert results == [f"call {i}" for i in range(100)]


@pytest.mark.slow
def test_importing_the_adapter_does_not_import_flask() -> None:
    code = (
        "import sys, dispatchlet, dispatchlet.adapters.cloud_functions;"
        "print(sorted({'flask', 'werkzeug', 'functions_framework'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


# -- deploy/cloud_functions ----------------------------------------------------------

FUNCTION_URL = "https://us-central1-example-project.cloudfunctions.net/hello"


USER_APP = {
    "service.py": """
from dispatchlet import Endpoint

from helpers import loud

endpoint = Endpoint()


@endpoint.function
def shout(text: str) -> str:
    return loud(text)
""",
    "helpers.py": "def loud(text: str) -> str:\n    return text.upper() + '!'\n",
    "requirements.txt": "# the app's own\nsix==1.16.0\n",
}


def write_app(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.slow
def test_a_users_app_staged_for_upload_is_served_by_functions_framework(tmp_path: Path) -> None:
    app = write_app(tmp_path / "myproject", USER_APP)
    staged = tmp_path / "staged"
    # As deploy.py sets them: the key as a one-line PEM, the URL the scheduler calls.
    key = public_key_pem(PUBLIC_KEY).strip().replace("\n", "\\n")
    result = deploy_script(
        None,
        "hello",
        "--region=us-central1",
        f"--verification-key={public_key_pem(PUBLIC_KEY)}",
        f"--app-dir={app}",
        "--handler=service:endpoint",
        f"--stage-dir={staged}",
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "target run" in result.stdout
    version = importlib.metadata.version("dispatchlet")
    wheel = f"vendor/dispatchlet-{version}-py3-none-any.whl"
    assert (staged / wheel).is_file()
    requirements = (staged / "requirements.txt").read_text().splitlines()
    assert requirements == ["# the app's own", "six==1.16.0", f"./{wheel}[cloud-functions]"]
    assert (staged / "helpers.py").read_text() == USER_APP["helpers.py"]
    with serve(
        staged / "main.py",
        tmp_path,
        DISPATCH_VERIFICATION_KEY=key,
        DISPATCH_ENDPOINT_URL=FUNCTION_URL,
    ) as running:
        # Signed for the public URL; the request reaches the container on another host.
        authority = FUNCTION_URL.split("/")[2]
        request = signed(
            http_request(run_request("shout", "hey"), authority=authority, path=f"/hello{RUN_PATH}")
        )
        delivered = dataclasses.replace(request, authority=running.authority, path=RUN_PATH)
        assert output(post(running, delivered)) == "HEY!"
        # Signed for the container's own address: not the URL it was told it serves.
        assert post(running, call(running, "shout", "x")).status == 403


@pytest.mark.parametrize(
    ("files", "handler", "message"),
    [
        ({"service.py": ""}, "service", "expected MODULE:ATTR"),
        ({"service.py": ""}, "other:endpoint", "module 'other' not found in"),
        ({"service.py": "", "main.py": ""}, "service:endpoint", "main.py would be replaced"),
        (
            {"main.py": "from dispatchlet import Endpoint\nendpoint = Endpoint()\n"},
            "main:endpoint",
            "add `run = cloud_function(endpoint)` to main.py",
        ),
    ],
)
def test_an_app_that_cannot_be_staged_is_named_before_anything_runs(
    fake_gcloud: dict[str, str], tmp_path: Path, files: dict[str, str], handler: str, message: str
) -> None:
    app = write_app(tmp_path / "myproject", files)
    result = deploy_script(
        fake_gcloud,
        "hello",
        "--region=r",
        "--key-secret=k",
        f"--app-dir={app}",
        f"--handler={handler}",
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert gcloud_calls(fake_gcloud) == []


def test_an_invalid_verification_key_stops_before_anything_is_built(
    fake_gcloud: dict[str, str],
) -> None:
    result = deploy_script(
        fake_gcloud, "hello", "--region=r", "--verification-key=not-a-key", check=False
    )
    assert result.returncode == 2
    assert "--verification-key: invalid Ed25519 public key" in result.stderr
    assert "Traceback" not in result.stderr
    assert gcloud_calls(fake_gcloud) == []


FAKE_GCLOUD = """#!{python}
# Records each call; `describe` knows the function once `deploy` ran.
import json, os, pathlib, sys
state = pathlib.Path(os.environ["FAKE_GCLOUD_STATE"])
call = {{"argv": sys.argv[1:]}}
source = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--source=")]
if source:
    root = pathlib.Path(source[0])
    call["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps(call) + "\\n")
if sys.argv[1:3] == ["functions", "deploy"]:
    (state / "deployed").touch()
elif sys.argv[1:3] == ["functions", "describe"]:
    failure = os.environ.get("FAKE_GCLOUD_DESCRIBE_ERROR")
    if failure:
        sys.exit(failure)
    if not (state / "deployed").exists():
        sys.exit("ERROR: (gcloud.functions.describe) NOT_FOUND")
    print("{url}")
"""


@pytest.fixture
def fake_gcloud(tmp_path: Path) -> dict[str, str]:
    """An environment whose only gcloud records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable, url=FUNCTION_URL))
    gcloud.chmod(0o755)
    return {**os.environ, "PATH": str(bin_dir), "FAKE_GCLOUD_STATE": str(tmp_path)}


def gcloud_calls(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["FAKE_GCLOUD_STATE"]) / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def deploy_script(
    env: dict[str, str] | None, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "deploy.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def printed_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if not line.startswith("#")]


DEPLOY_FLAGS = [
    "--gen2",
    "--region=us-central1",
    "--runtime=python312",
    "--source=<staging folder>",
    "--entry-point=run",
    "--trigger-http",
    "--allow-unauthenticated",
]


@pytest.mark.slow
def test_dry_run_with_a_secret_prints_the_two_step_deploy(fake_gcloud: dict[str, str]) -> None:
    result = deploy_script(
        fake_gcloud, "hello", "--region=us-central1", "--key-secret=dispatch-key", "--dry-run"
    )
    build, first, describe, second = printed_commands(result.stdout)
    assert build[1:4] == ["-m", "pip", "wheel"]
    secret = "--set-secrets=DISPATCH_VERIFICATION_KEY=dispatch-key:latest"
    assert first == ["gcloud", "functions", "deploy", "hello", *DEPLOY_FLAGS, secret]
    assert describe == [
        "gcloud",
        "functions",
        "describe",
        "hello",
        "--gen2",
        "--region=us-central1",
        "--format=value(url)",
    ]
    assert second == [*first, "--set-env-vars=DISPATCH_ENDPOINT_URL=<URL read in step 3>"]
    assert gcloud_calls(fake_gcloud) == []


@pytest.mark.slow
def test_dry_run_with_a_key_in_the_environment(
    fake_gcloud: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = public_key_pem(PUBLIC_KEY)
    result = deploy_script(
        fake_gcloud,
        "hello",
        "--region=us-central1",
        "--project=p",
        f"--verification-key={pem}",
        f"--endpoint-url={FUNCTION_URL}",
        "--dry-run",
        "--",
        "--min-instances=1",
    )
    (_, deploy) = printed_commands(result.stdout)  # the URL is known: one deploy
    prefix = "--set-env-vars=DISPATCH_VERIFICATION_KEY="
    (env_flag,) = [arg for arg in deploy if arg.startswith(prefix)]
    key, _, url = env_flag.removeprefix(prefix).partition(",DISPATCH_ENDPOINT_URL=")
    assert url == FUNCTION_URL
    assert "\n" not in key
    monkeypatch.setenv("DISPATCH_VERIFICATION_KEY", key)
    assert public_keys_from_env() == (PUBLIC_KEY,)
    assert "--project=p" in deploy
    assert deploy[-1] == "--min-instances=1"


@pytest.mark.slow
def test_dry_run_with_rotated_keys_escapes_the_commas(
    fake_gcloud: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = f"{public_key_base64(PUBLIC_KEY)},{public_key_base64(OTHER_KEY.public_key())}"
    result = deploy_script(
        fake_gcloud, "hello", "--region=r", f"--verification-key={keys}", "--dry-run"
    )
    deploy = printed_commands(result.stdout)[-1]
    (value,) = [a.removeprefix("--set-env-vars=") for a in deploy if a.startswith("--set-env")]
    # gcloud's rule (`gcloud topic escaping`): "^D^" first makes D the item delimiter.
    assert value.startswith("^")
    delimiter, _, items = value[1:].partition("^")
    env = dict(item.split("=", 1) for item in items.split(delimiter))
    assert env["DISPATCH_VERIFICATION_KEY"] == keys
    monkeypatch.setenv("DISPATCH_VERIFICATION_KEY", env["DISPATCH_VERIFICATION_KEY"])
    assert public_keys_from_env() == (PUBLIC_KEY, OTHER_KEY.public_key())


@pytest.mark.slow
def test_deploy_reads_the_url_and_deploys_again(
    fake_gcloud: dict[str, str], tmp_path: Path
) -> None:
    version = importlib.metadata.version("dispatchlet")
    wheel = tmp_path / f"dispatchlet-{version}-py3-none-any.whl"
    wheel.write_bytes(b"stands in for the built wheel")
    args = ["hello", "--region=us-central1", "--key-secret=k", f"--wheel={wheel}"]
    result = deploy_script(fake_gcloud, *args)
    assert f"Endpoint URL: {FUNCTION_URL}\n" in result.stdout
    # How to run calls on it: through the user's own scheduler.
    assert f"dispatchlet dispatch --endpoint {FUNCTION_URL} FUNCTION" in result.stdout
    calls = gcloud_calls(fake_gcloud)
    describe, deploy = ["functions", "describe"], ["functions", "deploy"]
    assert [call["argv"][:2] for call in calls] == [describe, deploy, describe, deploy]
    uploaded = sorted(
        [
            *(p.name for p in (ROOT / "examples").glob("*.py")),
            "main.py",
            "requirements.txt",
            f"vendor/{wheel.name}",
        ]
    )
    assert calls[1]["files"] == calls[3]["files"] == uploaded
    assert not any(arg.startswith("--set-env-vars") for arg in calls[1]["argv"])
    assert f"--set-env-vars=DISPATCH_ENDPOINT_URL={FUNCTION_URL}" in calls[3]["argv"]

    # Deployed already: its URL is known up front, one deploy suffices.
    deploy_script(fake_gcloud, *args)
    again = gcloud_calls(fake_gcloud)[len(calls) :]
    assert [call["argv"][:2] for call in again] == [describe, deploy]
    assert f"--set-env-vars=DISPATCH_ENDPOINT_URL={FUNCTION_URL}" in again[1]["argv"]


@pytest.mark.slow
def test_a_describe_failure_other_than_not_found_stops_with_gclouds_message(
    fake_gcloud: dict[str, str], tmp_path: Path
) -> None:
    error = "ERROR: (gcloud.functions.describe) You do not currently have an active account"
    env = {**fake_gcloud, "FAKE_GCLOUD_DESCRIBE_ERROR": error}
    wheel = tmp_path / "dispatchlet-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"stands in for the built wheel")
    result = deploy_script(
        env, "hello", "--region=us-central1", "--key-secret=k", f"--wheel={wheel}", check=False
    )
    assert result.returncode == 1
    assert error in result.stderr
    calls = gcloud_calls(fake_gcloud)
    assert [call["argv"][:2] for call in calls] == [["functions", "describe"]]


@pytest.mark.slow
def test_a_handler_in_main_py_is_the_entry_point_itself(
    fake_gcloud: dict[str, str], tmp_path: Path
) -> None:
    app = write_app(
        tmp_path / "myproject",
        {
            "main.py": "from dispatchlet import Endpoint\n"
            "from dispatchlet.adapters.cloud_functions import cloud_function\n"
            "endpoint = Endpoint()\napp = cloud_function(endpoint)\n"
        },
    )
    result = deploy_script(
        fake_gcloud,
        "hello",
        "--region=us-central1",
        "--key-secret=k",
        f"--app-dir={app}",
        "--handler=main:app",
        "--dry-run",
    )
    deploys = [
        c for c in printed_commands(result.stdout) if c[:3] == ["gcloud", "functions", "deploy"]
    ]
    assert deploys
    assert all("--entry-point=app" in command for command in deploys)
