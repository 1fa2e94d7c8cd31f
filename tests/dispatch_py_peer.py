"""The original Dispatch Python SDK, dispatch-py, in a virtual environment of its own.

dispatch-py 0.8.0 needs http-message-signatures 0.7.0, which the project's own tests
cannot share (they pin 3.0.0), so it is installed beside them: once per set of pinned
versions and Python version, in pytest's cache folder, and reused while it is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Pinned, dependencies that shape the wire (protobuf) and the HTTP client/server
# (aiohttp) included, so that a new release of neither changes what is tested.
REQUIREMENTS = (
    "dispatch-py==0.8.0",
    "http-message-signatures==0.7.0",
    "http-sfv==0.9.9",
    "protobuf==7.36.2",
    "aiohttp==3.14.5",
)
PYTHONS = ((3, 11), (3, 12))  # those dispatch-py 0.8.0 builds its durable coroutines for
INSTALL_TIMEOUT = 300.0
_READY = "installed"

# A dispatch-py application written as its documentation shows: plain functions,
# coroutines that await other functions, gather; served by dispatch-py's own server.
APP = """
import asyncio
import dispatch


@dispatch.function
def greet(name: str) -> str:
    return f"Hello, {name}!"


@dispatch.function
async def shout(name: str) -> str:
    greeting = await greet(name)
    return greeting.upper()


@dispatch.function
async def greet_all(names: list) -> list:
    return await dispatch.gather(*[greet(name) for name in names])


@dispatch.function
def refuse(reason: str) -> str:
    raise ValueError(reason)


@dispatch.function
async def ask(reason: str) -> str:
    try:
        await refuse(reason)
    except ValueError as error:
        return f"refused: {error}"
    return "not refused"


@dispatch.function
async def hand_over(name: str) -> str:
    raise dispatch.Reset(greet, name)


async def announce() -> None:
    # dispatch.run() runs this once its server listens (DISPATCH_ENDPOINT_ADDR).
    print("dispatch-py endpoint serving", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    dispatch.run(announce())
"""

# dispatch-py as a client: `python client.py dispatch FUNCTION JSON_ARGS` dispatches a call
# with its own Client (DISPATCH_API_URL, DISPATCH_API_KEY) and prints the dispatch id;
# `python client.py build FUNCTION JSON_ARGS` prints the Call it would send, hex-encoded.
CLIENT = """
import asyncio, json, sys
import app

command, name, arguments = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
function = getattr(app, name)
if command == "dispatch":
    print(asyncio.run(function.dispatch(*arguments)))
else:
    print(function.build_call(*arguments)._as_proto().SerializeToString().hex())
"""


def interpreter() -> tuple[str, tuple[int, int]]:
    """A Python that dispatch-py 0.8.0 installs on, and its version."""
    if sys.version_info[:2] in PYTHONS:
        return sys.executable, (sys.version_info[0], sys.version_info[1])
    for version in reversed(PYTHONS):
        found = shutil.which("python{}.{}".format(*version))
        if found is not None:
            check = f"import sys; print(sys.version_info[:2] == {version})"
            probe = subprocess.run(
                [found, "-c", check],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if probe.stdout.strip() == "True":
                return found, version
    pytest.fail("dispatch-py 0.8.0 needs Python 3.11 or 3.12, and neither is installed")


def peer_python(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a virtual environment with dispatch-py installed: the one in pytest's
    cache when it is complete, else a new one (in a temporary folder when the cache is
    off). pip's failure fails the test with its output."""
    python, version = interpreter()
    pins = "\n".join(REQUIREMENTS)
    key = hashlib.sha256(pins.encode()).hexdigest()[:12]
    name = f"dispatch-py-{version[0]}.{version[1]}-{key}"
    cache: pytest.Cache | None = getattr(config, "cache", None)  # None: -p no:cacheprovider
    home = cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)
    venv = home / "venv"
    ready = home / _READY
    if ready.exists() and ready.read_text() == pins and (venv / "bin" / "python").exists():
        return venv / "bin" / "python"
    ready.unlink(missing_ok=True)
    shutil.rmtree(venv, ignore_errors=True)
    _run([python, "-m", "venv", str(venv)], "create the virtual environment")
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            *REQUIREMENTS,
        ],
        "install dispatch-py",
    )
    _run([str(venv / "bin" / "python"), "-c", "import dispatch"], "import dispatch-py")
    ready.write_text(pins)
    return venv / "bin" / "python"


def _run(command: list[str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"could not {what}: no end after {INSTALL_TIMEOUT:.0f} s\n{exc.output}")
    if result.returncode != 0:
        pytest.fail(
            f"could not {what} (exit {result.returncode}): {' '.join(command)}\n"
            f"{result.stdout}{result.stderr}"
        )
