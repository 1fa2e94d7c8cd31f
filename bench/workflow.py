"""What a durable workflow costs, side by side with the same steps as plain calls.

    python bench/workflow.py [--runs 40] [--steps 100]

`dispatchlet scheduler` (SQLite) and `dispatchlet serve` (waitress, 8 threads) in
processes of their own, on loopback:

- latency of a three-step workflow, dispatch to final result, p50 and p99 over
  ``--runs``, with its steps as child calls and as inline steps (``inline=True``: run
  in the workflow's own request); the baseline: the same three calls made one after
  another by the client (dispatch, wait, dispatch the next);
- a ``--steps``-step sequential workflow, steps as calls and inline: time per step,
  against the baseline's time per call;
- replay, in this process: the time of one resume as the journal grows (1 to 1,000
  recorded steps), per resume and per replayed step, against one plain call of the
  same function through ``Endpoint.run``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client, Endpoint
from dispatchlet.core import values
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2

_spec = importlib.util.spec_from_file_location(
    "bench_scheduler", Path(__file__).with_name("scheduler.py")
)
assert _spec is not None
assert _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
process, percentile = _shared.process, _shared.percentile

API_KEY = "bench"

APP = """
from dispatchlet import Endpoint

endpoint = Endpoint()


@endpoint.function
def step(x: int) -> int:
    return x + 1


@endpoint.function
async def three(x: int) -> int:
    a = await step(x)
    b = await step(a)
    return await step(b)


@endpoint.function
async def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await step(x)
    return x


# The same steps run inline: inside the workflow's own run, journaled.
@endpoint.function(inline=True)
def step_inline(x: int) -> int:
    return x + 1


@endpoint.function
async def three_inline(x: int) -> int:
    a = await step_inline(x)
    b = await step_inline(a)
    return await step_inline(b)


@endpoint.function
async def chain_inline(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await step_inline(x)
    return x
"""


def served(folder: Path, runs: int, steps: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    (folder / "app.py").write_text(APP)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
    endpoint_env = {
        **base,
        "DISPATCH_VERIFICATION_KEY": public_key_base64(key.public_key()),
        "PYTHONUNBUFFERED": "1",
    }
    scheduler_env = {
        **base,
        "DISPATCH_SIGNING_KEY": private_key_base64(key),
        "DISPATCH_API_KEY": API_KEY,
        "PYTHONUNBUFFERED": "1",
    }
    serve = [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"]
    serve += ["--threads", "8"]
    scheduler = [sys.executable, "-m", "dispatchlet", "scheduler", "--db"]
    scheduler += [str(folder / "scheduler.db"), "--port", "0"]
    with (
        process(serve, endpoint_env, folder, r"serving \S+ at (http://\S+)") as endpoint,
        process(scheduler, scheduler_env, folder, r"listening at (http://\S+)") as url,
        Client(url, API_KEY) as client,
    ):

        def run(function: str, value: int) -> Any:
            built = call_pb2.Call(function=function, endpoint=endpoint)
            built.input.CopyFrom(values.to_any(value))
            info = client.wait(client.dispatch([built])[0])
            if info.status is None or info.status.name != "OK":
                raise SystemExit(f"{function} did not end OK: {info}")
            return info.output

        run("three", 0)  # warm them up
        run("three_inline", 0)
        run("step", 0)
        workflow, inline, plain = [], [], []
        for n in range(runs):
            # Interleaved, so that all see the same machine.
            began = time.perf_counter()
            assert run("three", n) == n + 3
            workflow.append(time.perf_counter() - began)
            began = time.perf_counter()
            assert run("three_inline", n) == n + 3
            inline.append(time.perf_counter() - began)
            began = time.perf_counter()
            x = n
            for _ in range(3):
                x = run("step", x)
            plain.append(time.perf_counter() - began)
        began = time.perf_counter()
        assert run("chain", steps) == steps
        chained = (time.perf_counter() - began) / steps
        began = time.perf_counter()
        assert run("chain_inline", steps) == steps
        chained_inline = (time.perf_counter() - began) / steps
        began = time.perf_counter()
        x = 0
        for _ in range(steps):
            x = run("step", x)
        sequential = (time.perf_counter() - began) / steps
    return {
        "workflow": workflow,
        "inline": inline,
        "plain": plain,
        "chain_per_step": chained,
        "inline_chain_per_step": chained_inline,
        "plain_per_call": sequential,
    }


def replay_costs(sizes: list[int], rounds: int) -> list[tuple[int, float, float]]:
    """(recorded steps, seconds per resume, seconds per plain call) for each size."""
    endpoint = Endpoint(insecure=True)

    @endpoint.function
    def step(x: int) -> int:
        return x + 1

    @endpoint.function
    async def chain(n: int) -> int:
        x = 0
        for _ in range(n):
            x = await step.step(x)
        return x

    plain = function_pb2.RunRequest(function="step", input=values.to_any(1))
    costs = []
    for size in sizes:
        # A journal of ``size`` steps, all but the last done: the next resume replays
        # them and finds the last one's result.
        request = function_pb2.RunRequest(function="chain", input=values.to_any(size + 1))
        for number in range(size):
            poll = endpoint.run(request).poll
            request = function_pb2.RunRequest(function="chain")
            request.poll_result.typed_coroutine_state.CopyFrom(poll.typed_coroutine_state)
            result = request.poll_result.results.add(correlation_id=number + 1)
            result.output.CopyFrom(values.to_any(number + 1))
        resume_times, plain_times = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            answer = endpoint.run(request)
            resume_times.append(time.perf_counter() - began)
            assert answer.WhichOneof("directive") == "poll"
            began = time.perf_counter()
            endpoint.run(plain)
            plain_times.append(time.perf_counter() - began)
        costs.append((size, statistics.median(resume_times), statistics.median(plain_times)))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--replay-rounds", type=int, default=21)
    args = parser.parse_args()
    ms = 1000.0
    with tempfile.TemporaryDirectory() as tmp:
        found = served(Path(tmp), args.runs, args.steps)
    workflow, inline, plain = found["workflow"], found["inline"], found["plain"]
    print(f"three steps, dispatch to final, {args.runs} runs (ms):")
    print(f"{'':24}{'p50':>9}{'p99':>9}")
    rows = (("workflow", workflow), ("inline steps", inline), ("three plain calls", plain))
    for label, samples in rows:
        print(
            f"{label:24}{percentile(samples, 0.5) * ms:9.1f}{percentile(samples, 0.99) * ms:9.1f}"
        )
    ratio = percentile(workflow, 0.5) / percentile(plain, 0.5)
    print(f"ratio p50 workflow / plain calls: {ratio:.2f}")
    ratio = percentile(inline, 0.5) / percentile(plain, 0.5)
    print(f"ratio p50 workflow of inline steps / plain calls: {ratio:.2f}")
    print()
    chain, single = found["chain_per_step"], found["plain_per_call"]
    print(f"{args.steps} sequential steps: {chain * ms:.2f} ms per step in a workflow, ")
    print(f"  {single * ms:.2f} ms per plain call one after another; ratio {chain / single:.2f}")
    chain = found["inline_chain_per_step"]
    print(f"  {chain * ms:.2f} ms per inline step; ratio {chain / single:.2f}")
    print()
    print("replay of one resume, in process (us):")
    print(f"{'steps':>7}{'resume':>11}{'per step':>10}{'plain run':>11}{'ratio':>8}")
    for size, resume, run in replay_costs([1, 10, 100, 1000], args.replay_rounds):
        us = 1e6
        print(
            f"{size:7d}{resume * us:11.1f}{resume / size * us:10.2f}{run * us:11.1f}"
            f"{resume / run:8.1f}"
        )


if __name__ == "__main__":
    main()
