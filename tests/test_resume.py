"""Resuming a failed workflow from where it failed (``CallService.Resume``): through the
API in both codecs with a real workflow run in process (``Endpoint.run``), the client
and the command line; the refusals. Real processes: test_resume_processes.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dispatchlet import Client, Endpoint, PermanentError, receive
from dispatchlet.cli.main import main
from dispatchlet.client import ClientError
from dispatchlet.core import values
from dispatchlet.core.dispatching import API_KEY_ENV, API_URL_ENV, REQUEST_ID_HEADER
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.store import CallPolicy, NewCall
from dispatchlet.scheduler.store.limits import Limits
from scheduler_harness import API_KEY, Harness, call, harness, raised, returned

CALLS = "/dispatchlet.scheduler.v1.CallService/"
WAIT = 60.0


class Workflows:
    """An endpoint with a four-step workflow whose third step fails (a permanent error)
    while ``broken``, and a plain function; ``runs`` counts each step's runs."""

    def __init__(self) -> None:
        self.runs: Counter[int] = Counter()
        self.broken = True
        self.endpoint = Endpoint(insecure=True)

        @self.endpoint.function
        def step(n: int) -> int:
            self.runs[n] += 1
            if n % 10 == 3 and self.broken:
                raise PermanentError("step 3 is broken")
            return n * 10

        @self.endpoint.function
        async def four_steps(start: int) -> list[int]:
            return [await step(start + i) for i in range(4)]

        @self.endpoint.function
        async def fails_after_two(start: int) -> int:
            total = await step(start) + await step(start + 1)
            if self.broken:
                raise ValueError("the workflow's own code is broken")
            return total

        @self.endpoint.function
        async def collects(start: int) -> list[str]:
            first = await receive("item")
            await step(start + 2)
            return [first, await receive("item"), await receive("item")]

        @self.endpoint.function
        def plain(n: int) -> int:
            raise PermanentError("plain is broken")

    def answer(self, endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        return Outcome(Status.OK, self.endpoint.run(request))


async def post_json(h: Harness, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, answer = await h.post(
        CALLS + method, json.dumps(body).encode(), content_type="application/json"
    )
    return status, json.loads(answer)


def output(found: Any) -> Any:
    """A stored call's output, decoded."""
    return values.from_any(call_pb2.CallResult.FromString(found.result).output)


def test_a_resumed_workflow_runs_its_failed_step_again_and_not_the_ones_before(
    tmp_path: Path,
) -> None:
    app = Workflows()

    async def scenario() -> None:
        async with harness(tmp_path, app.answer) as h:
            (old,) = await h.dispatch(call("four_steps", 1, expiration={"seconds": 7200}))
            failed = await h.done(old, WAIT)
            assert failed.status == Status.PERMANENT_ERROR.value
            assert dict(app.runs) == {1: 1, 2: 1, 3: 1}

            app.broken = False  # the step is fixed
            status, answer = await post_json(h, "Resume", {"dispatchId": old})
            assert status == 200, answer
            new = answer["dispatchId"]
            assert (answer["stepsKept"], answer["stepsRetried"]) == (2, 1)
            resumed = await h.done(new, WAIT)
            assert resumed.status == Status.OK.value, resumed.result
            assert output(resumed) == [10, 20, 30, 40]
            # Steps 1 and 2 ran once in all; step 3 twice.
            assert dict(app.runs) == {1: 1, 2: 1, 3: 2, 4: 1}
            # A new root call linked to the old one, given as long, which is as it was.
            assert (resumed.function, resumed.input) == (failed.function, failed.input)
            assert (resumed.parent_id, resumed.root_id, resumed.rerun_of) == (None, new, old)
            # Given as long as the old call had from its first attempt's start.
            first = (await h.store.history(old)).attempts[0]
            assert first.number == 1
            span = resumed.expires_at - resumed.created_at
            assert span == pytest.approx(failed.expires_at - first.started_at)
            assert 7100 < span <= 7200, span
            assert await h.store.get(old) == failed
            # Its children are the steps it ran: 3 and 4.
            steps = await h.store.list(parent_id=new)
            assert [c.correlation_id for c in steps] == [3, 4]

    asyncio.run(scenario())


def test_a_workflow_that_failed_in_its_own_code_resumes_from_its_last_results(
    tmp_path: Path,
) -> None:
    app = Workflows()

    async def scenario() -> None:
        async with harness(tmp_path, app.answer) as h:
            (old,) = await h.dispatch(call("fails_after_two", 1))
            failed = await h.done(old, WAIT)
            assert failed.status != Status.OK.value
            app.broken = False
            answer = await h.rpc(
                CALLS + "Resume", calls_pb2.ResumeRequest(dispatch_id=old), calls_pb2.ResumeResponse
            )
            assert (answer.steps_kept, answer.steps_retried) == (2, 0)
            resumed = await h.done(answer.dispatch_id, WAIT)
            assert (resumed.status, output(resumed)) == (Status.OK.value, 30)
            assert dict(app.runs) == {1: 1, 2: 1}

    asyncio.run(scenario())


def test_messages_the_failed_workflow_had_not_received_go_to_the_resumed_one(
    tmp_path: Path,
) -> None:
    app = Workflows()

    async def scenario() -> None:
        async with harness(tmp_path, app.answer) as h:
            client = Client(h.url, API_KEY)
            now = time.time()
            # Stored to start in an hour: the three messages are all sent before it runs.
            later = NewCall(
                function="collects",
                endpoint=call("collects").endpoint,
                input=call("collects", 1).input.SerializeToString(),
                ready_at=now + 3600,
                expires_at=now + 7200,
            )
            (old,) = await h.store.dispatch([later], now=now)
            for item in ("a", "b", "c"):
                assert await asyncio.to_thread(client.send, old, "item", item) is False
            assert await asyncio.to_thread(client.retry, old)
            # It took "a", then its step 3 failed: "b" and "c" were never received.
            failed = await h.done(old, WAIT)
            assert failed.status == Status.PERMANENT_ERROR.value
            app.broken = False
            new = str(await asyncio.to_thread(client.resume, old))
            resumed = await h.done(new, WAIT)
            assert resumed.status == Status.OK.value, resumed.result
            assert output(resumed) == ["a", "b", "c"]
            assert dict(app.runs) == {3: 2}
            # The failed call is done: a message to it is still refused.
            with pytest.raises(ClientError) as refused:
                await asyncio.to_thread(client.send, old, "item", "d")
            assert refused.value.code == "failed_precondition"

    asyncio.run(scenario())


def test_resume_with_a_request_id_is_idempotent(tmp_path: Path) -> None:
    app = Workflows()

    async def scenario() -> None:
        async with harness(tmp_path, app.answer) as h:
            (old,) = await h.dispatch(call("four_steps", 1))
            await h.done(old, WAIT)
            app.broken = False
            body = calls_pb2.ResumeRequest(dispatch_id=old).SerializeToString()
            ids = []
            for _ in range(2):
                async with h.session.post(
                    h.url + CALLS + "Resume",
                    data=body,
                    headers={
                        "Content-Type": "application/proto",
                        "Authorization": f"Bearer {API_KEY}",
                        REQUEST_ID_HEADER: "resume-once",
                    },
                ) as answer:
                    assert answer.status == 200
                    read = calls_pb2.ResumeResponse.FromString(await answer.read())
                    ids.append(read.dispatch_id)
            assert ids[0] == ids[1]
            assert [c.dispatch_id for c in await h.store.list(rerun_of=old)] == ids[:1]
            await h.done(ids[0], WAIT)
            assert app.runs[3] == 2

    asyncio.run(scenario())


def test_resume_refuses_what_is_no_failed_workflow(tmp_path: Path) -> None:
    app = Workflows()
    app.broken = False

    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        if request.function == "hangs":
            raise AssertionError("not run: the engine is stopped")
        if request.function == "fails":
            return raised("ValueError", "bad input", Status.INVALID_ARGUMENT)
        if request.function == "fine":
            return returned("fine")
        return app.answer(endpoint, request)

    async def scenario() -> None:
        async with harness(tmp_path, answer) as h:
            ok_workflow, plain, fine = await h.dispatch(
                call("four_steps", 1), call("fails"), call("fine")
            )
            for done in (ok_workflow, plain, fine):
                await h.done(done, WAIT)
            h.engine.stop()
            (pending,) = await h.dispatch(call("hangs"))
            expected = [
                (ok_workflow, "failed_precondition", "the call ended OK"),
                (fine, "failed_precondition", "the call ended OK"),
                (plain, "failed_precondition", "kept no workflow journal"),
                (pending, "failed_precondition", "the call is ready"),
                ("0" * 32, "not_found", "no call"),
            ]
            for dispatch_id, code, said in expected:
                status, refused = await post_json(h, "Resume", {"dispatchId": dispatch_id})
                assert (status, refused["code"]) == (
                    404 if code == "not_found" else 400,
                    code,
                ), refused
                assert said in refused["message"], refused
            status, refused = await post_json(h, "Resume", {})
            assert (status, refused["code"]) == (400, "invalid_argument")
            # Nothing was made.
            for dispatch_id, _, _ in expected:
                assert await h.store.list(rerun_of=dispatch_id) == []

    asyncio.run(scenario())


def test_the_client_and_the_command_line_resume(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = Workflows()

    async def scenario() -> None:
        async with harness(tmp_path, app.answer) as h:
            monkeypatch.setenv(API_URL_ENV, h.url)
            monkeypatch.setenv(API_KEY_ENV, API_KEY)
            by_client, by_command = await h.dispatch(call("four_steps", 1), call("four_steps", 11))
            for dispatch_id in (by_client, by_command):
                await h.done(dispatch_id, WAIT)
            app.broken = False
            with Client(h.url, API_KEY) as client:
                new = await asyncio.to_thread(client.resume, by_client)
                assert (new.steps_kept, new.steps_retried) == (2, 1)
                await h.done(new, WAIT)
                info = await asyncio.to_thread(client.get, new)
                assert (info.rerun_of, info.status, info.output) == (
                    by_client,
                    Status.OK,
                    [10, 20, 30, 40],
                )
                with pytest.raises(ClientError) as refused:
                    await asyncio.to_thread(client.resume, new)
                assert refused.value.code == "failed_precondition"
                assert "the call ended OK" in refused.value.message

            capsys.readouterr()
            assert await asyncio.to_thread(main, ["calls", "resume", by_command]) == 0
            printed = capsys.readouterr()
            resumed = printed.out.strip()
            assert "resumed with 2 step(s) kept, 1 to run again" in printed.err
            assert (await h.done(resumed, WAIT)).rerun_of == by_command
            assert dict(app.runs) == {1: 1, 2: 1, 3: 2, 4: 1, 11: 1, 12: 1, 13: 2, 14: 1}

            # Refused: a clear message and a failing exit code, no traceback.
            assert await asyncio.to_thread(main, ["calls", "resume", resumed]) == 2
            err = capsys.readouterr().err
            assert "failed_precondition: the call ended OK" in err
            assert "Traceback" not in err
            assert await asyncio.to_thread(main, ["calls", "resume", "0" * 32]) == 2
            assert "not_found: no call" in capsys.readouterr().err

    asyncio.run(scenario())


def test_a_resume_that_fails_again_can_be_resumed_in_turn(tmp_path: Path) -> None:
    app = Workflows()

    async def scenario() -> None:
        async with harness(tmp_path, app.answer) as h:
            (first,) = await h.dispatch(call("four_steps", 1))
            await h.done(first, WAIT)
            status, answer = await post_json(h, "Resume", {"dispatchId": first})
            assert status == 200, answer
            second = answer["dispatchId"]
            # Not fixed yet: the resume fails at the same step, having kept the others.
            assert (await h.done(second, WAIT)).status == Status.PERMANENT_ERROR.value
            assert dict(app.runs) == {1: 1, 2: 1, 3: 2}
            app.broken = False
            status, answer = await post_json(h, "Resume", {"dispatchId": second})
            assert (status, answer["stepsKept"], answer["stepsRetried"]) == (200, 2, 1)
            third = await h.done(answer["dispatchId"], WAIT)
            assert (third.status, third.rerun_of) == (Status.OK.value, second)
            assert output(third) == [10, 20, 30, 40]
            assert dict(app.runs) == {1: 1, 2: 1, 3: 3, 4: 1}

    asyncio.run(scenario())


def test_a_resumed_workflow_keeps_its_policy_limits_trace_and_time_to_run(
    tmp_path: Path,
) -> None:
    """A delayed workflow with its own policy, limits and trace context fails; the call
    that resumes it has them all, and as long to run as the old one had from its start
    (not its delay too)."""
    app = Workflows()
    policy = CallPolicy(max_attempts=2, attempt_timeout=30.0)
    limits = Limits(concurrency=4, key="customer-17", per_key=1, rate_count=100, rate_period=60.0)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def scenario() -> None:
        async with harness(tmp_path, app.answer) as h:
            now = time.time()
            delayed = NewCall(
                function="four_steps",
                endpoint=call("four_steps").endpoint,
                input=call("four_steps", 1).input.SerializeToString(),
                ready_at=now + 1,
                expires_at=now + 1 + 7200,
                trace_context=trace,
                policy=policy,
                limits=limits,
            )
            (old,) = await h.store.dispatch([delayed], now=now)
            failed = await h.done(old, WAIT)
            assert failed.status == Status.PERMANENT_ERROR.value
            app.broken = False
            status, answer = await post_json(h, "Resume", {"dispatchId": old})
            assert status == 200, answer
            resumed = await h.done(answer["dispatchId"], WAIT)
            assert resumed.status == Status.OK.value, resumed.result
            assert (resumed.policy, resumed.limits, resumed.trace_context) == (
                policy,
                limits,
                trace,
            )
            # Its time to run counts from the old call's start, a second after its
            # creation: at most the 7200 s it was given, not its delay more.
            span = resumed.expires_at - resumed.created_at
            assert 7100 < span <= 7200, span

    asyncio.run(scenario())
