"""The scheduler under a connection attack while it works: 2,000 idle connections and 200
that trickle their request heads, held against a real scheduler process (SQLite) while
10,000 calls run to OK on a real HTTP endpoint, and Get requests keep being answered.
Then every connection slot is filled with clients that have started a request: a new
one is answered 503 at once, not left hanging, and is served again once they leave.

The API's latency under the attack is printed (its 99th percentile), not asserted: a
test does not time its own machine. SOAK_CALLS changes the number of calls."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, Status
from dispatchlet.core.keys import private_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from dispatchlet.scheduler.connections import FD_RESERVE
from slow_clients import Trickle
from test_scheduler_connections import closed_by_server, read_answer
from test_scheduler_processes import Process, environment

pytestmark = pytest.mark.slow

CALLS = int(os.environ.get("SOAK_CALLS", "10000"))
IDLE = 2000
TRICKLING = 200
CAP = 1000  # the scheduler's default --max-connections
API_KEY = "soak-key"
WAIT = 60.0


ENDPOINT = """
import asyncio

from aiohttp import web
from dispatchlet.core import values
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2

answer = function_pb2.RunResponse(status=1)  # OK
answer.exit.result.output.CopyFrom(values.to_any("ok"))
body = answer.SerializeToString()


async def run(request):
    await request.read()
    return web.Response(body=body, content_type="application/proto")


async def main():
    app = web.Application()
    app.router.add_post("/{tail:.*}", run)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"endpoint at http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
"""


@contextlib.contextmanager
def endpoint(folder: Path) -> Iterator[str]:
    """An HTTP endpoint that answers every Run with the output "ok", in a process of its
    own (so that it takes no time from the test's own clients)."""
    process = Process([sys.executable, "-c", ENDPOINT], environment(), folder)
    try:
        yield process.wait_for(r"endpoint at (http://\S+)").group(1)
    finally:
        process.stop()


class Prober:
    """Get requests on new connections, one after another, during the soak."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: list[str] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            if not self.ids:
                continue
            dispatch_id = random.choice(self.ids)
            start = time.perf_counter()
            try:
                with Client(self.url, API_KEY, timeout=WAIT) as client:
                    info = client.get(dispatch_id)
                assert info.dispatch_id == dispatch_id
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self.latencies.append(time.perf_counter() - start)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=WAIT)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def raise_open_files(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = needed if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_the_api_answers_and_every_call_runs_under_a_connection_attack(
    tmp_path: Path,
) -> None:
    needed = IDLE + TRICKLING + CAP + 1000  # the attack, the busy clients, the rest
    limit = raise_open_files(needed)
    scale = min(1.0, limit / needed)
    idle, trickling, cap = (int(n * scale) for n in (IDLE, TRICKLING, CAP))
    if scale < 1:
        # This machine's hard limit on open files is too low: scaled down, and said so.
        print(f"open files limit {limit}: {idle} idle, {trickling} trickling, cap {cap}")
    key = Ed25519PrivateKey.generate()
    env = environment(DISPATCH_API_KEY=API_KEY, DISPATCH_SIGNING_KEY=private_key_base64(key))
    command = [sys.executable, "-m", "dispatchlet", "scheduler", "--port", "0"]
    command += ["--db", str(tmp_path / "calls.db"), "--max-connections", str(cap)]
    command += ["--log-level", "warning"]
    process = Process(command, env, tmp_path)
    trickle = Trickle()
    held: list[socket.socket] = []
    try:
        found = process.wait_for(r"listening at (http://127\.0\.0\.1:(\d+))")
        url, where = found.group(1), ("127.0.0.1", int(found.group(2)))
        for _ in range(trickling):
            trickle.open(
                where, b"POST /dispatch.sdk.v1.DispatchService/Dispatch HTTP/1.1\r\n", WAIT
            )
        for _ in range(idle):
            held.append(socket.create_connection(where, timeout=WAIT))

        prober = Prober(url)
        started = time.monotonic()
        with endpoint(tmp_path) as endpoint_url:
            ids: list[str] = []
            with Client(url, API_KEY, timeout=WAIT) as client:
                call = call_pb2.Call(function="soak", endpoint=endpoint_url)
                for start in range(0, CALLS, 1000):
                    ids += client.dispatch([call] * min(1000, CALLS - start))
                    prober.ids = ids
                deadline = time.monotonic() + 300
                while len(list(client.list(state="done", page_size=1000))) < CALLS:
                    assert time.monotonic() < deadline, "calls not done within 300 s"
                    time.sleep(0.5)
                elapsed = time.monotonic() - started
                failed = list(client.list(status="failed", page_size=1000))
                ok = sum(1 for _ in client.list(status="OK", page_size=1000))
        prober.stop()
        assert not failed, failed[:3]
        assert ok == CALLS
        assert not prober.errors, prober.errors[:5]
        assert len(prober.latencies) > 10
        print(
            f"\n{CALLS} calls OK in {elapsed:.1f} s under {idle} idle and {trickling} "
            f"trickling connections; {len(prober.latencies)} Gets, p50 "
            f"{percentile(prober.latencies, 0.5) * 1000:.1f} ms, p99 "
            f"{percentile(prober.latencies, 0.99) * 1000:.1f} ms"
        )
        # The connections past the cap were closed by the scheduler, not kept: it holds
        # no more descriptors than the cap and what it keeps for the rest.
        descriptors = len(os.listdir(f"/proc/{process.process.pid}/fd"))
        print(f"the scheduler holds {descriptors} file descriptors (cap {cap})")
        assert descriptors <= cap + FD_RESERVE, descriptors
        assert any(map(closed_by_server, held))

        # Every slot taken by a client that has started a request: a newcomer is told
        # 503 at once, and served once they are gone.
        busy: list[socket.socket] = []
        refused = b""
        try:
            # The trickling ones may have been closed by now (their head's time is up).
            while not refused.startswith(b"HTTP/1.1 503"):
                assert len(busy) <= cap, "no 503 past the cap"
                sock = socket.create_connection(where, timeout=WAIT)
                busy.append(sock)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                refused = read_answer(sock)
                with contextlib.suppress(OSError):
                    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert b"Connection: close" in refused
        finally:
            for sock in busy:
                sock.close()
        deadline = time.monotonic() + WAIT
        while True:
            with Client(url, API_KEY, timeout=WAIT) as client:
                try:
                    assert client.get(ids[0]).status == Status.OK
                    break
                except Exception:
                    assert time.monotonic() < deadline, "not served after the clients left"
                    time.sleep(0.1)
    finally:
        trickle.close()
        for sock in held:
            sock.close()
        process.stop()
    output = "".join(process.drained())
    assert "Traceback" not in output, output[-3000:]
