"""deploy/scheduler: the systemd unit passes systemd's own check, and three processes
started as its ExecStart says share one address and one PostgreSQL database."""

from __future__ import annotations

import contextlib
import http.server
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, ClientError, Status
from dispatchlet.core.keys import private_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from postgres_server import free_port, fresh_database
from test_scheduler_processes import Coroutines, Process, environment, http_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "deploy" / "scheduler"
UNIT = RECIPE / "dispatchlet-scheduler@.service"
INSTALLED = "/opt/dispatchlet/bin/dispatchlet"


def unit_setting(name: str) -> str:
    (value,) = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.MULTILINE)
    return value.strip()


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is needed to check the unit: apt-get install systemd")
    # As installed by the guide, with this environment's dispatchlet and a settings file.
    env_file = tmp_path / "scheduler.env"
    env_file.write_text((RECIPE / "scheduler.env.example").read_text())
    text = UNIT.read_text().replace(INSTALLED, str(Path(sys.executable).parent / "dispatchlet"))
    text = text.replace("/etc/dispatchlet/scheduler.env", str(env_file))
    (tmp_path / UNIT.name).write_text(text)
    checked = subprocess.run(
        [analyze, "verify", f"./{UNIT.name.replace('@', '@1')}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "dispatchlet" not in checked.stderr, checked.stderr


def test_the_example_settings_name_what_the_scheduler_reads() -> None:
    names = set(re.findall(r"^([A-Z_]+)=", (RECIPE / "scheduler.env.example").read_text(), re.M))
    assert names == {"DISPATCHLET_DATABASE_URL", "DISPATCH_SIGNING_KEY", "DISPATCH_API_KEY"}
    assert unit_setting("EnvironmentFile") == "/etc/dispatchlet/scheduler.env"
    assert unit_setting("KillSignal") == "SIGTERM"


def test_the_unit_listens_on_loopback_with_room_for_its_connections() -> None:
    command = shlex.split(unit_setting("ExecStart"))
    assert command[command.index("--host") + 1] == "127.0.0.1"
    # Above the default connection cap plus the reserve the scheduler keeps for the rest.
    assert int(unit_setting("LimitNOFILE")) >= 65536


class Quick(http.server.BaseHTTPRequestHandler):
    """Answers at once, but holds the first calls until more run at once than one
    process starts to one destination (its limit starts at 4): so more than one process
    has run calls, whichever wins the claims, however fast the machine is."""

    gathered = threading.Condition()
    in_flight = 0
    most = 0
    gather = 5

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with Quick.gathered:
            Quick.in_flight += 1
            Quick.most = max(Quick.most, Quick.in_flight)
            Quick.gathered.notify_all()
            Quick.gathered.wait_for(lambda: Quick.most >= Quick.gather, timeout=60)
            Quick.in_flight -= 1
        body = Coroutines.exit("ok").SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_three_processes_as_the_unit_runs_them_share_one_address(
    postgres_server: str, tmp_path: Path
) -> None:
    port = free_port()
    command = shlex.split(unit_setting("ExecStart"))
    assert command[0] == INSTALLED
    command = [sys.executable, "-m", "dispatchlet", *command[1:]]
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    key = Ed25519PrivateKey.generate()
    env = environment(
        DISPATCHLET_DATABASE_URL=fresh_database(postgres_server),
        DISPATCH_SIGNING_KEY=private_key_base64(key),
        DISPATCH_API_KEY="k",
    )
    address = f"http://127.0.0.1:{port}"
    processes: list[Process] = []
    try:
        for _ in range(3):
            process = Process(command, env, tmp_path)
            process.wait_for(rf"listening at http://127\.0\.0\.1:{port}")
            processes.append(process)
        with http_server(Quick) as endpoint:
            first = dispatch_and_wait(address, endpoint, 300)
            # One process gone: the address still answers, the others carry on.
            processes[0].process.send_signal(signal.SIGKILL)
            processes[0].process.wait(timeout=10)
            second = dispatch_and_wait(address, endpoint, 100)
    finally:
        for process in processes:
            process.stop()
    assert first == second == {Status.OK}
    # The processes shared the calls through the database: the first ones were held until
    # more ran at once than one process starts (which process wins each claim is a race,
    # so this asks for more than one, not for all three).
    assert Quick.most >= Quick.gather
    attempts = [everything_printed(process).count("attempt 1 of f") for process in processes]
    assert sum(attempts) >= 400, attempts
    assert sum(1 for count in attempts if count) >= 2, attempts


def everything_printed(process: Process) -> str:
    """All that the (stopped) process printed."""
    with contextlib.suppress(AssertionError):
        process.wait_for(r"(?!)", timeout=5)  # matches nothing: reads to the end
    return "".join(process.output)


def dispatch_and_wait(address: str, endpoint: str, count: int) -> set[Status | None]:
    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(address, "k") as client:
                ids = client.dispatch([call_pb2.Call(function="f", endpoint=endpoint)] * count)
                return {client.wait(i, timeout=30).status for i in ids}
        except (ClientError, OSError):
            # A connection the kernel gave to the killed process: try again.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
