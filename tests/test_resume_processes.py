"""Resuming a failed workflow through real processes (``dispatchlet scheduler`` on
SQLite and on PostgreSQL, ``dispatchlet serve``, the command line): the steps that
finished before the failure are not run again, the failed one is; what cannot be
resumed is refused with a clear error, over HTTP and on the command line. Each step
counts its runs in a file, on the endpoint's side."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet.core.keys import private_key_base64, public_key_base64
from scheduler_harness import API_KEY
from test_call_actions import waited
from test_cli_calls import Setup
from test_scheduler_processes import Process, database_option, environment, post

WAIT = 60.0
RESUME = "/dispatchlet.scheduler.v1.CallService/Resume"

APP = """
import time
from pathlib import Path

from dispatchlet import Endpoint, PermanentError

endpoint = Endpoint()


def ran(name: str) -> None:
    with Path(f"{name}.runs").open("a") as runs:
        runs.write("x")


@endpoint.function
def step(run: str, n: int) -> int:
    ran(f"{run}-{n}")
    if n == 3 and not Path(f"{run}.fixed").exists():
        raise PermanentError(f"step 3 of {run} is broken")
    return n * 10


@endpoint.function
async def four_steps(run: str) -> list[int]:
    return [await step(run, n) for n in range(1, 5)]


@endpoint.function
def plain(run: str) -> str:
    raise PermanentError("plain is broken")


@endpoint.function
def fine(run: str) -> str:
    return "fine"


@endpoint.function
def held(run: str) -> str:
    Path(f"{run}.started").write_text("")
    deadline = time.monotonic() + 60
    while not Path(f"{run}.release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    return "released"
"""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def resumable(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    """A scheduler (on SQLite or PostgreSQL) and an endpoint serving ``APP``."""
    folder = tmp_path_factory.mktemp("resume")
    (folder / "app.py").write_text(APP)
    key = Ed25519PrivateKey.generate()
    database, database_env = database_option(request, folder)
    scheduler = Process(
        [sys.executable, "-m", "dispatchlet", "scheduler", *database, "--port", "0"],
        environment(
            DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY, **database_env
        ),
        folder,
    )
    endpoint = Process(
        [sys.executable, "-m", "dispatchlet", "serve", "app.py", "--port", "0"],
        environment(DISPATCH_VERIFICATION_KEY=public_key_base64(key.public_key())),
        folder,
    )
    try:
        scheduler_url = scheduler.wait_for(r"listening at (http://\S+)").group(1)
        endpoint_url = endpoint.wait_for(r"serving \S+ at (http://\S+)").group(1)
        env = environment(
            DISPATCH_API_URL=scheduler_url,
            DISPATCH_API_KEY=API_KEY,
            DISPATCH_ENDPOINT_URL=endpoint_url,
        )
        yield Setup(env, folder)
    finally:
        endpoint.stop()
        scheduler.stop()


def dispatched(setup: Setup, function: str, run: str) -> str:
    answer = setup.run("dispatch", function, run)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.strip()


def runs(setup: Setup, run: str) -> dict[int, int]:
    """How many times each step of ``run`` ran, as the endpoint counted."""
    counted = {}
    for n in range(1, 5):
        path = setup.cwd / f"{run}-{n}.runs"
        if path.exists():
            counted[n] = len(path.read_text())
    return counted


@pytest.mark.slow
def test_a_resumed_workflow_does_not_run_its_finished_steps_again(resumable: Setup) -> None:
    old = dispatched(resumable, "four_steps", "wf")
    failed = waited(resumable, old)
    assert failed["status"] == "PERMANENT_ERROR", failed
    assert "step 3 of wf is broken" in failed["error"]["message"]
    assert runs(resumable, "wf") == {1: 1, 2: 1, 3: 1}

    (resumable.cwd / "wf.fixed").write_text("")
    resumed = resumable.run("calls", "resume", old)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed with 2 step(s) kept, 1 to run again" in resumed.stderr
    new = resumed.stdout.strip()
    assert new != old
    done = waited(resumable, new)
    assert (done["status"], done["output"], done["rerun_of"]) == ("OK", [10, 20, 30, 40], old)
    # Steps 1 and 2 ran once in all, step 3 twice (failed, then fixed), step 4 once.
    assert runs(resumable, "wf") == {1: 1, 2: 1, 3: 2, 4: 1}
    # The failed call is as it was; the new one is found as its re-run.
    again = waited(resumable, old)
    assert again["status"] == "PERMANENT_ERROR"
    listed = resumable.run("calls", "list", "--rerun-of", old, "--json")
    assert [json.loads(line)["dispatch_id"] for line in listed.stdout.splitlines()] == [new]


def refused_over_http(setup: Setup, dispatch_id: str) -> tuple[int, dict[str, str]]:
    body = json.dumps({"dispatchId": dispatch_id}).encode()
    status, answer = post(
        setup.env["DISPATCH_API_URL"] + RESUME, body, API_KEY, content_type="application/json"
    )
    return status, json.loads(answer)


@pytest.mark.slow
def test_what_is_not_a_failed_workflow_is_refused_clearly(resumable: Setup) -> None:
    # Fixed before it runs: its step 3 works the first time.
    (resumable.cwd / "ok.fixed").write_text("")
    fine = dispatched(resumable, "fine", "f")
    plain = dispatched(resumable, "plain", "p")
    ok_workflow = dispatched(resumable, "four_steps", "ok")
    assert waited(resumable, fine)["status"] == "OK"
    assert waited(resumable, plain)["status"] == "PERMANENT_ERROR"
    assert waited(resumable, ok_workflow)["status"] == "OK"
    running = dispatched(resumable, "held", "h")
    started = resumable.cwd / "h.started"
    deadline = time.monotonic() + WAIT
    while not started.exists():
        assert time.monotonic() < deadline, f"the held call did not start within {WAIT} s"
        time.sleep(0.05)
    try:
        cases = [
            (ok_workflow, 400, "failed_precondition: the call ended OK"),
            (fine, 400, "failed_precondition: the call ended OK"),
            (plain, 400, "failed_precondition: the call kept no workflow journal"),
            (running, 400, "failed_precondition: the call is running"),
            ("0" * 32, 404, "not_found: no call"),
        ]
        for dispatch_id, http_status, said in cases:
            status, answer = refused_over_http(resumable, dispatch_id)
            code, _, message = said.partition(": ")
            assert (status, answer["code"]) == (http_status, code), answer
            assert answer["message"].startswith(message), answer
            command = resumable.run("calls", "resume", dispatch_id)
            assert command.returncode == 2, command.stdout
            assert said in command.stderr
            assert "Traceback" not in command.stderr
            assert command.stdout == ""
    finally:
        (resumable.cwd / "h.release").write_text("")
    assert waited(resumable, running)["status"] == "OK"
    for dispatch_id in (fine, plain, ok_workflow, running):
        listed = resumable.run("calls", "list", "--rerun-of", dispatch_id, "--json")
        assert listed.stdout == ""
