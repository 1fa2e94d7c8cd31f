"""The dispatchlet command: keygen, serve and call as real processes, and APP loading."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Endpoint
from dispatchlet.core.keys import (
    load_private_key,
    load_public_key,
    private_key_base64,
    public_key_base64,
)
from dispatchlet.serving.app_loading import AppLoadError, load_endpoint, split_app

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.py"
START_TIMEOUT = 20.0
RUN_TIMEOUT = 30.0
POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def cli_env(**variables: str) -> dict[str, str]:
    """The environment without DISPATCH_* settings or proxies, plus ``variables``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("DISPATCH_") and name.lower() not in _PROXY_VARIABLES
    }
    env.update(variables)
    return env


def dispatchlet(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatchlet.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env() if env is None else env,
        cwd=cwd,
        timeout=RUN_TIMEOUT,
        check=False,
    )


class Server:
    """A ``dispatchlet serve`` process whose output (stdout and stderr) is read as it
    comes, so that every wait for it is bounded."""

    def __init__(self, *args: str, env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dispatchlet.cli", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""
        self.signing_key: str | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def start(self) -> str:
        """Wait for the banner; return it."""
        banner = self.wait_for("Press Ctrl+C to stop.")
        match = re.search(r"serving \S+ at (http://\S+)", banner)
        assert match, banner
        self.url = match.group(1)
        key = re.search(r"export DISPATCH_SIGNING_KEY=(\S+)", banner)
        self.signing_key = key.group(1) if key else None
        return banner

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """All output up to and including the first line after the last wait that holds
        ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{''.join(self.output)}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.process.wait(timeout=5)
                raise AssertionError(
                    f"serve exited ({code}) before printing {text!r}:\n{''.join(self.output)}"
                )
            self.output.append(line)
            if text in line:
                return "".join(self.output)

    def stop(self, signum: int) -> int:
        """Send ``signum``; the exit status, within a bounded wait."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=10)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def serve(*args: str, env: dict[str, str], cwd: Path) -> Iterator[Server]:
    server = Server(*args, env=env, cwd=cwd)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """examples/hello.py served with a session key, from an unrelated directory."""
    yield from serve(str(HELLO), env=cli_env(), cwd=tmp_path_factory.mktemp("elsewhere"))


def call(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    signing_key = key or server.signing_key
    assert signing_key is not None
    env = cli_env(DISPATCH_SIGNING_KEY=signing_key)
    return dispatchlet("call", "--endpoint", server.url, *args, env=env)


# --- keygen -------------------------------------------------------------------


def pem_block(kind: str, text: str) -> str:
    match = re.search(f"-----BEGIN {kind}-----.*?-----END {kind}-----", text, re.DOTALL)
    assert match, text
    return match.group(0)


def export(name: str, text: str) -> str:
    match = re.search(f"^export {name}=(.+)$", text, re.MULTILINE)
    assert match, text
    return match.group(1)


def test_keygen_prints_a_matching_pair() -> None:
    result = dispatchlet("keygen")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    public = load_public_key(export("DISPATCH_VERIFICATION_KEY", out))
    assert public_key_base64(load_public_key(pem_block("PUBLIC KEY", out))) == (
        public_key_base64(public)
    )
    private = load_private_key(export("DISPATCH_SIGNING_KEY", out))
    assert private_key_base64(load_private_key(pem_block("PRIVATE KEY", out))) == (
        private_key_base64(private)
    )
    assert public_key_base64(private.public_key()) == public_key_base64(public)


def test_keygen_writes_key_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "keys"
    result = dispatchlet("keygen", "--out-dir", str(out_dir))
    assert result.returncode == 0, result.stderr
    signing, verification = out_dir / "signing-key.pem", out_dir / "verification-key.pem"
    assert str(signing) in result.stdout
    assert str(verification) in result.stdout
    assert "PRIVATE KEY" not in result.stdout  # it is in the file, not on the terminal
    private = load_private_key(signing.read_text())
    public = load_public_key(verification.read_text())
    assert public_key_base64(private.public_key()) == public_key_base64(public)
    assert export("DISPATCH_VERIFICATION_KEY", result.stdout) == public_key_base64(public)
    if sys.platform != "win32":
        assert stat.S_IMODE(signing.stat().st_mode) == 0o600
        assert stat.S_IMODE(verification.stat().st_mode) & 0o600 == 0o600

    again = dispatchlet("keygen", "--out-dir", str(out_dir))
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert load_private_key(signing.read_text()).public_key() == private.public_key()

    forced = dispatchlet("keygen", "--out-dir", str(out_dir), "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_private_key(signing.read_text()).public_key() != private.public_key()
    if sys.platform != "win32":
        assert stat.S_IMODE(signing.stat().st_mode) == 0o600


# --- call, against examples/hello.py ------------------------------------------


@pytest.mark.slow
def test_serve_prints_url_functions_and_session_key(hello: Server) -> None:
    banner = "".join(hello.output)
    assert hello.url.startswith("http://127.0.0.1:")
    for line in ("greet(name: str) -> str", "add(a: int, b: int) -> int", "async greet_later"):
        assert line in banner
    assert hello.signing_key is not None
    load_private_key(hello.signing_key)
    assert f"dispatchlet call --endpoint {hello.url} greet World" in banner


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["greet", '"World"'], '"Hello, World!"'),
        (["greet", "World"], '"Hello, World!"'),  # not JSON: taken as a string
        (["--json", "greet", '"World"'], '"Hello, World!"'),
        (["add", '{"a": 1, "b": 2}'], "3"),
        (["add", "[40, 2]"], "42"),
        (["greet_later", '{"name": "Bob", "seconds": 0}'], '"Hello again, Bob!"'),
        (["--string", "greet", "42"], '"Hello, 42!"'),
    ],
)
def test_call_prints_the_output_as_json(hello: Server, args: list[str], output: str) -> None:
    result = call(hello, *args)
    assert (result.returncode, result.stdout.strip()) == (0, output), result.stderr


@pytest.mark.slow
def test_call_shows_a_tail_call(hello: Server) -> None:
    result = call(hello, "welcome", " ada ")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"tail_call": {"function": "greet", "input": "Ada"}}
    assert "handed over to greet" in result.stderr


@pytest.mark.slow
def test_call_reports_a_failed_function(hello: Server) -> None:
    result = call(hello, "divide", '{"a": 1, "b": 0}')
    assert result.returncode == 1
    assert result.stdout == ""
    assert "INVALID_ARGUMENT: ValueError: cannot divide by zero" in result.stderr
    assert "Traceback" not in result.stderr

    traced = call(hello, "--traceback", "divide", "[1, 0]")
    assert traced.returncode == 1
    assert 'raise ValueError("cannot divide by zero")' in traced.stderr


@pytest.mark.slow
def test_call_reports_http_errors(hello: Server) -> None:
    unknown = call(hello, "nope")
    assert unknown.returncode == 2
    assert "HTTP 404 not_found: function 'nope' does not exist" in unknown.stderr

    unsigned = dispatchlet("call", "--endpoint", hello.url, "--unsigned", "greet", "x")
    assert unsigned.returncode == 2
    assert unsigned.stderr.startswith("HTTP 401 unauthenticated: ")

    other_key = private_key_base64(Ed25519PrivateKey.generate())
    forged = call(hello, "greet", "x", key=other_key)
    assert forged.returncode == 2
    assert forged.stderr.startswith("HTTP 403 permission_denied: ")
    # Rejections are logged by the server at WARNING.
    assert "WARNING dispatchlet: rejected request" in hello.wait_for("invalid signature")


@pytest.mark.slow
def test_stalled_connections_neither_starve_serve_nor_stay_open(hello: Server) -> None:
    from dispatchlet.serving.thread_server import CHANNEL_TIMEOUT, LINGER

    host, port = hello.url.removeprefix("http://").rsplit(":", 1)
    stalled = []
    try:
        for _ in range(30):
            sock = socket.create_connection((host, int(port)), timeout=5)
            # Half a request: headers never finished, as a slowloris client sends.
            sock.sendall(b"POST /dispatch.sdk.v1.FunctionService/Run HTTP/1.1\r\nHost: x\r\n")
            stalled.append(sock)
        # Meanwhile a real call is served at once.
        result = call(hello, "greet", "World")
        assert (result.returncode, result.stdout.strip()) == (0, '"Hello, World!"')
        # And every stalled connection is closed by the server, not left open.
        limit = CHANNEL_TIMEOUT + LINGER + 5
        for sock in stalled:
            sock.settimeout(limit)
            assert sock.recv(1024) == b""
    finally:
        for sock in stalled:
            sock.close()


def test_call_without_a_key_says_how_to_get_one() -> None:
    result = dispatchlet("call", "greet", "World")
    assert result.returncode == 2
    assert "DISPATCH_SIGNING_KEY" in result.stderr
    assert "dispatchlet keygen" in result.stderr
    assert "dispatchlet serve" in result.stderr


def test_call_reports_a_refused_connection() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = dispatchlet("call", "--endpoint", f"http://127.0.0.1:{port}", "--unsigned", "f")
    assert result.returncode == 2
    assert "cannot connect to" in result.stderr


def test_call_rejects_a_bad_key_and_url() -> None:
    bad_key = dispatchlet("call", "--key", "not a key", "f")
    assert bad_key.returncode == 2
    assert "invalid signing key in --key" in bad_key.stderr
    bad_url = dispatchlet("call", "--endpoint", "ftp://example.com", "--unsigned", "f")
    assert bad_url.returncode == 2
    assert "invalid endpoint URL" in bad_url.stderr


# --- serve with configured keys, and stopping ----------------------------------


@pytest.mark.slow
@POSIX_SIGNALS
def test_serve_with_a_verification_key_from_the_environment(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    public = public_key_base64(key.public_key())
    env = cli_env(DISPATCH_VERIFICATION_KEY=public)
    server = Server(f"{HELLO}:endpoint", env=env, cwd=tmp_path)
    try:
        banner = server.start()
        assert server.signing_key is None  # no session key: the configured one is used
        assert public in banner
        signed = call(server, "add", "[1, 2]", key=private_key_base64(key))
        assert (signed.returncode, signed.stdout.strip()) == (0, "3"), signed.stderr
        other = private_key_base64(Ed25519PrivateKey.generate())
        assert call(server, "add", "[1, 2]", key=other).returncode == 2
        assert server.stop(signal.SIGINT) == 130  # as a shell reports Ctrl+C
        assert "dispatchlet serve: stopped" in server.wait_for("stopped", timeout=5)
    finally:
        server.kill()


@pytest.mark.slow
@POSIX_SIGNALS
def test_serve_an_insecure_module_and_stop_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "open_app.py").write_text(
        "from dispatchlet import Endpoint\n"
        "endpoint = Endpoint(insecure=True)\n"
        "@endpoint.function\n"
        "def ping() -> str:\n"
        "    return 'pong'\n"
    )
    server = Server("open_app:endpoint", env=cli_env(), cwd=tmp_path)
    try:
        banner = server.start()
        assert "NOT checked" in banner
        assert f"dispatchlet call --endpoint {server.url} --unsigned ping" in banner
        result = dispatchlet("call", "--endpoint", server.url, "--unsigned", "ping")
        assert (result.returncode, result.stdout.strip()) == (0, '"pong"'), result.stderr
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()


# --- APP loading ----------------------------------------------------------------

APP = """\
from dispatchlet import Endpoint
endpoint = Endpoint()
alias = endpoint
@endpoint.function
def ping() -> str:
    return "pong"
"""

TWO = """\
from dispatchlet import Endpoint
first = Endpoint()
second = Endpoint()
"""


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory of apps; sys.path and sys.modules are restored afterwards."""
    monkeypatch.delenv("DISPATCH_VERIFICATION_KEY", raising=False)
    monkeypatch.delenv("DISPATCH_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    directory = tmp_path / "apps"
    directory.mkdir()
    (directory / "cli_app_one.py").write_text(APP)
    (directory / "cli_app_two.py").write_text(TWO)
    (directory / "cli_app_none.py").write_text("x = 1\n")
    (directory / "cli_app_helper.py").write_text("GREETING = 'hi'\n")
    (directory / "cli_app_neighbour.py").write_text(APP + "from cli_app_helper import GREETING\n")
    (directory / "cli_app_broken.py").write_text("1 / 0\n")
    yield directory
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_split_app() -> None:
    assert split_app("pkg.mod") == ("pkg.mod", None)
    assert split_app("pkg.mod:app.endpoint") == ("pkg.mod", "app.endpoint")
    assert split_app("dir/app.py:endpoint") == ("dir/app.py", "endpoint")
    assert split_app(r"C:\apps\app.py") == (r"C:\apps\app.py", None)
    with pytest.raises(AppLoadError, match="missing attribute"):
        split_app("app.py:")


def test_load_a_file_from_any_directory(apps: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(apps.parent)
    endpoint = load_endpoint("apps/cli_app_neighbour.py")  # imports its neighbour
    assert isinstance(endpoint, Endpoint)
    assert list(endpoint.functions) == ["ping"]
    assert load_endpoint(str(apps / "cli_app_neighbour.py")) is endpoint


def test_load_file_attr_and_module_attr(apps: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    second = load_endpoint(f"{apps / 'cli_app_two.py'}:second")
    first = load_endpoint(f"{apps / 'cli_app_two.py'}:first")
    assert isinstance(second, Endpoint)
    assert first is not second
    monkeypatch.chdir(apps)  # module names are looked up in the current directory
    assert load_endpoint("cli_app_one:alias") is load_endpoint("cli_app_one")
    assert load_endpoint("cli_app_two:second") is second


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("cli_app_none.py", "no Endpoint found in"),
        ("cli_app_two.py", r"several Endpoints in \S+ \(first, second\): choose one with"),
        ("cli_app_one.py:missing", "has no attribute 'missing'"),
        ("cli_app_one.py:ping", "is of type Function, not a dispatchlet Endpoint"),
        ("cli_app_absent.py", "no such file"),
        ("cli_app_absent_module", "no module named 'cli_app_absent_module'"),
        ("not-a-module", "neither a module name nor a .py file"),
        ("cli_app_broken.py", "importing cli_app_broken.py failed: ZeroDivisionError"),
    ],
)
def test_load_errors(apps: Path, monkeypatch: pytest.MonkeyPatch, app: str, message: str) -> None:
    monkeypatch.chdir(apps)
    with pytest.raises(AppLoadError, match=message):
        load_endpoint(app)


def test_an_error_in_the_app_is_the_cause(apps: Path) -> None:
    with pytest.raises(AppLoadError) as info:
        load_endpoint(str(apps / "cli_app_broken.py"))
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert "cli_app_broken" not in sys.modules


def test_a_forgotten_app_loads_its_current_code_and_its_neighbours(
    apps: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatchlet.serving.app_loading import app_files, forget_app

    package = apps / "cli_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("GREETING = 'hi'\n")
    (package / "app.py").write_text(APP + "from .helper import GREETING\n")
    monkeypatch.chdir(apps)
    first = load_endpoint("cli_pkg.app")
    assert app_files("cli_pkg.app") == {
        (package / name).resolve() for name in ("__init__.py", "helper.py", "app.py")
    }
    # The same module until forgotten; then the current code, the neighbour's too.
    (package / "helper.py").write_text("GREETING = 'hello'\n")
    assert load_endpoint("cli_pkg.app") is first
    forget_app("cli_pkg.app")
    assert "cli_pkg.helper" not in sys.modules
    assert "dispatchlet.core.endpoint" in sys.modules  # dispatchlet itself stays
    second = load_endpoint("cli_pkg.app")
    assert second is not first
    assert sys.modules["cli_pkg.app"].GREETING == "hello"


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("cli_app_none.py", "no Endpoint found in cli_app_none.py"),
        ("cli_app_two.py", "several Endpoints in cli_app_two.py (first, second)"),
        ("cli_app_broken.py", "importing cli_app_broken.py failed: ZeroDivisionError"),
    ],
)
def test_serve_exits_2_on_a_bad_app(apps: Path, app: str, message: str) -> None:
    result = dispatchlet("serve", app, "--port", "0", cwd=apps)
    assert result.returncode == 2
    assert f"dispatchlet serve: error: {message}" in result.stderr
    if app == "cli_app_broken.py":
        # The app's own traceback, without the import machinery's frames.
        assert 'File "' + str((apps / "cli_app_broken.py").resolve()) in result.stderr
        assert "importlib" not in result.stderr


@pytest.mark.slow
def test_call_app_serves_signs_and_calls_in_one_command(tmp_path: Path) -> None:
    result = dispatchlet("call", "--app", str(HELLO), "greet", "World", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '"Hello, World!"'
    failed = dispatchlet("call", "--app", str(HELLO), "divide", "[1, 0]", cwd=tmp_path)
    assert failed.returncode == 1
    assert "INVALID_ARGUMENT: ValueError: cannot divide by zero" in failed.stderr
    missing = dispatchlet("call", "--app", str(HELLO), "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert "HTTP 404 not_found" in missing.stderr


def test_call_app_refuses_an_endpoint_url(tmp_path: Path) -> None:
    result = dispatchlet(
        "call", "--app", str(HELLO), "--endpoint", "http://127.0.0.1:1", "greet", "x", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--endpoint" in result.stderr


# --- rough edges a new user meets -------------------------------------------------


SLEEPY = """\
import time
from dispatchlet import Endpoint

endpoint = Endpoint()


@endpoint.function
def nap() -> str:
    time.sleep(60)
    return "rested"
"""


@pytest.mark.slow
def test_call_app_timeout_returns_at_the_timeout_with_one_message(tmp_path: Path) -> None:
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    started = time.monotonic()
    result = dispatchlet("call", "--app", "sleepy.py", "--timeout", "1", "nap", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dispatchlet call: error: no answer from {_url_in(result.stderr)} within 1 s "
        "(see --timeout)"
    ]
    # The function sleeps a minute: the command did not wait for it (a loaded machine may
    # take seconds to start the interpreter and the server).
    assert elapsed < 30, elapsed


def _url_in(text: str) -> str:
    match = re.search(r"no answer from (\S+) within", text)
    assert match, text
    return match.group(1)


@pytest.mark.parametrize("text", ['{"a": 1', "[1, 2", '"unterminated', ' {"a": }'])
def test_input_that_looks_like_json_must_parse(text: str) -> None:
    result = dispatchlet("call", "--unsigned", "--endpoint", "http://127.0.0.1:1", "f", text)
    assert result.returncode == 2
    assert "INPUT looks like JSON but does not parse" in result.stderr
    assert "--string" in result.stderr


def test_an_invalid_verification_key_is_named_without_a_traceback(tmp_path: Path) -> None:
    env = cli_env(DISPATCH_VERIFICATION_KEY="not-a-key")
    result = dispatchlet("serve", str(HELLO), "--port", "0", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid DISPATCH_VERIFICATION_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_syntax_error_in_the_app_shows_the_apps_line(tmp_path: Path) -> None:
    (tmp_path / "typo.py").write_text("from dispatchlet import Endpoint\nendpoint = Endpoint(\n")
    for command in (["serve", "typo.py", "--port", "0"], ["call", "--app", "typo.py", "f"]):
        result = dispatchlet(*command, cwd=tmp_path)
        assert result.returncode == 2
        assert f'File "{(tmp_path / "typo.py").resolve()}", line 2' in result.stderr
        assert "SyntaxError" in result.stderr
        assert "importlib" not in result.stderr
        assert "app_loading" not in result.stderr


def test_an_app_that_exits_as_it_loads_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "quits.py").write_text("import sys\nsys.exit('no config here')\n")
    result = dispatchlet("call", "--app", "quits.py", "f", cwd=tmp_path)
    assert result.returncode == 2
    assert "quits.py" in result.stderr
    assert "SystemExit: no config here" in result.stderr


def test_python_dash_m_dispatchlet_runs_the_cli() -> None:
    from importlib.metadata import version

    import dispatchlet as package

    result = subprocess.run(
        [sys.executable, "-m", "dispatchlet", "--version"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dispatchlet {package.__version__}"
    assert package.__version__ == version("dispatchlet")


# --- the scheduler's start: keys, ports, database, logs ----------------------------


def start_scheduler(
    folder: Path, *args: str, env: dict[str, str]
) -> tuple[subprocess.Popen[str], Path, Path, str]:
    """``dispatchlet scheduler`` with stdout and stderr in files; its URL once it listens."""
    stdout, stderr = folder / "stdout.txt", folder / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatchlet.cli", "scheduler", "--port", "0", *args],
            stdout=out,
            stderr=err,
            text=True,
            env=env,
            cwd=folder,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not (match := re.search(r"listening at (http://\S+)", stdout.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError(f"no listening line:\n{stdout.read_text()}{stderr.read_text()}")
        time.sleep(0.05)
    return process, stdout, stderr, match.group(1)


def stop_scheduler(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("insecure", [False, True])
def test_the_scheduler_warns_at_start_without_an_api_key(tmp_path: Path, insecure: bool) -> None:
    key = private_key_base64(Ed25519PrivateKey.generate())
    options = ["--db", str(tmp_path / "s.db"), *(["--insecure"] if insecure else [])]
    process, _, stderr, _ = start_scheduler(
        tmp_path, *options, env=cli_env(DISPATCH_SIGNING_KEY=key)
    )
    assert stop_scheduler(process) == 0
    warnings = [line for line in stderr.read_text().splitlines() if "DISPATCH_API_KEY" in line]
    if insecure:
        assert warnings == []
    else:
        assert len(warnings) == 1, stderr.read_text()
        assert "WARNING" in warnings[0]
        assert "every request to the API will be refused" in warnings[0]


@pytest.mark.slow
def test_the_scheduler_logs_json_lines_with_each_attempts_fields(tmp_path: Path) -> None:
    from dispatchlet import Client
    from dispatchlet.proto.dispatch.sdk.v1 import call_pb2

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed once this block ends
    env = cli_env(
        DISPATCH_SIGNING_KEY=private_key_base64(Ed25519PrivateKey.generate()),
        DISPATCH_API_KEY="json-test",
    )
    options = ["--db", str(tmp_path / "s.db"), "--max-attempts", "1", "--log-format", "json"]
    process, _, stderr, url = start_scheduler(tmp_path, *options, env=env)
    try:
        with Client(url, "json-test") as client:
            (dispatch_id,) = client.dispatch([call_pb2.Call(function="f", endpoint=nowhere)])
            assert client.wait(dispatch_id, timeout=RUN_TIMEOUT).done
    finally:
        assert stop_scheduler(process) == 0
    # Every line of stderr is one JSON object.
    records = [json.loads(line) for line in stderr.read_text().splitlines()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    (attempt,) = [r for r in records if r.get("dispatch_id") == dispatch_id]
    assert attempt["level"] == "info"
    assert attempt["logger"] == "dispatchlet.scheduler"
    assert (attempt["function"], attempt["endpoint"], attempt["attempt"]) == ("f", nowhere, 1)
    assert attempt["status"] == "TCP_ERROR"
    assert dispatch_id in attempt["message"]
    assert records[-1]["message"] == "dispatchlet scheduler: stopped"


def test_json_log_lines_carry_the_records_extra_fields() -> None:
    import logging

    from dispatchlet.serving.logging_setup import JsonFormatter

    record = logging.LogRecord(
        "dispatchlet.x", logging.WARNING, __file__, 1, "%s failed", ("a",), None
    )
    record.__dict__.update({"dispatch_id": "d1", "duration_ms": 1.5, "odd": Path("/p")})
    entry = json.loads(JsonFormatter().format(record))
    assert entry.pop("time").endswith("Z")
    assert entry == {
        "level": "warning",
        "logger": "dispatchlet.x",
        "message": "a failed",
        "dispatch_id": "d1",
        "duration_ms": 1.5,
        "odd": "/p",
    }


def test_the_scheduler_refuses_reuse_port_on_sqlite(tmp_path: Path) -> None:
    result = dispatchlet(
        "scheduler", "--insecure", "--reuse-port", "--port", "0", "--db", "s.db", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--reuse-port" in result.stderr
    assert "DISPATCHLET_DATABASE_URL" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no database of its own was made


def test_the_scheduler_refuses_a_database_in_a_missing_folder(tmp_path: Path) -> None:
    db = tmp_path / "typo" / "calls.db"
    result = dispatchlet("scheduler", "--insecure", "--port", "0", "--db", str(db))
    assert result.returncode == 2
    assert f"the folder {db.parent} does not exist" in result.stderr
    assert not db.parent.exists()


def test_the_help_tells_the_exit_status_after_a_signal() -> None:
    for command in ("serve", "scheduler", "dev"):
        shown = dispatchlet(command, "--help").stdout
        assert "130  stopped by Ctrl+C (SIGINT)" in shown, command
        assert "0    stopped by SIGTERM" in shown, command
        assert "--log-level {debug,info,warning,error}" in shown, command
        assert "--log-format {text,json}" in shown, command
