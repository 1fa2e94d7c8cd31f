"""What one large output costs the scheduler in memory: the peak RSS growth of a
`dispatchlet scheduler` (SQLite) process over one attempt whose endpoint answers an
output of 1, 4 and 15 MiB, then over one Get of that call in proto and one in JSON.

    python bench/memory.py [--sizes 1,4,15] [--value bytes|string] [--small]

Each size runs in a fresh scheduler process (``/proc/<pid>/clear_refs`` resets its
peak, ``VmHWM`` reads it), after a small call has warmed its imports and connections;
the endpoint is an aiohttp process of its own, which answers a ``BytesValue`` of the
size (``--value string``: a ``StringValue``). The floor is the body itself: its size,
and the peak growth of a process that does nothing but hold a ``bytes`` of that size,
measured in the same run. Each figure is given in MiB and as a ratio to the output's
size ("x"): 1x is a single copy.
With ``--small``, a 10-byte output's attempt and Gets are timed as well (the common
case must not get slower): the median of 200, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

MiB = 1024 * 1024

ENDPOINT = r"""
import sys
from aiohttp import web
from google.protobuf import any_pb2, wrappers_pb2
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2

def answer(size):
    output = any_pb2.Any()
    if sys.argv[3] == "string":
        output.Pack(wrappers_pb2.StringValue(value="x" * size))
    else:
        output.Pack(wrappers_pb2.BytesValue(value=b"x" * size))
    response = function_pb2.RunResponse(status=1)
    response.exit.result.output.CopyFrom(output)
    return response.SerializeToString()

bodies = {"small": answer(10), "large": answer(int(sys.argv[1]))}

async def run(request):
    called = function_pb2.RunRequest.FromString(await request.read())
    return web.Response(body=bodies[called.function], content_type="application/proto")

app = web.Application(client_max_size=1024 * 1024)
app.router.add_post("/dispatch.sdk.v1.FunctionService/Run", run)
ready = lambda *_: print("ready", flush=True)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=ready)
"""

FLOOR = r"""
import sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
before = peak()
held = b"x" * int(sys.argv[1])
print(peak() - before)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak(pid: int) -> int:
    """The process's peak RSS, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def reset_peak(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak(pid)


def post(api: str, name: str, body: bytes, wire: str) -> bytes:
    request = urllib.request.Request(
        api + name, data=body, headers={"Content-Type": f"application/{wire}"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return bytes(answer.read())


class Scheduler:
    """A scheduler process and an endpoint process, with a call run to its end."""

    def __init__(self, size: int, folder: Path, value: str = "bytes") -> None:
        self.folder = folder
        self.endpoint_port, port = free_port(), free_port()
        self.endpoint = subprocess.Popen(
            [sys.executable, "-c", ENDPOINT, str(size), str(self.endpoint_port), value],
            stdout=subprocess.PIPE,
        )
        assert self.endpoint.stdout is not None
        if self.endpoint.stdout.readline().strip() != b"ready":
            raise RuntimeError("the endpoint did not start")
        command = Path(sys.executable).parent / "dispatchlet"
        self.process = subprocess.Popen(
            [
                *(str(command), "scheduler", "--insecure", "--db", str(folder / "m.db")),
                *("--port", str(port), "--log-level", "warning"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        if b"listening" not in self.process.stdout.readline():
            raise RuntimeError("the scheduler did not start")
        self.api = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        for process in (self.process, self.endpoint):
            process.terminate()
            process.wait(30)

    def run(self, function: str) -> str:
        """Dispatch a call of ``function`` and wait for its end, read from the database
        file (so that no API answer is counted)."""
        endpoint = f"http://127.0.0.1:{self.endpoint_port}"
        body = json.dumps({"calls": [{"function": function, "endpoint": endpoint}]}).encode()
        answer = post(self.api, "/dispatch.sdk.v1.DispatchService/Dispatch", body, "json")
        (dispatch_id,) = json.loads(answer)["dispatchIds"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            database = sqlite3.connect(f"file:{self.folder / 'm.db'}?mode=ro", uri=True)
            try:
                row = database.execute(
                    "SELECT state FROM calls WHERE dispatch_id = ?", (dispatch_id,)
                ).fetchone()
            finally:
                database.close()
            if row is not None and row[0] == "done":
                return str(dispatch_id)
            time.sleep(0.02)
        raise RuntimeError(f"the call of {function} did not end within 120 s")

    def get(self, dispatch_id: str, wire: str) -> bytes:
        from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2

        request = calls_pb2.GetRequest(dispatch_id=dispatch_id)
        body = (
            request.SerializeToString()
            if wire == "proto"
            else json.dumps({"dispatchId": dispatch_id}).encode()
        )
        return post(self.api, "/dispatchlet.scheduler.v1.CallService/Get", body, wire)

    def growth(self, action: Callable[[Scheduler], object]) -> int:
        """How much ``action`` (given this scheduler) grew its process's peak RSS."""
        before = reset_peak(self.process.pid)
        action(self)
        return peak(self.process.pid) - before


def measure(size: int, value: str = "bytes") -> dict[str, int]:
    """The peak growths of one attempt and of each Get, each in a scheduler process of
    its own on the same database (what one freed is not there for the next to reuse),
    warmed by a small call and its Gets."""
    figures: dict[str, int] = {}
    found: dict[str, str] = {}
    actions: dict[str, Callable[[Scheduler], object]] = {
        "attempt": lambda scheduler: found.update(id=scheduler.run("large")),
        "get_proto": lambda scheduler: scheduler.get(found["id"], "proto"),
        "get_json": lambda scheduler: scheduler.get(found["id"], "json"),
    }
    with tempfile.TemporaryDirectory() as folder:
        for name, action in actions.items():
            scheduler = Scheduler(size, Path(folder), value)
            try:
                small = scheduler.run("small")  # imports, connections, statement caches
                scheduler.get(small, "proto")
                scheduler.get(small, "json")
                figures[name] = scheduler.growth(action)
            finally:
                scheduler.close()
    return figures


def floor(size: int) -> int:
    held = subprocess.run(
        [sys.executable, "-c", FLOOR, str(size)], capture_output=True, check=True, text=True
    )
    return int(held.stdout)


def small_timings(count: int) -> dict[str, float]:
    """Median milliseconds of a small call's attempt (dispatch to done) and Gets."""
    with tempfile.TemporaryDirectory() as folder:
        scheduler = Scheduler(10, Path(folder))
        try:
            dispatch_id = scheduler.run("small")
            times: dict[str, list[float]] = {"attempt": [], "get_proto": [], "get_json": []}
            for _ in range(count):
                started = time.perf_counter()
                dispatch_id = scheduler.run("small")
                times["attempt"].append(time.perf_counter() - started)
                for wire in ("proto", "json"):
                    started = time.perf_counter()
                    scheduler.get(dispatch_id, wire)
                    times[f"get_{wire}"].append(time.perf_counter() - started)
            return {name: statistics.median(spent) * 1000 for name, spent in times.items()}
        finally:
            scheduler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,15", help="output sizes in MiB")
    parser.add_argument(
        "--value", choices=("bytes", "string"), default="bytes", help="the output's type"
    )
    parser.add_argument("--small", action="store_true", help="time a small call too")
    parser.add_argument("--count", type=int, default=200, help="small calls timed")
    args = parser.parse_args()
    print(f"{'output':>8} {'floor':>14} {'attempt':>14} {'Get proto':>14} {'Get JSON':>14}")
    for mib in (float(text) for text in args.sizes.split(",")):
        size = int(mib * MiB)
        figures = measure(size, args.value)
        cells = [floor(size), figures["attempt"], figures["get_proto"], figures["get_json"]]
        shown = " ".join(f"{cell / MiB:6.1f} ({cell / size:4.1f}x)" for cell in cells)
        print(f"{mib:6.0f} M {shown}", flush=True)
    if args.small:
        timings = small_timings(args.count)
        print(
            "a 10-byte output, median of {count}: attempt {attempt:.2f} ms, Get proto "
            "{get_proto:.2f} ms, Get JSON {get_json:.2f} ms".format(count=args.count, **timings)
        )


if __name__ == "__main__":
    main()
