"""`dispatchlet dev`, `dispatchlet dispatch` and `dispatchlet calls` as a user runs them:
real processes, the example app, ports picked free."""

from __future__ import annotations

import json
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_scheduler_processes import Process, environment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello.py")


def dispatchlet(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatchlet", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dev_with_a_function_runs_the_whole_loop_once(tmp_path: Path) -> None:
    result = dispatchlet("dev", HELLO, "greet_flaky", "World", env=environment(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output, summary = result.stdout.splitlines()
    assert output == '"Hello, World!"'
    # It failed once with a TimeoutError and was retried.
    assert summary.startswith("(OK after 2 attempt(s), dispatch id ")
    # The failed attempt was shown as it happened.
    shown = "attempt 1 failed: TIMEOUT TimeoutError: the greeting service is slow"
    assert shown in result.stderr
    assert list(tmp_path.iterdir()) == []  # its database was a temporary one


WSGI_AT_IMPORT = """
from dispatchlet import Endpoint
from dispatchlet.adapters.wsgi import wsgi_app

endpoint = Endpoint()


@endpoint.function
def greet(name: str) -> str:
    return f"Hello, {name}!"


app = wsgi_app(endpoint)
"""


def test_dev_does_not_warn_of_a_missing_key_it_provides(tmp_path: Path) -> None:
    # The README's app.py builds its WSGI app at import, before `dev` gives it its key.
    (tmp_path / "app.py").write_text(WSGI_AT_IMPORT)
    env = environment()
    env.pop("DISPATCH_VERIFICATION_KEY", None)
    result = dispatchlet("dev", "app.py", "greet", "World", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == '"Hello, World!"'
    assert "DISPATCH_VERIFICATION_KEY" not in result.stderr


def test_dev_runs_the_example_workflow_to_its_end(tmp_path: Path) -> None:
    example = str(ROOT / "examples" / "onboarding.py")
    result = dispatchlet(
        "dev", example, "onboard", '"ada@example.com"', env=environment(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    *output, summary = result.stdout.splitlines()
    done = json.loads("\n".join(output))
    assert done["user"] == "user-ada"
    assert done["done"] == [
        "welcome sent to ada@example.com",
        "tips sent to ada@example.com",
        f"sales told of {done['user']}",
    ]
    assert summary.startswith("(OK after 1 attempt(s), dispatch id ")


def test_dev_with_a_failing_function_exits_1_with_its_error(tmp_path: Path) -> None:
    result = dispatchlet("dev", HELLO, "divide", "[1, 0]", env=environment(), cwd=tmp_path)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT after 1 attempt(s): ValueError: cannot divide by zero" in result.stderr


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[Process, dict[str, str]]]:
    process = Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "dev",
            HELLO,
            "--port",
            "0",
            "--scheduler-port",
            "0",
            "--db",
            str(tmp_path / "dev.db"),
        ],
        environment(),
        tmp_path,
    )
    exports: dict[str, str] = {}
    try:
        for _ in range(3):
            match = process.wait_for(r"export (DISPATCH_\w+)=(\S+)")
            exports[match.group(1)] = match.group(2).strip("'")
        process.wait_for("Press Ctrl\\+C to stop.")
        yield process, environment(**exports)
    finally:
        process.stop()


def test_dev_prints_the_exports_dispatch_and_calls_use(
    dev: tuple[Process, dict[str, str]], tmp_path: Path
) -> None:
    process, env = dev
    waited = dispatchlet("dispatch", "greet", "World", "--wait", env=env, cwd=tmp_path)
    assert (waited.returncode, waited.stdout.strip()) == (0, '"Hello, World!"'), waited.stderr

    started = dispatchlet("dispatch", "add", '{"a": 1, "b": 2}', env=env, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    dispatch_id = started.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", dispatch_id)
    assert dispatchlet("calls", "wait", dispatch_id, env=env, cwd=tmp_path).stdout.strip() == "3"
    shown = json.loads(
        dispatchlet("calls", "show", dispatch_id, "--json", env=env, cwd=tmp_path).stdout
    )
    assert (shown["status"], shown["output"], shown["attempts"], shown["done"]) == (
        "OK",
        3,
        1,
        True,
    )
    listed = dispatchlet("calls", "list", "--function", "add", env=env, cwd=tmp_path).stdout
    assert dispatch_id in listed
    assert "OK" in listed

    failed = dispatchlet("dispatch", "divide", "[1, 0]", "--wait", env=env, cwd=tmp_path)
    assert failed.returncode == 1
    assert "INVALID_ARGUMENT after 1 attempt(s): ValueError" in failed.stderr

    nowhere = {**env, "DISPATCH_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}
    pending = dispatchlet("dispatch", "greet", "x", env=nowhere, cwd=tmp_path).stdout.strip()
    cancelled = dispatchlet("calls", "cancel", pending, env=env, cwd=tmp_path)
    assert cancelled.stdout.strip() == "cancelled 1 call(s)"

    # Ctrl+C stops both, cleanly (exit status 130, as a shell reports an interrupt).
    process.process.send_signal(signal.SIGINT)
    assert process.process.wait(timeout=20) == 130
    scheduler = env["DISPATCH_API_URL"].rsplit(":", 1)[1]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(scheduler)), timeout=2).close()


def test_dispatch_without_a_scheduler_says_how_to_start_one(tmp_path: Path) -> None:
    env = environment(DISPATCH_API_URL=f"http://127.0.0.1:{closed_port()}")
    result = dispatchlet("dispatch", "greet", "World", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot reach the scheduler" in result.stderr
    assert "dispatchlet dev" in result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


APP = """
from dispatchlet import Endpoint

endpoint = Endpoint()


@endpoint.function
def ping(word: str) -> str:
    return f"ping {word}"
"""

PONG = """

@endpoint.function
def pong(word: str) -> str:
    return f"pong {word}"
"""


def start_dev(folder: Path, *args: str, env: dict[str, str] | None = None) -> Process:
    return Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "dev",
            "app.py",
            "--port",
            "0",
            "--scheduler-port",
            "0",
            "--db",
            str(folder / "dev.db"),
            *args,
        ],
        env or environment(),
        folder,
    )


def read_exports(process: Process) -> dict[str, str]:
    exports: dict[str, str] = {}
    for _ in range(3):
        match = process.wait_for(r"export (DISPATCH_\w+)=(\S+)")
        exports[match.group(1)] = match.group(2).strip("'")
    return exports


def test_dev_reloads_the_app_when_its_file_changes(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    process = start_dev(tmp_path)
    try:
        env = environment(**read_exports(process))
        # The hint calls one of the app's own functions.
        assert process.wait_for(r"    dispatchlet dispatch (.*)").group(1) == "ping World --wait"
        process.wait_for(r"Press Ctrl\+C to stop")

        app.write_text(APP + PONG)
        process.wait_for(r"dispatchlet dev: reloaded app\.py \(functions: ping, pong\)")
        added = dispatchlet("dispatch", "pong", "x", "--wait", env=env, cwd=tmp_path)
        assert (added.returncode, added.stdout.strip()) == (0, '"pong x"'), added.stderr

        # A reload that fails shows the app's error and keeps serving the last good one.
        app.write_text(APP + PONG + "\nraise RuntimeError('half-written')\n")
        process.wait_for(r"dispatchlet dev: reloading app\.py failed: .*RuntimeError: half-written")
        assert any('File "' + str(app.resolve()) in line for line in process.output)
        kept = dispatchlet("dispatch", "pong", "y", "--wait", env=env, cwd=tmp_path)
        assert (kept.returncode, kept.stdout.strip()) == (0, '"pong y"'), kept.stderr

        # Fixed, it loads again.
        app.write_text(APP)
        process.wait_for(r"dispatchlet dev: reloaded app\.py \(functions: ping\)")
        gone = dispatchlet("dispatch", "pong", "z", "--wait", env=env, cwd=tmp_path)
        assert gone.returncode == 1
        assert "NOT_FOUND" in gone.stderr
    finally:
        process.stop()


def test_dev_keeps_its_keys_across_restarts(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    first = start_dev(tmp_path)
    try:
        exports = read_exports(first)
        first.wait_for(r"Press Ctrl\+C to stop")
    finally:
        assert first.stop() == 0  # SIGTERM: a normal end
    state = tmp_path / ".dispatchlet"
    secrets = {path.name: path.read_text() for path in state.iterdir()}
    assert set(secrets) == {"api-key", "signing-key", ".gitignore"}
    assert secrets[".gitignore"].splitlines()[-1] == "*"  # never committed by accident
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("api-key", "signing-key"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name

    second = start_dev(tmp_path)
    try:
        again = read_exports(second)
        second.wait_for(r"Press Ctrl\+C to stop")
        # The other terminal's exports still work: the same API key.
        assert again["DISPATCH_API_KEY"] == exports["DISPATCH_API_KEY"]
        env = environment(**again)
        result = dispatchlet("dispatch", "ping", "again", "--wait", env=env, cwd=tmp_path)
        assert (result.returncode, result.stdout.strip()) == (0, '"ping again"'), result.stderr
    finally:
        second.stop()
    # The same signing key: calls signed before a restart verify after it.
    assert {path.name: path.read_text() for path in state.iterdir()} == secrets


def test_dev_uses_the_api_key_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    process = start_dev(tmp_path, env=environment(DISPATCH_API_KEY="mine,older"))
    try:
        exports = read_exports(process)
        assert exports["DISPATCH_API_KEY"] == "mine"
        process.wait_for(r"Press Ctrl\+C to stop")
        for key in ("mine", "older"):
            env = environment(**{**exports, "DISPATCH_API_KEY": key})
            result = dispatchlet("dispatch", "ping", key, "--wait", env=env, cwd=tmp_path)
            assert (result.returncode, result.stdout.strip()) == (0, f'"ping {key}"')
    finally:
        process.stop()
    assert not (tmp_path / ".dispatchlet" / "api-key").exists()


def test_dev_refuses_an_unknown_function_naming_close_ones(tmp_path: Path) -> None:
    result = dispatchlet("dev", HELLO, "gret", "World", env=environment(), cwd=tmp_path)
    assert result.returncode == 2
    assert "has no function 'gret': did you mean greet" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was started, nothing kept


def test_dev_refuses_a_database_in_a_missing_folder(tmp_path: Path) -> None:
    db = tmp_path / "no" / "such" / "dev.db"
    result = dispatchlet("dev", HELLO, "--db", str(db), env=environment(), cwd=tmp_path)
    assert result.returncode == 2
    assert f"the folder {db.parent} does not exist" in result.stderr
    assert not (tmp_path / "no").exists()
