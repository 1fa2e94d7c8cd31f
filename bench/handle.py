"""Cost of the request path for signed requests, against a bare Ed25519 verify.

    python bench/handle.py [--rounds N]

Measured side by side in this process, in interleaved rounds, with the median of the
rounds' ratios printed: what the request path costs on top of the one signature check
it cannot avoid.

- ``handle()``: ``Endpoint.handle`` of a signed Run (target for 1 KiB: at most 1.3);
- ``wsgi``: the same request through ``wsgi_app``, from a WSGI environ as gunicorn
  builds it (RAW_URI, HTTP_* headers, a body stream) to the bytes of the answer
  (target for 1 KiB: at most 1.4);
- ``nacl``: when PyNaCl is installed, its libsodium verify of the same message, beside
  cryptography's, to weigh it as a verification backend.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dispatchlet import Endpoint
from dispatchlet.adapters.wsgi import wsgi_app
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


def wsgi_call(endpoint: Endpoint, request: Request) -> Callable[[], object]:
    """One call of ``wsgi_app(endpoint)`` on ``request``, as gunicorn hands it over."""
    app = wsgi_app(endpoint)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "RAW_URI": request.path,
        "PATH_INFO": request.path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": request.authority,
        "CONTENT_LENGTH": str(len(request.body)),
    }
    for name, value in request.headers:
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    stream = io.BytesIO(request.body)
    environ["wsgi.input"] = stream

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        assert status.startswith("200")

    def call() -> object:
        stream.seek(0)
        return b"".join(app(environ, start_response))

    return call


def nacl_verify(public: Any, signature: bytes, message: bytes) -> Callable[[], object] | None:
    try:
        from nacl.signing import VerifyKey
    except ImportError:
        return None
    key = VerifyKey(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
    return partial(key.verify, message, signature)


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

    nacl = nacl_verify(public, signature, message)
    columns = ["handle() us", "wsgi us", "verify() us", "handle", "wsgi"]
    if nacl is not None:
        columns += ["nacl us", "nacl"]
    print(f"{'request body':>14} " + " ".join(f"{c:>11}" for c in columns))
    for size in (1024, 64 * 1024, 1024 * 1024):
        request = signed_request(key, size)
        assert endpoint.handle(request).status == 200
        calls = max(10, 500 // max(1, size // 1024))
        timed: dict[str, Callable[[], object]] = {
            "verify": bare_verify,
            "handle": partial(endpoint.handle, request),
            "wsgi": wsgi_call(endpoint, request),
        }
        if nacl is not None:
            timed["nacl"] = nacl
        # Each round times them back to back, so that a change of machine speed between
        # rounds moves all; the median ratio of the rounds is reported.
        times: dict[str, list[float]] = {name: [] for name in timed}
        ratios: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.rounds):
            for name, fn in timed.items():
                times[name].append(per_call(fn, calls))
            for name in timed:
                ratios[name].append(times[name][-1] / times["verify"][-1])
        cells = [statistics.median(times[n]) * 1e6 for n in ("handle", "wsgi", "verify")]
        cells += [statistics.median(ratios[n]) for n in ("handle", "wsgi")]
        if nacl is not None:
            cells += [statistics.median(times["nacl"]) * 1e6, statistics.median(ratios["nacl"])]
        label = f"{len(request.body) / 1024:.0f} KiB"
        print(f"{label:>14} " + " ".join(f"{cell:>11.2f}" for cell in cells))


if __name__ == "__main__":
    main()
