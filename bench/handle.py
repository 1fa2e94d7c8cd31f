"""Cost of Endpoint.handle() for signed requests, against a bare Ed25519 verify.

    python bench/handle.py [--rounds N]

Both are measured side by side in this process, in interleaved rounds, and the median
of the rounds' ratios is printed: what the request path costs on top of the one
signature check it cannot avoid (target for a 1 KiB request: at most 1.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Endpoint
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.http import Request
from dispatchlet.core.signatures import sign_request
from dispatchlet.core.values import to_any
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2


def per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def signed_request(key: Ed25519PrivateKey, size: int) -> Request:
    run = function_pb2.RunRequest(function="echo", dispatch_id="d" * 20)
    run.input.CopyFrom(to_any(b""))
    overhead = len(run.SerializeToString())
    run.input.CopyFrom(to_any(os.urandom(max(size - overhead - 8, 0))))
    body = run.SerializeToString()
    request = Request("POST", RUN_PATH, "example.com", [("Content-Type", PROTO)], body)
    return sign_request(request, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    endpoint = Endpoint(verification_key=public)

    @endpoint.function
    def echo(value: bytes) -> int:
        return len(value)

    message = os.urandom(330)  # about the size of a Dispatch signature base
    signature = key.sign(message)

    def bare_verify() -> None:
        public.verify(signature, message)

    print(f"{'request body':>14} {'handle() us':>12} {'verify() us':>12} {'ratio':>7}")
    for size in (1024, 64 * 1024, 1024 * 1024):
        request = signed_request(key, size)
        assert endpoint.handle(request).status == 200
        calls = max(10, 500 // max(1, size // 1024))
        handle = partial(endpoint.handle, request)
        # Each round times the two back to back, so that a change of machine speed
        # between rounds moves both; the median ratio of the rounds is reported.
        ratios, handle_times, verify_times = [], [], []
        for _ in range(args.rounds):
            verify_times.append(per_call(bare_verify, calls))
            handle_times.append(per_call(handle, calls))
            ratios.append(handle_times[-1] / verify_times[-1])
        label = f"{len(request.body) / 1024:.0f} KiB"
        print(
            f"{label:>14} {statistics.median(handle_times) * 1e6:>12.1f} "
            f"{statistics.median(verify_times) * 1e6:>12.1f} {statistics.median(ratios):>7.2f}"
        )


if __name__ == "__main__":
    main()
