"""Cold start of the Lambda adapter, against the floor any Dispatch Lambda function pays.

    python bench/lambda_cold_start.py [--runs N] [--metrics] [--powertools-logger]

Each measurement is the wall time of a fresh ``python -c ...`` process, from its start
to its exit:

- adapter: import dispatchlet and its Lambda adapter, load the verification key from
  ``DISPATCH_VERIFICATION_KEY``, build the handler and serve one signed Function URL
  event (a Run of a one-line function);
- floor: import protobuf and cryptography, verify one Ed25519 signature and parse one
  RunRequest. The floor imports dispatchlet's generated ``function_pb2`` without running
  the package's ``__init__`` (which would load the whole core): protobuf, the generated
  descriptors and nothing else.

Both are timed in paired rounds, back to back; the medians of their wall and CPU times
(user + system, less sensitive to other load on the machine) are printed with the median
of the rounds' ratios (target: at most 1.5). ``--metrics`` serves with embedded metrics
on, ``--powertools-logger`` logs through an aws-lambda-powertools ``Logger``, ``--nacl``
verifies with PyNaCl.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.http import Request
from dispatchlet.core.signatures import sign_request
from dispatchlet.core.values import to_any
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2

DOMAIN = "abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws"

ADAPTER = """
import json, sys
from dispatchlet import Endpoint
from dispatchlet.adapters.aws_lambda import lambda_handler
endpoint = Endpoint()
endpoint.function(lambda name: "Hello, " + name, name="greet")
{logger_setup}
handler = lambda_handler(endpoint{options})
with open(sys.argv[1]) as file:
    answer = handler(json.load(file)["event"], None)
assert answer["statusCode"] == 200, answer
"""

FLOOR = """
import base64, importlib.util, json, os, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
spec = importlib.util.find_spec("dispatchlet")
sys.modules["dispatchlet"] = importlib.util.module_from_spec(spec)
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
with open(sys.argv[1]) as file:
    data = json.load(file)
key = Ed25519PublicKey.from_public_bytes(base64.b64decode(os.environ["DISPATCH_VERIFICATION_KEY"]))
key.verify(base64.b64decode(data["signature"]), base64.b64decode(data["message"]))
request = function_pb2.RunRequest.FromString(base64.b64decode(data["event"]["body"]))
assert request.function == "greet"
"""


def function_url_event(key: Ed25519PrivateKey) -> dict[str, object]:
    """A Function URL event carrying a signed Run of greet("World")."""
    run = function_pb2.RunRequest(function="greet", dispatch_id="d" * 24)
    run.input.CopyFrom(to_any("World"))
    request = sign_request(
        Request("POST", RUN_PATH, DOMAIN, [("Content-Type", PROTO)], run.SerializeToString()),
        key,
    )
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.path,
        "rawQueryString": "",
        "headers": {"host": DOMAIN, **{n.lower(): v for n, v in request.headers}},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": DOMAIN.split(".")[0],
            "domainName": DOMAIN,
            "domainPrefix": DOMAIN.split(".")[0],
            "http": {"method": "POST", "path": request.path, "protocol": "HTTP/1.1"},
            "requestId": "bench",
            "routeKey": "$default",
            "stage": "$default",
        },
        "body": base64.b64encode(request.body).decode("ascii"),
        "isBase64Encoded": True,
    }


def fresh_process(code: str, data_file: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one fresh process running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, str(data_file)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("--powertools-logger", action="store_true")
    parser.add_argument(
        "--nacl",
        action="store_true",
        help="verify with PyNaCl, as a package with dispatchlet[nacl] does (default: "
        "cryptography, as the default Lambda package does)",
    )
    args = parser.parse_args()

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    message = os.urandom(330)  # about the size of a Dispatch signature base
    data = {
        "event": function_url_event(key),
        "message": base64.b64encode(message).decode(),
        "signature": base64.b64encode(key.sign(message)).decode(),
    }
    env = {
        **os.environ,
        "DISPATCH_VERIFICATION_KEY": base64.b64encode(public).decode(),
        "POWERTOOLS_METRICS_NAMESPACE": "bench",
        "DISPATCHLET_ED25519_BACKEND": "nacl" if args.nacl else "cryptography",
    }
    logger_setup = ""
    options = ", metrics=True" if args.metrics else ", metrics=False"
    if args.powertools_logger:
        logger_setup = "from aws_lambda_powertools import Logger\nlogger = Logger()"
        options += ", logger=logger"
    adapter_code = ADAPTER.format(logger_setup=logger_setup, options=options)

    with tempfile.TemporaryDirectory() as folder:
        # Bytecode cached as a deployment package would ship it, outside the source tree.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(folder) / "pycache")
        data_file = Path(folder) / "event.json"
        data_file.write_text(json.dumps(data))
        # Warm the file cache and the bytecode of both before timing.
        fresh_process(adapter_code, data_file, env)
        fresh_process(FLOOR, data_file, env)
        # Paired rounds: a change of machine load between rounds moves both.
        rounds = [
            (fresh_process(FLOOR, data_file, env), fresh_process(adapter_code, data_file, env))
            for _ in range(args.runs)
        ]
    print_rounds(rounds, "floor ms", "adapter ms")


Timing = tuple[float, float]


def print_rounds(rounds: list[tuple[Timing, Timing]], base: str, measured: str) -> None:
    """Medians of paired (wall, CPU) timings, and of the rounds' ratios."""
    print(
        f"{'median of ' + str(len(rounds)) + ' fresh processes':>34} {base:>11} "
        f"{measured:>13} {'ratio':>6}"
    )
    for index, label in ((0, "wall time"), (1, "CPU time (user + system)")):
        before = [pair[0][index] for pair in rounds]
        after = [pair[1][index] for pair in rounds]
        ratio = statistics.median(a / b for b, a in zip(before, after, strict=True))
        print(
            f"{label:>34} {statistics.median(before) * 1000:>11.1f} "
            f"{statistics.median(after) * 1000:>13.1f} {ratio:>6.2f}"
        )


if __name__ == "__main__":
    main()
