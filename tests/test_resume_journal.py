"""The journal a resumed workflow starts from (``scheduler/resume.py``): the steps that
finished OK kept, the results that came OK with the failing attempt added, the failed
step and any unfinished one made anew; states that are no dispatchlet journal refused."""

from __future__ import annotations

import pytest
from dispatchlet.core import values
from dispatchlet.core.journal import CALL, JOURNAL_TYPE_URL, SLEEP, new_journal
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, poll_pb2
from dispatchlet.proto.dispatchlet.workflow.v1 import journal_pb2
from dispatchlet.scheduler.resume import NotResumable, resumed_poll
from dispatchlet.scheduler.store import Child


def ok(value: object) -> call_pb2.CallResult:
    return call_pb2.CallResult(output=values.to_any(value))


def failed(kind: str = "ValueError") -> call_pb2.CallResult:
    result = call_pb2.CallResult()
    result.error.type = kind
    result.error.message = "it broke"
    return result


def journal_of(*steps: journal_pb2.Step) -> journal_pb2.Journal:
    journal = new_journal("wf", values.to_any("input"))
    for step in steps:
        journal.steps.add().CopyFrom(step)
    journal.arrivals = max((step.arrival for step in steps), default=0)
    return journal


def step(
    name: str, *, arrival: int = 0, result: call_pb2.CallResult | None = None
) -> journal_pb2.Step:
    made = journal_pb2.Step(kind=CALL, name=name, started=True, arrival=arrival)
    if result is not None:
        made.result.CopyFrom(result)
    return made


def stored(journal: journal_pb2.Journal) -> bytes:
    """The Poll the scheduler keeps of a workflow (its state and limits, no calls)."""
    poll = poll_pb2.Poll(min_results=1, max_results=10)
    poll.typed_coroutine_state.type_url = JOURNAL_TYPE_URL
    poll.typed_coroutine_state.value = journal.SerializeToString()
    return poll.SerializeToString()


def child(
    slot: int,
    result: call_pb2.CallResult | None,
    *,
    delivered: bool = True,
    finished_at: float = 1.0,
    name: str = "",
) -> Child:
    """The child made for ``slot``; ``result`` None: not done."""
    status = None
    if result is not None:
        status = Status.PERMANENT_ERROR.value if result.HasField("error") else Status.OK.value
    return Child(
        name or f"child-{slot}",
        slot + 1,
        result is not None,
        delivered and result is not None,
        status,
        b"" if result is None else result.SerializeToString(),
        finished_at if result is not None else None,
    )


def cut(poll: bytes, children: list[Child]) -> tuple[journal_pb2.Journal, int, int]:
    resumed = resumed_poll(poll, children)
    state = poll_pb2.Poll.FromString(resumed.poll).typed_coroutine_state
    assert state.type_url == JOURNAL_TYPE_URL
    return journal_pb2.Journal.FromString(state.value), resumed.kept, resumed.retried


def test_the_failed_step_is_made_anew_and_the_finished_ones_kept() -> None:
    # Steps 1 and 2 finished, step 3 was waited for when the workflow last suspended;
    # its error came with the attempt that failed.
    before = journal_of(
        step("one", arrival=1, result=ok(1)), step("two", arrival=2, result=ok(2)), step("three")
    )
    children = [child(0, ok(1)), child(1, ok(2)), child(2, failed())]
    journal, kept, retried = cut(stored(before), children)
    assert (kept, retried) == (2, 1)
    assert [s.name for s in journal.steps] == ["one", "two", "three"]
    assert journal.steps[0] == before.steps[0]
    assert journal.steps[1] == before.steps[1]
    third = journal.steps[2]
    assert (third.started, third.arrival, third.HasField("result")) == (False, 0, False)
    assert journal.arrivals == 2
    assert (journal.function, journal.input) == (before.function, before.input)


def test_results_that_came_ok_with_the_failing_attempt_are_kept_in_the_order_they_finished() -> (
    None
):
    # gather(a, b, c): c finished first, then b; a failed.
    before = journal_of(step("zero", arrival=1, result=ok(0)), step("a"), step("b"), step("c"))
    children = [
        child(1, failed(), finished_at=5.0),
        child(2, ok("b"), finished_at=4.0),
        child(3, ok("c"), finished_at=3.0),
    ]
    journal, kept, retried = cut(stored(before), children)
    assert (kept, retried) == (3, 1)
    a, b, c = journal.steps[1:]
    assert (a.started, a.arrival) == (False, 0)
    assert (c.arrival, b.arrival) == (2, 3)
    assert values.from_any(b.result.output) == "b"
    assert (b.result.correlation_id, b.result.dispatch_id) == (3, "child-2")
    assert journal.arrivals == 3


def test_a_workflow_that_failed_in_its_own_code_resumes_from_its_last_results() -> None:
    # Its last step came back OK and the code after it raised: nothing to make anew.
    before = journal_of(step("one", arrival=1, result=ok(1)), step("two"))
    journal, kept, retried = cut(stored(before), [child(0, ok(1)), child(1, ok(2))])
    assert (kept, retried) == (2, 0)
    assert journal.steps[1].arrival == 2
    assert values.from_any(journal.steps[1].result.output) == 2


def test_steps_left_unfinished_are_made_anew() -> None:
    # The workflow ended (expired, or a gather's first error) while these still ran, or
    # finished without their results reaching it.
    before = journal_of(step("a"), step("b"), step("c"))
    children = [child(0, failed()), child(1, None), child(2, ok(3), delivered=False)]
    journal, kept, retried = cut(stored(before), children)
    assert (kept, retried) == (0, 3)
    assert not any(s.started or s.arrival for s in journal.steps)


def test_after_a_restart_only_the_newest_child_of_a_slot_counts() -> None:
    # The run was restarted from its input: the old run's child of slot 0 was set aside
    # (delivered), the new run's has not finished.
    before = journal_of(step("a"))
    children = [child(0, ok("old"), name="old"), child(0, None, name="new")]
    journal, kept, retried = cut(stored(before), children)
    assert (kept, retried) == (0, 1)
    assert not journal.steps[0].started


def test_errors_the_code_had_already_seen_and_timers_are_left_as_they_are() -> None:
    # An error caught by the workflow earlier is part of its past, as is a timer.
    timer = journal_pb2.Step(kind=SLEEP, started=True)
    timer.wake_at.FromSeconds(2_000_000_000)
    caught = step("caught", arrival=1, result=failed())
    before = journal_of(caught, timer, step("last"))
    journal, kept, retried = cut(stored(before), [child(0, failed()), child(2, failed())])
    assert (kept, retried) == (1, 1)
    assert journal.steps[0] == caught
    assert journal.steps[1] == timer
    assert not journal.steps[2].started


@pytest.mark.parametrize(
    ("poll", "said"),
    [
        (b"", "kept no workflow journal"),
        (poll_pb2.Poll(coroutine_state=b"frames").SerializeToString(), "another SDK"),
        (b"\xff\xff", "malformed"),
    ],
)
def test_a_state_that_is_no_journal_is_refused(poll: bytes, said: str) -> None:
    with pytest.raises(NotResumable) as refused:
        resumed_poll(poll, [])
    assert said in str(refused.value)
    assert refused.value.code == "failed_precondition"


def test_a_journal_of_another_type_or_version_is_refused() -> None:
    other = poll_pb2.Poll()
    other.typed_coroutine_state.type_url = "type.googleapis.com/x.Y"
    with pytest.raises(NotResumable, match=r"'x\.Y'"):
        resumed_poll(other.SerializeToString(), [])
    newer = journal_of(step("a"))
    newer.version = 2
    with pytest.raises(NotResumable, match="version 2"):
        resumed_poll(stored(newer), [])


def test_a_message_received_is_kept_and_a_receive_that_timed_out_or_waited_is_made_anew() -> None:
    from dispatchlet.core.journal import RECEIVE

    def receiving(topic: str) -> journal_pb2.Step:
        return journal_pb2.Step(kind=RECEIVE, name=topic, started=True)

    # gather(receive("a"), receive("b"), receive("c")): a's message came, b timed out
    # (the workflow did not catch it), c still waited.
    before = journal_of(receiving("a"), receiving("b"), receiving("c"))
    children = [child(0, ok("yes")), child(1, failed("TimeoutError")), child(2, None)]
    journal, kept, retried = cut(stored(before), children)
    assert (kept, retried) == (1, 2)
    a, b, c = journal.steps
    assert values.from_any(a.result.output) == "yes"
    assert [(s.kind, s.name, s.started, s.arrival) for s in (b, c)] == [
        (RECEIVE, "b", False, 0),
        (RECEIVE, "c", False, 0),
    ]
