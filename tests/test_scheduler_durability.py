"""No acknowledged call is lost: the scheduler is killed with SIGKILL at random moments
(more than 20 times) while 1,000 calls run, and restarted on the same database; every
call it acknowledged ends OK, and the endpoint saw each one at least once."""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, ClientError, Status
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from test_scheduler_processes import Process, environment

pytestmark = pytest.mark.slow

API_KEY = "durability"
CALLS = 1000
BATCH = 100
KILLS = 24

APP = """
import os
from dispatchlet import Endpoint, RunContext

endpoint = Endpoint()
LOG = os.environ["APP_LOG"]


@endpoint.function
def record(n: int, context: RunContext) -> int:
    # One line per attempt, written before the answer: what the endpoint saw.
    with open(LOG, "a") as log:
        log.write(context.dispatch_id + "\\n")
    return n
"""


def test_acknowledged_calls_survive_repeated_sigkill(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    log = tmp_path / "attempts.log"
    key = Ed25519PrivateKey.generate()
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0", "--threads", "8"],
        environment(
            DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key()), APP_LOG=str(log)
        ),
        tmp_path,
    )
    endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
    scheduler_env = environment(
        DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY
    )
    database = tmp_path / "calls.db"
    rng = random.Random(1000)
    port = 0
    scheduler: Process | None = None

    def start() -> str:
        nonlocal scheduler, port
        command = [
            sys.executable,
            "-m",
            "dispatchlet",
            "scheduler",
            "--db",
            str(database),
            "--port",
            str(port),
            "--backoff",
            "0.05",
            "--backoff-cap",
            "0.5",
            "--attempt-timeout",
            "1",
        ]
        scheduler = Process(command, scheduler_env, tmp_path)
        url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        port = int(url.rsplit(":", 1)[1])  # the same port across restarts
        return url

    url = start()
    acknowledged: list[str] = []
    kills = 0
    next_kill = time.monotonic() + rng.uniform(0.1, 0.5)
    batches = [
        [call_pb2.Call(function="record", endpoint=endpoint_url) for _ in range(BATCH)]
        for _ in range(CALLS // BATCH)
    ]
    for index, batch in enumerate(batches):
        for n, call in enumerate(batch):
            call.input.CopyFrom(values.to_any(index * BATCH + n))
    try:
        pending = list(batches)
        deadline = time.monotonic() + 240
        while (pending or kills < KILLS) and time.monotonic() < deadline:
            if time.monotonic() >= next_kill and kills < KILLS:
                assert scheduler is not None
                scheduler.process.send_signal(signal.SIGKILL)
                scheduler.process.wait(timeout=10)
                kills += 1
                url = start()
                next_kill = time.monotonic() + rng.uniform(0.1, 0.6)
            if pending:
                try:
                    with Client(url, API_KEY, timeout=5) as client:
                        acknowledged += client.dispatch(pending[0])
                    pending.pop(0)
                except ClientError:
                    pass  # not acknowledged (the scheduler died meanwhile): sent again
            else:
                time.sleep(0.05)
        assert kills >= KILLS
        assert not pending
        assert len(acknowledged) == CALLS

        # Every acknowledged call ends OK.
        finals: dict[str, object] = {}
        with Client(url, API_KEY) as client:
            while time.monotonic() < deadline and len(finals) < len(acknowledged):
                for dispatch_id in acknowledged:
                    if dispatch_id not in finals:
                        info = client.get(dispatch_id)
                        if info.done:
                            finals[dispatch_id] = info
                if len(finals) < len(acknowledged):
                    time.sleep(0.5)
        assert len(finals) == CALLS, f"{CALLS - len(finals)} calls never ended"
        statuses = {info.status for info in finals.values()}  # type: ignore[attr-defined]
        assert statuses == {Status.OK}
        outputs = sorted(info.output for info in finals.values())  # type: ignore[attr-defined]
        assert outputs == list(range(CALLS))
        # And the endpoint saw each at least once (some twice: at least once, not exactly).
        seen = log.read_text().split()
        assert set(acknowledged) <= set(seen)
        print(f"{kills} kills, {len(seen)} attempts seen for {CALLS} calls")
    finally:
        if scheduler is not None:
            scheduler.stop()
        endpoint.stop()
