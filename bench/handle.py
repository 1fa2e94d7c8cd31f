"""Cost of Endpoint.handle() for signed requests, against a bare Ed25519 verify.

    python bench/handle.py [--rounds N]

Both are measured side by side in this process, rounds interleaved, and the best
round of each is compared: the ratio is what the request path costs on top of the
one signature check it cannot avoid (target for a 1 KiB request: at most 1.3).
"""

from __future__ import annotations

import argparse
import os
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


def best_per_call(fn: Callable[[], object], calls: int) -> float:
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
    parser.add_argument("--rounds", type=int, default=15)
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
        calls = max(20, 2000 // max(1, size // 1024))
        handle_best = verify_best = float("inf")
        for _ in range(args.rounds):
            verify_best = min(verify_best, best_per_call(bare_verify, calls))
            handle_best = min(handle_best, best_per_call(partial(endpoint.handle, request), calls))
        label = f"{len(request.body) / 1024:.0f} KiB"
        print(
            f"{label:>14} {handle_best * 1e6:>12.1f} {verify_best * 1e6:>12.1f} "
            f"{handle_best / verify_best:>7.2f}"
        )


if __name__ == "__main__":
    main()
