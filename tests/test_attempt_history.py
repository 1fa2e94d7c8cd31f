"""Each call's attempt history: what the engine records of every attempt (in the same
store call as the outcome), what Get and Wait answer with, the client's ``CallInfo``
and ``dispatchlet calls show``."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Client
from dispatchlet.cli.call_views import as_dict, describe
from dispatchlet.client import AttemptInfo, CallError, CallInfo
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.server import serve
from dispatchlet.scheduler.settings import Settings
from dispatchlet.scheduler.store import AttemptHistory
from google.protobuf import any_pb2
from scheduler_harness import API_KEY, harness, raised, returned
from scheduler_harness import call as harness_call
from test_dev_loop import closed_port
from test_engine_memory import (
    BOUND,
    OTHER,
    POLICY,
    answered,
    hanging,
    in_turn,
    poll_on,
    returning,
    returning_response,
    running,
    scenario,
)
from test_poison_calls import RefusingStore, dispatched
from test_poison_calls import done as poison_done
from test_poison_calls import running as poison_engine

FAILED = Outcome(Status.TEMPORARY_ERROR, error_type="HTTPError", message="503 Service Unavailable")


def summary(history: AttemptHistory) -> list[tuple[int, str, Status, str]]:
    return [(a.number, a.function, Status(a.status), a.error_type) for a in history.attempts]


# --- what the engine records ------------------------------------------------------------


def test_a_call_retried_twice_then_ok_has_its_three_attempts() -> None:
    async def body() -> None:
        answers = {"f": in_turn(FAILED, FAILED, answered(returning_response(b"ok")))}
        async with running(answers) as run:
            before = run.engine.clock()
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            history = await run.store.history(dispatch_id)
            assert done.status == Status.OK
            assert summary(history) == [
                (1, "f", Status.TEMPORARY_ERROR, "HTTPError"),
                (2, "f", Status.TEMPORARY_ERROR, "HTTPError"),
                (3, "f", Status.OK, ""),
            ]
            assert history.total == 3
            assert [a.error_message for a in history.attempts] == [
                "503 Service Unavailable",
                "503 Service Unavailable",
                "",
            ]
            # In the order they ran, each after its backoff, none before the dispatch.
            starts = [a.started_at for a in history.attempts]
            assert before <= starts[0] < starts[1] < starts[2] <= done.finished_at  # type: ignore[operator]
            assert all(a.duration >= 0 for a in history.attempts)

    scenario(body)


def test_the_error_an_endpoint_answered_is_recorded_with_its_status() -> None:
    async def body() -> None:
        response = function_pb2.RunResponse(status=Status.PERMANENT_ERROR.value)
        response.exit.result.error.type = "ValueError"
        response.exit.result.error.message = "x" * 5000  # cut to 1 KiB
        async with running({"f": in_turn(answered(response))}) as run:
            dispatch_id = await run.dispatch("f")
            await run.done(dispatch_id)
            (attempt,) = (await run.store.history(dispatch_id)).attempts
            assert (Status(attempt.status), attempt.error_type) == (
                Status.PERMANENT_ERROR,
                "ValueError",
            )
            assert attempt.error_message == "x" * 1024

    scenario(body)


def test_a_tail_call_shows_both_functions() -> None:
    tail = function_pb2.RunResponse(status=Status.OK.value)
    tail.exit.tail_call.function = "g"
    tail.exit.tail_call.endpoint = OTHER
    tail.exit.tail_call.input.CopyFrom(any_pb2.Any(type_url="test/bytes", value=b"in"))

    async def body() -> None:
        answers = {"f": in_turn(answered(tail)), "g": in_turn(FAILED, FAILED, FAILED, FAILED)}
        async with running(answers, policy=RetryPolicy(base=0.01, cap=0.02, max_attempts=2)) as run:
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            assert (done.function, done.status) == ("g", Status.TEMPORARY_ERROR)
            history = await run.store.history(dispatch_id)
            # The chain: f handed over to g, whose attempts count afresh (max 2).
            assert summary(history) == [
                (1, "f", Status.OK, ""),
                (2, "g", Status.TEMPORARY_ERROR, "HTTPError"),
                (3, "g", Status.TEMPORARY_ERROR, "HTTPError"),
            ]
            assert history.total == 3

    scenario(body)


def test_the_history_keeps_the_latest_attempts_and_counts_them_all() -> None:
    async def body() -> None:
        async with running({"f": in_turn(FAILED)}, attempt_history=2) as run:
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            assert done.attempts == POLICY.max_attempts == 5
            history = await run.store.history(dispatch_id)
            assert [a.number for a in history.attempts] == [4, 5]
            assert history.total == 5

    scenario(body)


def test_no_history_is_recorded_when_it_is_off() -> None:
    async def body() -> None:
        async with running(
            {"f": in_turn(FAILED, answered(returning_response(b"ok")))}, attempt_history=0
        ) as run:
            dispatch_id = await run.dispatch("f")
            assert (await run.done(dispatch_id)).status == Status.OK
            assert await run.store.history(dispatch_id) == AttemptHistory((), 0)

    scenario(body)


def test_a_suspension_and_its_resume_are_attempts_of_the_call() -> None:
    async def body() -> None:
        polled = [False]

        async def workflow(request: function_pb2.RunRequest) -> Outcome:
            if not polled[0]:
                polled[0] = True
                return poll_on("child", min_results=1)
            return await returning(b"resumed")(request)

        answers = {"w": workflow, "child": returning(b"child")}
        async with running(answers) as run:
            dispatch_id = await run.dispatch("w")
            assert (await run.done(dispatch_id)).status == Status.OK
            history = await run.store.history(dispatch_id)
            assert summary(history) == [(1, "w", Status.OK, ""), (2, "w", Status.OK, "")]

    scenario(body)


def test_the_late_answer_of_a_stale_lease_adds_no_attempt() -> None:
    async def body() -> None:
        released = asyncio.Event()
        async with running({"f": hanging(released)}) as run:
            dispatch_id = await run.dispatch("f")
            deadline = time.monotonic() + BOUND
            while not run.caller.of(dispatch_id):
                assert time.monotonic() < deadline, "the attempt never started"
                await asyncio.sleep(0.01)
            # Cancelled while its attempt runs: that attempt's lease is fenced off.
            await run.store.cancel(
                dispatch_id, Status.PERMANENT_ERROR.value, b"", now=run.engine.clock()
            )
            released.set()
            while run.engine.in_flight:
                assert time.monotonic() < deadline, "the attempt never ended"
                await asyncio.sleep(0.01)
            cancelled = await run.store.get(dispatch_id)
            assert cancelled is not None
            assert cancelled.status == Status.PERMANENT_ERROR
            assert await run.store.history(dispatch_id) == AttemptHistory((), 0)

    scenario(body)


def test_attempts_whose_outcome_could_not_be_stored_are_in_the_history() -> None:
    """A poison call: each run's outcome is refused by the store, recorded as a failure
    of its own (with the retry, then the end, that it led to)."""

    async def body() -> None:
        store = RefusingStore()
        async with poison_engine(store) as engine:
            dispatch_id = await dispatched(store, engine, "poison")
            await poison_done(store, engine, dispatch_id)
            history = await store.history(dispatch_id)
            assert summary(history) == [
                (1, "poison", Status.TEMPORARY_ERROR, "OutcomeNotStored"),
                (2, "poison", Status.TEMPORARY_ERROR, "OutcomeNotStored"),
                (3, "poison", Status.PERMANENT_ERROR, "OutcomeNotStored"),
            ]
            assert history.attempts[0].error_message == (
                "its outcome could not be stored: ValueError: value out of range for this column"
            )

    scenario(body)


# --- Get, Wait, the client, calls show ----------------------------------------------------

CALLS = "/dispatchlet.scheduler.v1.CallService/"


def test_get_and_wait_carry_the_history_and_the_client_reads_it(tmp_path: Path) -> None:
    answers = iter(
        [
            raised("ConnectionError", "refused", Status.TCP_ERROR),
            returned("done"),
        ]
    )

    async def body() -> None:
        async with harness(tmp_path, lambda endpoint, request: next(answers)) as h:
            (dispatch_id,) = await h.dispatch(harness_call("f", 1))
            await h.done(dispatch_id)
            for name, kind, request in (
                ("Get", calls_pb2.GetResponse, calls_pb2.GetRequest(dispatch_id=dispatch_id)),
                ("Wait", calls_pb2.WaitResponse, calls_pb2.WaitRequest(dispatch_id=dispatch_id)),
            ):
                info = (await h.rpc(CALLS + name, request, kind)).call
                assert info.attempts_total == 2, name
                assert [(a.number, a.function, a.status, a.error_type) for a in info.history] == [
                    (1, "f", Status.TCP_ERROR.value, "ConnectionError"),
                    (2, "f", Status.OK.value, ""),
                ], name
                assert info.history[0].error_message == "refused"
                status, answer = await h.post(
                    CALLS + name,
                    json.dumps({"dispatchId": dispatch_id}).encode(),
                    content_type="application/json",
                )
                assert status == 200, answer
                shown = json.loads(answer)["call"]
                assert shown["attemptsTotal"] == "2", shown
                assert [a["status"] for a in shown["history"]] == ["STATUS_TCP_ERROR", "STATUS_OK"]
            # List gives summaries: no history.
            listed = await h.rpc(CALLS + "List", calls_pb2.ListRequest(), calls_pb2.ListResponse)
            assert [(len(c.history), c.attempts_total) for c in listed.calls] == [(0, 0)]

            def read() -> CallInfo:
                with Client(h.url, API_KEY) as client:
                    return client.get(dispatch_id)

            info = await asyncio.to_thread(read)
            assert info.attempts_total == 2
            first, second = info.attempts_history
            assert (first.number, first.function, first.status) == (1, "f", Status.TCP_ERROR)
            assert first.error == CallError("ConnectionError", "refused")
            assert (second.status, second.error) == (Status.OK, None)
            assert first.started_at.tzinfo is datetime.timezone.utc
            assert first.started_at <= second.started_at <= info.finished_at  # type: ignore[operator]
            assert first.duration >= datetime.timedelta(0)

    asyncio.run(asyncio.wait_for(body(), 2 * BOUND))


def _shown_call(history: tuple[AttemptInfo, ...], total: int) -> CallInfo:
    at = datetime.datetime(2026, 12, 5, 14, 50, 20, tzinfo=datetime.timezone.utc)
    return CallInfo(
        dispatch_id="d1",
        function="g",
        endpoint="http://e.test",
        status=Status.OK,
        done=True,
        output="out",
        error=None,
        attempts=1,
        parent_dispatch_id="",
        root_dispatch_id="d1",
        created_at=at,
        finished_at=at,
        expires_at=at,
        state="done",
        attempts_history=history,
        attempts_total=total,
    )


def test_calls_show_prints_the_history_as_a_table_and_in_json() -> None:
    at = datetime.datetime(2026, 12, 5, 14, 50, 20, tzinfo=datetime.timezone.utc)
    history = (
        AttemptInfo(
            4,
            "f",
            at,
            datetime.timedelta(milliseconds=250),
            Status.TIMEOUT,
            CallError("Timeout", "no answer\nin time"),
        ),
        AttemptInfo(5, "g", at, datetime.timedelta(seconds=1.5), Status.OK, None),
    )
    lines = describe(_shown_call(history, 5))
    start = lines.index("history      5 attempt(s), the latest 2 kept")
    assert lines[start + 1].split() == ["#", "STARTED", "DURATION", "STATUS", "FUNCTION", "ERROR"]
    assert lines[start + 2].split() == [
        "4",
        "2026-12-05T14:50:20Z",
        "250ms",
        "TIMEOUT",
        "f",
        "Timeout:",
        "no",
        "answer",
        "in",
        "time",
    ]
    assert lines[start + 3].split() == ["5", "2026-12-05T14:50:20Z", "1.5s", "OK", "g"]

    shown = as_dict(_shown_call(history, 5), history=True)
    assert shown["attempts_total"] == 5
    assert shown["attempts_history"][0] == {
        "number": 4,
        "function": "f",
        "started_at": "2026-12-05T14:50:20+00:00",
        "duration_seconds": 0.25,
        "status": "TIMEOUT",
        "error": {"type": "Timeout", "message": "no answer\nin time"},
    }
    assert shown["attempts_history"][1]["error"] is None
    # Nothing recorded (history off): no table.
    assert not any(line.startswith("history") for line in describe(_shown_call((), 0)))


def test_calls_show_reads_the_history_from_the_scheduler(tmp_path: Path) -> None:
    answers = iter([raised("KeyError", "'x'", Status.PERMANENT_ERROR)])

    async def body() -> None:
        async with harness(tmp_path, lambda endpoint, request: next(answers)) as h:
            (dispatch_id,) = await h.dispatch(harness_call("f", 1))
            await h.done(dispatch_id)
            env = {**os.environ, "DISPATCH_API_URL": h.url, "DISPATCH_API_KEY": API_KEY}
            outputs = []
            for extra in ((), ("--json",)):
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "dispatchlet",
                    "calls",
                    "show",
                    dispatch_id,
                    *extra,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(process.communicate(), BOUND)
                assert process.returncode == 0, err.decode()
                outputs.append(out.decode())
            text, as_json = outputs
            assert "history      1 attempt(s)\n" in text, text
            row = next(line for line in text.splitlines() if line.strip().startswith("1 "))
            assert row.split()[3:] == ["PERMANENT_ERROR", "f", "KeyError:", "'x'"], row
            (attempt,) = json.loads(as_json)["attempts_history"]
            assert (attempt["status"], attempt["error"]["type"]) == ("PERMANENT_ERROR", "KeyError")

    asyncio.run(asyncio.wait_for(body(), 2 * BOUND))


# --- the setting ------------------------------------------------------------------------


def test_the_attempt_history_flag_takes_a_count_and_refuses_anything_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from dispatchlet.cli import scheduler as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    assert (
        parser.parse_args(["scheduler"]).attempt_history == Settings(database="x").attempt_history
    )
    assert parser.parse_args(["scheduler", "--attempt-history", "0"]).attempt_history == 0
    for wrong, said in (("-1", "-1 is not in 0..10000"), ("many", "'many' is not a whole number")):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["scheduler", "--attempt-history", wrong])
        assert exited.value.code == 2
        assert said in capsys.readouterr().err


def test_the_scheduler_keeps_as_many_attempts_as_its_setting(tmp_path: Path) -> None:
    """The setting reaches the engine that ``serve`` runs: one attempt kept of three."""
    endpoint = f"http://127.0.0.1:{closed_port()}"  # each attempt: TCP_ERROR
    settings = Settings(
        database=str(tmp_path / "scheduler.db"),
        port=0,
        insecure=True,
        signing_key=Ed25519PrivateKey.generate(),
        policy=RetryPolicy(base=0.01, cap=0.02, max_attempts=3),
        attempt_history=1,
    )

    async def body() -> CallInfo:
        listening: asyncio.Future[list[tuple[str, int]]] = (
            asyncio.get_running_loop().create_future()
        )
        stop = asyncio.Event()
        server = asyncio.create_task(
            serve(settings, ready=listening.set_result, stop=stop, handle_signals=False)
        )
        try:
            host, port = (await asyncio.wait_for(listening, BOUND))[0]

            def wait_for_call() -> CallInfo:
                with Client(f"http://{host}:{port}", "") as client:
                    (dispatch_id,) = client.dispatch([harness_call("f", 1, endpoint=endpoint)])
                    return client.wait(dispatch_id, timeout=BOUND)

            return await asyncio.to_thread(wait_for_call)
        finally:
            stop.set()
            await asyncio.wait_for(server, BOUND)

    info = asyncio.run(asyncio.wait_for(body(), 2 * BOUND))
    assert (info.done, info.status, info.attempts) == (True, Status.TCP_ERROR, 3)
    assert info.attempts_total == 3
    (kept,) = info.attempts_history
    assert (kept.number, kept.status) == (3, Status.TCP_ERROR)


def test_the_dashboards_call_page_shows_the_attempts(tmp_path: Path) -> None:
    answers = iter([raised("ConnectionError", "<refused>", Status.TCP_ERROR), returned("done")])

    async def body() -> None:
        async with harness(tmp_path, lambda endpoint, request: next(answers)) as h:
            (dispatch_id,) = await h.dispatch(harness_call("f", 1))
            await h.done(dispatch_id)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with h.session.get(f"{h.url}/calls/{dispatch_id}", headers=headers) as page:
                assert page.status == 200
                shown = await page.text()
            table = shown[shown.index('id="attempts"') :]
            table = table[: table.index("</table>")]
            cells = re.findall(r'<td data-label="([^"]+)">([^<]*)</td>', table)
            assert [(name, text) for name, text in cells if name in ("#", "Status", "Error")] == [
                ("#", "1"),
                ("Status", "TCP_ERROR"),
                ("Error", "ConnectionError: &lt;refused&gt;"),
                ("#", "2"),
                ("Status", "OK"),
                ("Error", ""),
            ]

    asyncio.run(asyncio.wait_for(body(), 2 * BOUND))
