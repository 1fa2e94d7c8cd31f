"""Acting on a call: retry now (its next attempt brought forward from its backoff) and
re-run (a new call doing a done call's work again, linked to it), and a call's children
listed: through the API in both codecs, the client, the command line, and real
processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.cli.main import main
from dispatchlet.client import ClientError
from dispatchlet.core.dispatching import API_KEY_ENV, API_URL_ENV, REQUEST_ID_HEADER
from dispatchlet.core.keys import private_key_base64, public_key_base64
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.store import Call, State
from scheduler_harness import API_KEY, Harness, call, harness, raised, returned
from test_cli_calls import Setup
from test_scheduler_processes import Process, environment
from test_scheduler_tree_limits import stored_tree

CALLS = "/dispatchlet.scheduler.v1.CallService/"
BACKOFF = RetryPolicy(base=600.0, cap=600.0)
"""A retry waits 5 to 10 minutes: only Retry can make it run within a test."""
WAIT = 60.0
LATER = 3600.0


def flaky_once(tries: dict[str, int]) -> Any:
    """An endpoint whose first attempt with each input fails (a temporary error), the
    next ones (a retry, a re-run) return "fine"; ``tries`` counts the attempts by
    dispatch id."""
    inputs: set[bytes] = set()

    def answer(endpoint: str, request: function_pb2.RunRequest) -> Any:
        tries[request.dispatch_id] = tries.get(request.dispatch_id, 0) + 1
        given = request.input.SerializeToString()
        if given not in inputs:
            inputs.add(given)
            return raised("ConnectionError", "down for now", Status.TEMPORARY_ERROR)
        return returned("fine")

    return answer


async def waiting_for_retry(h: Harness, dispatch_id: str) -> Call:
    """The call once its first attempt failed and it waits for its retry."""
    deadline = time.monotonic() + WAIT
    with h.engine.watching(dispatch_id) as until:
        while True:
            found = await h.store.get(dispatch_id)
            assert found is not None
            if found.state is State.READY and found.status is not None:
                return found
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{dispatch_id} not retried within {WAIT} s: {found}"
            await until(min(remaining, 0.2))


async def post_json(h: Harness, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, answer = await h.post(
        CALLS + method, json.dumps(body).encode(), content_type="application/json"
    )
    return status, json.loads(answer)


# --- the API -----------------------------------------------------------------------------


def test_retry_starts_a_backed_off_call_now_in_json_and_proto(tmp_path: Path) -> None:
    tries: dict[str, int] = {}

    async def scenario() -> None:
        async with harness(tmp_path, flaky_once(tries), policy=BACKOFF) as h:
            by_json, by_proto = await h.dispatch(call("f", 1), call("f", 2))
            for dispatch_id in (by_json, by_proto):
                waiting = await waiting_for_retry(h, dispatch_id)
                assert waiting.ready_at > time.time() + 60  # its backoff: minutes away
            status, answer = await post_json(h, "Retry", {"dispatchId": by_json})
            assert (status, answer) == (200, {"broughtForward": True})
            answer = await h.rpc(
                CALLS + "Retry",
                calls_pb2.RetryRequest(dispatch_id=by_proto),
                calls_pb2.RetryResponse,
            )
            assert answer.brought_forward
            for dispatch_id in (by_json, by_proto):
                done = await h.done(dispatch_id, WAIT)
                assert (done.status, done.attempts) == (Status.OK.value, 2)
            assert tries == {by_json: 2, by_proto: 2}

            # Done now: nothing to retry, and the answer says why.
            status, answer = await post_json(h, "Retry", {"dispatchId": by_json})
            assert status == 400
            assert answer["code"] == "failed_precondition"
            assert "the call is done" in answer["message"]
            assert "re-run" in answer["message"]
            status, answer = await post_json(h, "Retry", {"dispatchId": "0" * 32})
            assert (status, answer["code"]) == (404, "not_found")
            status, answer = await post_json(h, "Retry", {})
            assert (status, answer["code"]) == (400, "invalid_argument")

    asyncio.run(scenario())


def test_retry_refuses_running_and_waiting_calls_and_leaves_due_ones(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            running, waiting, due = await h.dispatch(call("r"), call("w"), call("d"))
            now = time.time()
            claims = await h.store.claim(owner="t", now=now, limit=2, lease_seconds=LATER)
            leases = {c.call.dispatch_id: c.lease for c in claims}
            assert set(leases) == {running, waiting}
            children = await h.store.suspend(
                leases[waiting],
                b"",
                [],
                min_results=1,
                max_results=1,
                until=now + LATER,
                now=now,
            )
            assert children == []
            for dispatch_id, state in ((running, "running"), (waiting, "waiting")):
                status, answer = await post_json(h, "Retry", {"dispatchId": dispatch_id})
                assert (status, answer["code"]) == (400, "failed_precondition")
                assert answer["message"].startswith(f"the call is {state}:")
            # A first attempt due already: nothing to bring forward, and no error.
            status, answer = await post_json(h, "Retry", {"dispatchId": due})
            assert (status, answer) == (200, {})
            found = await h.store.get(due)
            assert found is not None
            assert found.state is State.READY

    asyncio.run(scenario())


def test_rerun_makes_a_new_call_linked_to_the_done_one(tmp_path: Path) -> None:
    tries: dict[str, int] = {}

    def fails_first_time(endpoint: str, request: function_pb2.RunRequest) -> Any:
        tries[request.dispatch_id] = tries.get(request.dispatch_id, 0) + 1
        if len(tries) == 1:
            return raised("ValueError", "bad input", Status.INVALID_ARGUMENT)
        return returned("fine")

    async def scenario() -> None:
        async with harness(tmp_path, fails_first_time) as h:
            expiration = {"seconds": 7200}
            (old,) = await h.dispatch(call("f", {"n": 1}, expiration=expiration, version="v3"))
            failed = await h.done(old, WAIT)
            assert failed.status == Status.INVALID_ARGUMENT.value

            status, answer = await post_json(h, "Rerun", {"dispatchId": old})
            assert status == 200, answer
            new = answer["dispatchId"]
            assert new != old
            rerun = await h.done(new, WAIT)
            assert rerun.status == Status.OK.value
            assert (rerun.function, rerun.endpoint, rerun.version, rerun.input) == (
                failed.function,
                failed.endpoint,
                failed.version,
                failed.input,
            )
            assert (rerun.parent_id, rerun.root_id, rerun.rerun_of) == (None, new, old)
            assert rerun.expires_at - rerun.created_at == pytest.approx(7200)
            # The old call is as it was.
            assert await h.store.get(old) == failed

            # Get and List tell the link, and List finds the re-runs of a call.
            status, got = await post_json(h, "Get", {"dispatchId": new})
            assert (status, got["call"]["rerunOf"]) == (200, old)
            answer = await h.rpc(
                CALLS + "Rerun", calls_pb2.RerunRequest(dispatch_id=new), calls_pb2.RerunResponse
            )
            status, listed = await post_json(h, "List", {"rerunOf": old})
            assert status == 200
            assert [c["dispatchId"] for c in listed["calls"]] == [new]
            assert listed["calls"][0]["rerunOf"] == old
            listed = await h.rpc(
                CALLS + "List", calls_pb2.ListRequest(rerun_of=new), calls_pb2.ListResponse
            )
            assert [c.dispatch_id for c in listed.calls] == [answer.dispatch_id]

    asyncio.run(scenario())


def test_rerun_with_a_request_id_is_idempotent_and_refuses_unfinished_calls(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            root, _ = await stored_tree(h.store, [1], time.time() + LATER)
            await h.store.cancel(root, Status.PERMANENT_ERROR.value, b"", now=time.time())
            body = calls_pb2.RerunRequest(dispatch_id=root).SerializeToString()
            ids = []
            for _ in range(2):
                async with h.session.post(
                    h.url + CALLS + "Rerun",
                    data=body,
                    headers={
                        "Content-Type": "application/proto",
                        "Authorization": f"Bearer {API_KEY}",
                        REQUEST_ID_HEADER: "rerun-once",
                    },
                ) as answer:
                    assert answer.status == 200
                    ids.append(calls_pb2.RerunResponse.FromString(await answer.read()).dispatch_id)
            assert ids[0] == ids[1]
            assert [c.dispatch_id for c in await h.store.list(rerun_of=root)] == ids[:1]

            (unfinished,) = await h.dispatch(call("f"))
            status, answer = await post_json(h, "Rerun", {"dispatchId": unfinished})
            assert (status, answer["code"]) == (400, "failed_precondition")
            assert "the call is ready" in answer["message"]
            assert "cancel it first" in answer["message"]
            status, answer = await post_json(h, "Rerun", {"dispatchId": "0" * 32})
            assert (status, answer["code"]) == (404, "not_found")
            assert await h.store.list(rerun_of=unfinished) == []

    asyncio.run(scenario())


def test_list_gives_a_calls_children_with_their_parent_and_root(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            root, below = await stored_tree(h.store, [3, 2], time.time() + LATER)
            children = below[:3]
            status, listed = await post_json(h, "List", {"parentDispatchId": root})
            assert status == 200
            assert [c["dispatchId"] for c in listed["calls"]] == children
            for child in listed["calls"]:
                assert (child["parentDispatchId"], child["rootDispatchId"]) == (root, root)
            grandchildren = await h.rpc(
                CALLS + "List",
                calls_pb2.ListRequest(
                    parent_dispatch_id=children[0], newest_first=True, page_size=1
                ),
                calls_pb2.ListResponse,
            )
            assert [c.dispatch_id for c in grandchildren.calls] == [below[4]]
            assert grandchildren.calls[0].parent_dispatch_id == children[0]
            assert grandchildren.next_page_token == below[4]

    asyncio.run(scenario())


# --- the client and the command line ----------------------------------------------------


def test_the_client_and_the_command_line_retry_and_rerun(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tries: dict[str, int] = {}

    async def scenario() -> None:
        async with harness(tmp_path, flaky_once(tries), policy=BACKOFF) as h:
            monkeypatch.setenv(API_URL_ENV, h.url)
            monkeypatch.setenv(API_KEY_ENV, API_KEY)
            by_client, by_command = await h.dispatch(call("f", 1), call("f", 2))
            for dispatch_id in (by_client, by_command):
                await waiting_for_retry(h, dispatch_id)
            with Client(h.url, API_KEY) as client:
                assert await asyncio.to_thread(client.retry, by_client)
                await h.done(by_client, WAIT)
                with pytest.raises(ClientError) as refused:
                    await asyncio.to_thread(client.retry, by_client)
                assert refused.value.code == "failed_precondition"
                assert "the call is done" in refused.value.message

                new = await asyncio.to_thread(client.rerun, by_client)
                await h.done(new, WAIT)
                info = await asyncio.to_thread(client.get, new)
                assert (info.rerun_of, info.status, info.output) == (by_client, Status.OK, "fine")
                listed = await asyncio.to_thread(lambda: list(client.list(rerun_of=by_client)))
                assert [(c.dispatch_id, c.rerun_of) for c in listed] == [(new, by_client)]
                with pytest.raises(ClientError) as refused:
                    await asyncio.to_thread(client.rerun, by_command)  # not done yet
                assert refused.value.code == "failed_precondition"

            capsys.readouterr()
            assert await asyncio.to_thread(main, ["calls", "retry", by_command]) == 0
            assert capsys.readouterr().out == "retrying now\n"
            await h.done(by_command, WAIT)
            assert tries[by_command] == 2
            assert await asyncio.to_thread(main, ["calls", "rerun", by_command]) == 0
            rerun = capsys.readouterr().out.strip()
            assert (await h.done(rerun, WAIT)).rerun_of == by_command
            assert await asyncio.to_thread(main, ["calls", "show", rerun]) == 0
            assert f"{'re-run of':<12} {by_command}\n" in capsys.readouterr().out
            assert await asyncio.to_thread(main, ["calls", "list", "--rerun-of", by_command]) == 0
            _, *rows = capsys.readouterr().out.splitlines()
            assert [row.split()[0] for row in rows] == [rerun]

            # Refused: a clear message and a failing exit code, no traceback.
            assert await asyncio.to_thread(main, ["calls", "retry", by_command]) == 2
            err = capsys.readouterr().err
            assert "failed_precondition: the call is done" in err
            assert "Traceback" not in err

    asyncio.run(scenario())


def test_calls_list_parent_lists_the_children(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            monkeypatch.setenv(API_URL_ENV, h.url)
            monkeypatch.setenv(API_KEY_ENV, API_KEY)
            root, below = await stored_tree(h.store, [2, 2], time.time() + LATER)
            with Client(h.url, API_KEY) as client:
                children = await asyncio.to_thread(
                    lambda: list(client.list(parent_dispatch_id=root))
                )
            assert [c.dispatch_id for c in children] == below[:2]
            assert {(c.parent_dispatch_id, c.root_dispatch_id) for c in children} == {(root, root)}
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["calls", "list", "--parent", root, "--json"]) == 0
            lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            # Newest first.
            assert [line["dispatch_id"] for line in lines] == below[1::-1]
            assert {line["parent_dispatch_id"] for line in lines} == {root}

    asyncio.run(scenario())


# --- real processes ----------------------------------------------------------------------

APP = """
from pathlib import Path

from dispatchlet import Endpoint

endpoint = Endpoint()


def tried(name: str) -> int:
    \"\"\"How many times ``name`` has run, this time included (kept in a file, so that
    the test sees it too).\"\"\"
    with Path(f"{name}.tries").open("a") as tries:
        tries.write("x")
    return len(Path(f"{name}.tries").read_text())


@endpoint.function
def flaky(name: str) -> str:
    if tried(name) == 1:
        raise ConnectionError("down for now")
    return f"fine after {len(Path(f'{name}.tries').read_text())} tries"


@endpoint.function
def broken_once(name: str) -> str:
    if tried(name) == 1:
        raise ValueError("bad luck")
    return "fixed"
"""


@pytest.fixture(scope="module")
def long_backoff(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A scheduler whose retries wait 10 minutes, and an endpoint of ``APP``."""
    folder = tmp_path_factory.mktemp("actions")
    (folder / "app.py").write_text(APP)
    key = Ed25519PrivateKey.generate()
    scheduler = Process(
        [
            sys.executable,
            "-m",
            "dispatchlet",
            "scheduler",
            "--db",
            str(folder / "calls.db"),
            "--port",
            "0",
            "--backoff",
            "600",
            "--backoff-cap",
            "600",
        ],
        environment(DISPATCH_SIGNING_KEY=private_key_base64(key), DISPATCH_API_KEY=API_KEY),
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


def waited(setup: Setup, dispatch_id: str, *, attempts_seen: int | None = None) -> Any:
    """The call as ``calls show --json`` tells it once it is done (or, with
    ``attempts_seen``, once an attempt after those has failed and it waits to retry)."""
    deadline = time.monotonic() + WAIT
    while True:
        shown = setup.run("calls", "show", dispatch_id, "--json")
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        if info["done"] or (
            attempts_seen is not None
            and info["state"] == "ready"
            and info["attempts"] > attempts_seen
            and info["error"] is not None
        ):
            return info
        assert time.monotonic() < deadline, f"not there within {WAIT} s: {info}"
        with Client(setup.env["DISPATCH_API_URL"], API_KEY) as client:
            client.wait(dispatch_id, timeout=5)


@pytest.mark.slow
def test_calls_retry_runs_a_failed_call_again_long_before_its_backoff(
    long_backoff: Setup,
) -> None:
    dispatched = long_backoff.run("dispatch", "flaky", "retried")
    assert dispatched.returncode == 0, dispatched.stderr
    dispatch_id = dispatched.stdout.strip()
    failed = waited(long_backoff, dispatch_id, attempts_seen=0)
    assert failed["error"]["type"] == "ConnectionError"
    assert (long_backoff.cwd / "retried.tries").read_text() == "x"

    retried = long_backoff.run("calls", "retry", dispatch_id)
    assert (retried.returncode, retried.stdout) == (0, "retrying now\n"), retried.stderr
    done = waited(long_backoff, dispatch_id)
    # The backoff was 5 to 10 minutes; the test's whole bound is one.
    assert (done["status"], done["output"]) == ("OK", "fine after 2 tries")
    assert (long_backoff.cwd / "retried.tries").read_text() == "xx"

    again = long_backoff.run("calls", "retry", dispatch_id)
    assert again.returncode == 2
    assert "failed_precondition: the call is done" in again.stderr


@pytest.mark.slow
def test_calls_rerun_of_a_failed_call_runs_a_new_call_linked_to_it(long_backoff: Setup) -> None:
    dispatched = long_backoff.run("dispatch", "broken_once", "rerun")
    assert dispatched.returncode == 0, dispatched.stderr
    old = dispatched.stdout.strip()
    failed = waited(long_backoff, old)
    assert (failed["status"], failed["error"]["type"]) == ("INVALID_ARGUMENT", "ValueError")

    rerun = long_backoff.run("calls", "rerun", old)
    assert rerun.returncode == 0, rerun.stderr
    new = rerun.stdout.strip()
    assert new != old
    done = waited(long_backoff, new)
    assert (done["status"], done["output"], done["rerun_of"]) == ("OK", "fixed", old)
    assert (done["function"], done["input"]) == ("broken_once", "rerun")
    assert (long_backoff.cwd / "rerun.tries").read_text() == "xx"
    listed = long_backoff.run("calls", "list", "--rerun-of", old, "--json")
    assert [json.loads(line)["dispatch_id"] for line in listed.stdout.splitlines()] == [new]
