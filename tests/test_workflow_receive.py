"""receive(topic) in a workflow, replayed from its journal with no I/O: the step it
records, the call its Poll sends the scheduler, the message or the timeout it resumes
with, and its place among gather, race and sleep on every replay."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from dispatchlet import Endpoint, Status, StepMismatch, gather, race, receive, sleep
from dispatchlet.core import replay
from dispatchlet.core.call_options import call_options
from dispatchlet.core.messages import RECEIVE_FUNCTION, RECEIVE_TIMEOUT
from dispatchlet.core.value_views import read_journal
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, error_pb2, function_pb2, poll_pb2
from dispatchlet.proto.dispatchlet.workflow.v1 import journal_pb2
from dispatchlet.testing import NO_MESSAGE, run_workflow
from test_workflow import ok, output, resume, start


def timed_out(correlation_id: int, topic: str) -> call_pb2.CallResult:
    error = error_pb2.Error(type=RECEIVE_TIMEOUT, message=f"no message on the topic {topic!r}")
    return call_pb2.CallResult(correlation_id=correlation_id, error=error)


@pytest.fixture
def endpoint() -> Endpoint:
    endpoint = Endpoint(insecure=True)

    @endpoint.function
    def double(x: int) -> int:
        return 2 * x

    @endpoint.function
    async def approve(order: str) -> dict[str, Any]:
        decision = await receive("approval", timeout=timedelta(days=3))
        return {"order": order, "decision": decision}

    @endpoint.function
    async def patient() -> str:
        try:
            await receive("approval", timeout=30)
        except TimeoutError as exc:
            return f"caught: {exc}"
        return "received"

    @endpoint.function
    async def first_of(seconds: float) -> object:
        return await race(receive("go"), sleep(seconds))

    @endpoint.function
    async def both() -> list[object]:
        return list(await gather(receive("a"), double(21), receive("b")))

    return endpoint


def poll_of(response: function_pb2.RunResponse) -> poll_pb2.Poll:
    assert response.WhichOneof("directive") == "poll", response
    return response.poll


def journal_of(poll: poll_pb2.Poll) -> journal_pb2.Journal:
    return journal_pb2.Journal.FromString(poll.typed_coroutine_state.value)


def test_a_receive_is_a_step_and_a_call_no_endpoint_runs(endpoint: Endpoint) -> None:
    poll = poll_of(endpoint.run(start("approve", "o-17")))
    (sent,) = poll.calls
    assert (sent.function, sent.endpoint, sent.correlation_id) == (RECEIVE_FUNCTION, "", 1)
    assert call_options(sent).receive_topic == "approval"
    assert sent.expiration.ToTimedelta() == timedelta(days=3)
    assert (poll.min_results, poll.max_results) == (1, 1000)
    (step,) = journal_of(poll).steps
    assert (step.kind, step.name, step.started, step.arrival) == (
        journal_pb2.Step.KIND_RECEIVE,
        "approval",
        True,
        0,
    )


def test_the_message_resumes_the_workflow_with_its_value(endpoint: Endpoint) -> None:
    poll = poll_of(endpoint.run(start("approve", "o-17")))
    # No result yet (the Poll's max_wait passed): it waits again, starting nothing new.
    again = poll_of(endpoint.run(resume("approve", poll, [])))
    assert list(again.calls) == []
    done = endpoint.run(resume("approve", again, [ok(1, {"ok": True})]))
    assert output(done) == {"order": "o-17", "decision": {"ok": True}}


def test_a_timeout_raises_a_timeout_error_the_workflow_may_catch(endpoint: Endpoint) -> None:
    poll = poll_of(endpoint.run(start("patient", None)))
    assert poll.calls[0].expiration.ToTimedelta() == timedelta(seconds=30)
    done = endpoint.run(resume("patient", poll, [timed_out(1, "approval")]))
    assert output(done) == "caught: no message on the topic 'approval'"


def test_an_uncaught_timeout_fails_the_workflow(endpoint: Endpoint) -> None:
    poll = poll_of(endpoint.run(start("approve", "o-17")))
    failed = endpoint.run(resume("approve", poll, [timed_out(1, "approval")]))
    assert failed.status != Status.OK.value
    assert failed.exit.result.error.type == "TimeoutError"


def test_race_with_a_sleep_is_decided_by_what_arrived_first(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    poll = poll_of(endpoint.run(start("first_of", 3600.0)))
    assert poll.min_results == 1  # back at the first outcome
    assert poll.max_wait.ToTimedelta() <= timedelta(hours=1)
    # The message first: the race's value.
    won = endpoint.run(resume("first_of", poll, [ok(1, "now")]))
    assert output(won) == "now"
    # The timer first (the hour passed with no message): None.
    later = time.time_ns() + 3601 * 10**9
    monkeypatch.setattr(replay, "clock", lambda: later)
    assert output(endpoint.run(resume("first_of", poll, []))) is None


def test_receives_compose_with_calls_in_gather(endpoint: Endpoint) -> None:
    poll = poll_of(endpoint.run(start("both", None)))
    assert [(c.function, call_options(c).receive_topic) for c in poll.calls] == [
        (RECEIVE_FUNCTION, "a"),
        ("double", ""),
        (RECEIVE_FUNCTION, "b"),
    ]
    assert poll.min_results == 3
    # Results in any order: the gather is in the order of the code.
    done = endpoint.run(resume("both", poll, [ok(3, "B"), ok(2, 42), ok(1, "A")]))
    assert output(done) == ["A", 42, "B"]


def test_a_replay_that_makes_another_step_in_a_receives_slot_is_a_mismatch(
    endpoint: Endpoint,
) -> None:
    poll = poll_of(endpoint.run(start("approve", "o-17")))
    journal = journal_of(poll)
    journal.function = "both"
    journal.ClearField("input")
    journal.steps[0].name = "a"
    journal.steps[0].kind = journal_pb2.Step.KIND_CALL
    changed = poll_pb2.Poll()
    changed.typed_coroutine_state.type_url = poll.typed_coroutine_state.type_url
    changed.typed_coroutine_state.value = journal.SerializeToString()
    mismatched = endpoint.run(resume("both", changed, []))
    assert mismatched.exit.result.error.type.endswith(StepMismatch.__name__)
    assert "the code now makes receive('a')" in mismatched.exit.result.error.message


def test_a_bad_topic_or_timeout_is_refused_where_the_receive_is_made() -> None:
    endpoint = Endpoint(insecure=True)

    @endpoint.function
    async def bad(spec: list[Any]) -> None:
        topic, timeout = spec
        await receive(topic, timeout=timeout)

    for topic, timeout, problem in (
        ("", 5.0, "an empty topic"),
        ("x" * 257, 5.0, "longer than 256"),
        ("ok", 0.0, "a positive timeout"),
        ("ok", float("nan"), "a positive timeout"),
    ):
        answer = endpoint.run(start("bad", [topic, timeout]))
        assert answer.exit.result.error.type == "ValueError", answer
        assert problem in answer.exit.result.error.message


def test_a_journal_shows_each_receive_waiting_received_or_timed_out(endpoint: Endpoint) -> None:
    poll = poll_of(endpoint.run(start("both", None)))
    waiting = read_journal(poll.typed_coroutine_state)
    assert waiting is not None
    assert [(s["kind"], s.get("topic"), s["state"]) for s in waiting["steps"]] == [
        ("receive", "a", "waiting"),
        ("call", None, "pending"),
        ("receive", "b", "waiting"),
    ]
    journal = journal_of(poll)
    journal.steps[0].result.CopyFrom(ok(1, "A"))
    journal.steps[0].arrival = 1
    journal.steps[2].result.CopyFrom(timed_out(3, "b"))
    journal.steps[2].arrival = 2
    poll.typed_coroutine_state.value = journal.SerializeToString()
    shown = read_journal(poll.typed_coroutine_state)
    assert shown is not None
    assert [(s.get("topic"), s["state"], s.get("output")) for s in shown["steps"]] == [
        ("a", "received", "A"),
        (None, "pending", None),
        ("b", "timed out", None),
    ]


# --- dispatchlet.testing.run_workflow plays the sender --------------------------------


def test_run_workflow_gives_receives_the_messages_by_topic_in_order(endpoint: Endpoint) -> None:
    @endpoint.function
    async def collect() -> list[object]:
        first = await receive("item")
        return [first, *await gather(receive("item"), receive("other")), await receive("item")]

    given = {"item": ["a", "b", "c"], "other": [{"x": 1}]}
    run = run_workflow(endpoint, "collect", messages=given, results_per_resume=1)
    assert (run.status, run.output) == (Status.OK, ["a", "b", {"x": 1}, "c"])
    # The lists given are not consumed: each run takes its messages afresh.
    assert given == {"item": ["a", "b", "c"], "other": [{"x": 1}]}


def test_run_workflow_asks_a_function_for_each_message(endpoint: Endpoint) -> None:
    asked: list[str] = []

    def sender(topic: str) -> object:
        asked.append(topic)
        return {"ok": True} if len(asked) == 1 else NO_MESSAGE

    run = run_workflow(endpoint, "approve", "o-17", messages=sender)
    assert (run.status, run.output) == (Status.OK, {"order": "o-17", "decision": {"ok": True}})
    assert asked == ["approval"]
    patient = run_workflow(endpoint, "patient", messages=sender)
    assert (patient.status, patient.children) == (Status.OK, {1: Status.TIMEOUT})
    assert (
        patient.output == "caught: no message on the topic 'approval' before the receive's timeout"
    )


def test_run_workflow_moves_time_to_a_receives_timeout_or_a_sleep_it_races(
    endpoint: Endpoint,
) -> None:
    @endpoint.function
    async def reminders() -> list[object]:
        outcomes: list[object] = []
        for _ in range(3):
            try:
                outcomes.append(await receive("approval", timeout=timedelta(days=2)))
            except TimeoutError:
                outcomes.append("reminded")
        return outcomes

    run = run_workflow(endpoint, "reminders", messages={"approval": []})
    assert (run.status, run.output) == (Status.OK, ["reminded"] * 3)
    # A receive without a timeout, raced with a sleep of an hour: the sleep wins.
    raced = run_workflow(endpoint, "first_of", 3600.0)
    assert (raced.status, raced.output) == (Status.OK, None)


def test_run_workflow_says_which_message_a_stuck_workflow_waits_for(endpoint: Endpoint) -> None:
    @endpoint.function
    async def forever() -> object:
        return await receive("never-sent")

    with pytest.raises(RuntimeError, match="waits for a message on 'never-sent'"):
        run_workflow(endpoint, "forever", messages={"other": [1]})


def test_journals_with_receives_are_checked_against_the_code(endpoint: Endpoint) -> None:
    from dispatchlet.testing import check_replay

    run = run_workflow(endpoint, "both", messages={"a": ["A"], "b": ["B"]}, results_per_resume=1)
    assert (run.status, run.output) == (Status.OK, ["A", 42, "B"])
    assert run.journals
    for journal in run.journals:
        checked = check_replay(endpoint, journal)
        assert checked.ok, checked

    changed = Endpoint(insecure=True)

    @changed.function
    def double(x: int) -> int:
        return 2 * x

    @changed.function
    async def both() -> list[object]:  # its receives in another order
        return list(await gather(receive("b"), double(21), receive("a")))

    checked = check_replay(changed, run.journals[-1])
    assert not checked.ok
    assert "receive('b')" in checked.outcome, checked
