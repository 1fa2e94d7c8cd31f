"""Cold start of a built Lambda package with and without the bytecode it ships.

    python bench/lambda_bytecode.py [--runs N]

Builds the example app's package with deploy/aws/lambda_package.py for this machine
(wheels and bytecode for the running Python), makes a copy without any ``__pycache__``,
and times fresh processes that import the handler from the package alone (``-I -S``,
as Lambda's runtime imports it) and serve one signed Function URL event. Python may not
write bytecode (``-B``), as in Lambda's read-only /var/task, so
the copy without bytecode compiles what it imports on every start. Paired rounds; the
medians of wall and CPU time are printed with the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from lambda_cold_start import function_url_event, print_rounds

ROOT = Path(__file__).resolve().parent.parent

SERVE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from lambda_app import handler
with open(sys.argv[2]) as file:
    answer = handler(json.load(file), None)
assert answer["statusCode"] == 200, answer
"""


def load_packager() -> object:
    path = ROOT / "deploy" / "aws" / "lambda_package.py"
    spec = importlib.util.spec_from_file_location("lambda_package", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(package: Path, event: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU time of one fresh process serving ``event`` from ``package``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    # -B: no bytecode written, as in a read-only folder (-I ignores PYTHON* variables).
    command = [sys.executable, "-I", "-S", "-B", "-c", SERVE, str(package), str(event)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    packager = load_packager()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DISPATCH_VERIFICATION_KEY": base64.b64encode(public).decode(),
    }
    with tempfile.TemporaryDirectory() as folder:
        compiled = Path(folder, "with-bytecode")
        packager.build(  # type: ignore[attr-defined]
            compiled, architecture="host", python_version=version, python=sys.executable
        )
        plain = Path(folder, "without-bytecode")
        shutil.copytree(compiled, plain, ignore=shutil.ignore_patterns("__pycache__"))
        event = Path(folder, "event.json")
        event.write_text(json.dumps(function_url_event(key)))
        start(compiled, event, env)  # warm the file cache
        start(plain, event, env)
        rounds = [(start(plain, event, env), start(compiled, event, env)) for _ in range(args.runs)]
    print_rounds(rounds, "no .pyc ms", "with .pyc ms")


if __name__ == "__main__":
    main()
