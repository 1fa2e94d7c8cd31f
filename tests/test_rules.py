"""The scheduler's decisions, held to tables: what each status of an attempt leads to,
backoff and Retry-After, expiry, attempt limits, Poll and tail-call validation, and the
restarts of a workflow whose state its code cannot read. Pure functions: no store, no
event loop."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from dispatchlet.core.errors import STEP_MISMATCH
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2, poll_pb2
from dispatchlet.scheduler import rules
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.rules import (
    Finish,
    Limits,
    Restart,
    Retry,
    Run,
    Suspend,
    TailCall,
    after_attempt,
    before_attempt,
    cut_short,
)
from dispatchlet.scheduler.store import Call, NewCall, State
from google.protobuf import any_pb2

NOW = 1_800_000_000.0
ENDPOINT = "http://endpoint.test"
LIMITS = Limits(policy=RetryPolicy(base=1.0, cap=8.0, max_attempts=5), attempt_timeout=60.0)


def stored(**fields: Any) -> Call:
    """A call being run: its first attempt, an hour before it expires."""
    values: dict[str, Any] = {
        "dispatch_id": "d1",
        "function": "f",
        "endpoint": ENDPOINT,
        "input": b"",
        "version": "",
        "correlation_id": 0,
        "parent_id": None,
        "root_id": "d1",
        "state": State.RUNNING,
        "status": None,
        "result": b"",
        "attempts": 1,
        "created_at": NOW - 10,
        "expires_at": NOW + 3600,
        "ready_at": NOW - 10,
        "finished_at": None,
    }
    values.update(fields)
    return Call(**values)


def answer(status: int, *, error_type: str = "", output: bytes = b"") -> Outcome:
    """An endpoint's RunResponse that exits with ``status``."""
    response = function_pb2.RunResponse(status=status)
    if error_type:
        response.exit.result.error.type = error_type
    else:
        response.exit.result.output.CopyFrom(any_pb2.Any(type_url="t", value=output))
    return Outcome(Status.OK, response)


def error_of(result: bytes) -> tuple[str, str]:
    error = call_pb2.CallResult.FromString(result).error
    return error.type, error.message


def decide(outcome: Outcome, call: Call | None = None, **options: Any) -> rules.Decision:
    options.setdefault("jitter", 0.0)
    limits = options.pop("limits", LIMITS)
    return after_attempt(call or stored(), outcome, limits, NOW, **options)


# --- every status ---------------------------------------------------------------------

# What the scheduler does after an attempt that ended with each status: the table of
# the protocol (retried or final), written out rather than read from ``Status``.
RETRIED = {
    Status.TIMEOUT,
    Status.THROTTLED,
    Status.TEMPORARY_ERROR,
    Status.INCOMPATIBLE_STATE,
    Status.DNS_ERROR,
    Status.TCP_ERROR,
    Status.TLS_ERROR,
    Status.HTTP_ERROR,
}
FINAL = {
    Status.UNSPECIFIED,
    Status.OK,
    Status.INVALID_ARGUMENT,
    Status.INVALID_RESPONSE,
    Status.PERMANENT_ERROR,
    Status.UNAUTHENTICATED,
    Status.PERMISSION_DENIED,
    Status.NOT_FOUND,
}


def test_the_tables_cover_every_status() -> None:
    assert set(Status) == RETRIED | FINAL
    assert not RETRIED & FINAL


@pytest.mark.parametrize("status", sorted(Status), ids=lambda s: s.name)
def test_an_answered_status_is_retried_or_final(status: Status) -> None:
    outcome = answer(status.value, output=b"out")
    decision = decide(outcome)
    result = outcome.response.exit.result.SerializeToString()  # type: ignore[union-attr]
    if status in RETRIED:
        assert decision == Retry(status, result, NOW + 0.5)
    else:
        assert decision == Finish(status, result)


@pytest.mark.parametrize("status", sorted(Status), ids=lambda s: s.name)
def test_a_callers_failure_is_retried_or_final_with_its_error(status: Status) -> None:
    outcome = Outcome(status, error_type="Oops", message="it broke")
    decision = decide(outcome)
    assert isinstance(decision, Retry if status in RETRIED else Finish)
    assert decision.status is status
    assert error_of(decision.result) == ("Oops", "it broke")


def test_a_status_number_the_protocol_does_not_know_is_an_invalid_response() -> None:
    decision = decide(answer(99, error_type="X"))
    assert isinstance(decision, Finish)
    assert decision.status is Status.INVALID_RESPONSE


# --- backoff, Retry-After, attempt limits, expiry ----------------------------------------

FAILED = Outcome(Status.TEMPORARY_ERROR, error_type="HTTPError", message="503")


@pytest.mark.parametrize(
    ("attempts", "jitter", "retry_after", "delay"),
    [
        (1, 0.0, None, 0.5),  # half of base
        (1, 1.0, None, 1.0),  # all of base
        (2, 0.0, None, 1.0),
        (3, 0.5, None, 3.0),  # 4 s ceiling, three quarters of it
        (4, 1.0, None, 8.0),  # capped
        (1, 0.0, 30.0, 30.0),  # Retry-After asks for longer: honoured
        (4, 1.0, 2.0, 8.0),  # Retry-After shorter than the backoff: the backoff
    ],
)
def test_a_retry_waits_its_backoff_or_the_retry_after(
    attempts: int, jitter: float, retry_after: float | None, delay: float
) -> None:
    outcome = dataclasses.replace(FAILED, retry_after=retry_after)
    decision = decide(outcome, stored(attempts=attempts), jitter=jitter)
    assert isinstance(decision, Retry)
    assert decision.ready_at - NOW == pytest.approx(delay)


@pytest.mark.parametrize(
    ("attempts", "expected"), [(4, Retry), (5, Finish), (6, Finish)], ids=["below", "at", "past"]
)
def test_the_last_attempt_is_final_with_its_own_status(attempts: int, expected: type) -> None:
    decision = decide(FAILED, stored(attempts=attempts))
    assert isinstance(decision, expected)
    assert decision.status is Status.TEMPORARY_ERROR


@pytest.mark.parametrize(
    ("expires_in", "retry_after", "expected"),
    [
        (0.6, None, Retry),  # the retry (0.5 s away) starts before the expiration
        (0.5, None, Finish),  # it would start just as the call expires
        (100.0, 100.0, Finish),  # Retry-After past the expiration
    ],
)
def test_no_retry_is_scheduled_past_the_expiration(
    expires_in: float, retry_after: float | None, expected: type
) -> None:
    outcome = dataclasses.replace(FAILED, retry_after=retry_after)
    decision = decide(outcome, stored(expires_at=NOW + expires_in))
    assert isinstance(decision, expected)
    if expected is Finish:
        assert decision == Finish(Status.TIMEOUT, rules.error_result(outcome))


EXPIRED = call_pb2.CallResult(
    error={"type": "DeadlineExceeded", "message": "the call expired"}
).SerializeToString()
EARLIER_ERROR = call_pb2.CallResult(
    error={"type": "Earlier", "message": "before"}
).SerializeToString()


@pytest.mark.parametrize(
    ("now", "result", "expected"),
    [
        (NOW + 3599, b"", Run(1.0)),  # runs until its expiration, not a whole attempt
        (NOW, b"", Run(60.0)),
        (NOW + 3600, b"", Finish(Status.TIMEOUT, EXPIRED)),
        (NOW + 4000, EARLIER_ERROR, Finish(Status.TIMEOUT, EARLIER_ERROR)),
    ],
    ids=["short", "whole", "expired", "expired-after-errors"],
)
def test_a_claimed_call_runs_until_its_expiration_or_ends_timeout(
    now: float, result: bytes, expected: Run | Finish
) -> None:
    assert before_attempt(stored(result=result), LIMITS, now) == expected


@pytest.mark.parametrize(
    ("outcome", "timeout", "expected"),
    [
        (Outcome(Status.TIMEOUT), 10.0, True),  # its timeout was the expiration's
        (Outcome(Status.TIMEOUT), 60.0, False),  # a whole attempt: merely slow
        (Outcome(Status.TCP_ERROR), 10.0, False),
        (answer(Status.TIMEOUT.value), 10.0, False),  # the endpoint answered
    ],
)
def test_an_attempt_is_cut_short_by_the_expiration_only_when_it_timed_out_early(
    outcome: Outcome, timeout: float, expected: bool
) -> None:
    assert cut_short(outcome, timeout, LIMITS) is expected


@pytest.mark.parametrize(
    ("result", "expected"),
    [(b"", ("", "late")), (EARLIER_ERROR, ("Earlier", "before"))],
    ids=["first-attempt", "after-errors"],
)
def test_an_attempt_cut_short_ends_the_call_timeout(
    result: bytes, expected: tuple[str, str]
) -> None:
    outcome = Outcome(Status.TIMEOUT, message="late")
    decision = decide(outcome, stored(result=result), expired=True)
    assert isinstance(decision, Finish)
    assert decision.status is Status.TIMEOUT
    assert error_of(decision.result) == expected


# --- Poll -------------------------------------------------------------------------------


def poll_answer(poll: poll_pb2.Poll) -> Outcome:
    return Outcome(Status.OK, function_pb2.RunResponse(status=Status.OK.value, poll=poll))


def child(function: str = "g", **fields: Any) -> call_pb2.Call:
    return call_pb2.Call(function=function, **fields)


def arn_unsupported(endpoint: str) -> str | None:
    return "boto3 is not installed" if endpoint.startswith("arn:") else None


BIG = any_pb2.Any(type_url="t", value=b"x" * 100)
SMALL_LIMITS = dataclasses.replace(LIMITS, max_input_size=50, unsupported=arn_unsupported)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"max_wait": {"nanos": 500_000_000}}, "max_wait must be at least 1 second"),
        ({"max_wait": {}}, "max_wait must be at least 1 second"),
        ({"max_results": 0}, "max_results must be 1 to 1000, not 0"),
        ({"max_results": 1001}, "max_results must be 1 to 1000, not 1001"),
        ({"min_results": 0}, "min_results must be 1 to max_results, not 0"),
        ({"min_results": 3, "max_results": 2}, "min_results must be 1 to max_results, not 3"),
        ({"calls": [child()] * 1001}, "1001 calls in one Poll: at most 1000"),
        ({"calls": [child(), child("bad name")]}, "call 1: invalid function name 'bad name'"),
        ({"calls": [child(endpoint="ftp://x")]}, "call 0: invalid endpoint 'ftp://x'"),
        ({"calls": [child(input=BIG)]}, "call 0: input of 105 bytes, larger than"),
        (
            {"calls": [child(endpoint="arn:aws:lambda:us-east-1:1:function:f")]},
            "call 0: boto3 is not installed",
        ),
    ],
    ids=[
        "max-wait-short",
        "max-wait-zero",
        "max-results-zero",
        "max-results-high",
        "min-results-zero",
        "min-above-max",
        "too-many-calls",
        "child-function",
        "child-endpoint",
        "child-input-size",
        "child-arn-without-boto3",
    ],
)
def test_an_invalid_poll_ends_the_call(fields: dict[str, Any], problem: str) -> None:
    poll = poll_pb2.Poll(**{"min_results": 1, "max_results": 10, **fields})
    decision = decide(poll_answer(poll), limits=SMALL_LIMITS)
    assert isinstance(decision, Finish)
    assert decision.status is Status.INVALID_RESPONSE
    error_type, message = error_of(decision.result)
    assert error_type == "InvalidPoll"
    assert message.startswith(problem)
    assert decision.instead == Outcome(Status.INVALID_RESPONSE, None, "InvalidPoll", message)


@pytest.mark.parametrize(
    ("max_wait", "until"),
    [
        (None, NOW + 3600),  # no max_wait: no deadline but the call's expiration
        ({"seconds": 1}, NOW + 1),
        ({"seconds": 10, "nanos": 500_000_000}, NOW + 10.5),
        ({"seconds": 7200}, NOW + 3600),  # past the expiration: the expiration
    ],
    ids=["unset", "one-second", "fractional", "beyond-expiration"],
)
def test_a_poll_suspends_until_its_max_wait_or_the_expiration(
    max_wait: dict[str, int] | None, until: float
) -> None:
    poll = poll_pb2.Poll(min_results=1, max_results=1)
    if max_wait is not None:
        poll.max_wait.FromNanoseconds(max_wait.get("seconds", 0) * 10**9 + max_wait.get("nanos", 0))
    decision = decide(poll_answer(poll))
    assert isinstance(decision, Suspend)
    assert decision.until == until


def test_a_poll_suspends_with_its_children_and_its_state_without_them() -> None:
    poll = poll_pb2.Poll(
        coroutine_state=b"state",
        min_results=2,
        max_results=3,
        calls=[
            child("a", correlation_id=1, input=any_pb2.Any(type_url="t", value=b"i")),
            child("b", endpoint="https://other.test/", correlation_id=2, version="v2"),
            child("c", correlation_id=3, expiration={"seconds": 60}),
            child("d", correlation_id=4, expiration={"seconds": 7200}),
        ],
    )
    decision = decide(poll_answer(poll))
    assert isinstance(decision, Suspend)
    assert (decision.min_results, decision.max_results) == (2, 3)
    state = poll_pb2.Poll.FromString(decision.poll)
    assert (state.coroutine_state, len(state.calls)) == (b"state", 0)
    expires = NOW + 3600
    assert decision.children == (
        NewCall("a", ENDPOINT, poll.calls[0].input.SerializeToString(), expires, "", 1),
        NewCall("b", "https://other.test", b"", expires, "v2", 2),
        NewCall("c", ENDPOINT, b"", NOW + 60, "", 3),
        NewCall("d", ENDPOINT, b"", expires, "", 4),
    )


def test_a_poll_without_calls_is_a_timer() -> None:
    poll = poll_pb2.Poll(min_results=1, max_results=1, max_wait={"seconds": 5})
    assert decide(poll_answer(poll)) == Suspend(poll.SerializeToString(), (), 1, 1, NOW + 5)


# --- tail calls ------------------------------------------------------------------------


def tail_answer(tail: call_pb2.Call) -> Outcome:
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.exit.tail_call.CopyFrom(tail)
    return Outcome(Status.OK, response)


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (child("g"), TailCall("g", ENDPOINT, b"")),
        (
            child("g", endpoint="https://other.test", input=any_pb2.Any(value=b"v")),
            TailCall("g", "https://other.test", any_pb2.Any(value=b"v").SerializeToString()),
        ),
        (child("no good"), "invalid function name 'no good'"),
        (child("g", endpoint="mailto:x"), "invalid endpoint 'mailto:x'"),
        (child("g", input=BIG), "input of 105 bytes, larger than the scheduler's limit of 50"),
        (child("g", endpoint="arn:aws:lambda:us-east-1:1:function:f"), "boto3 is not installed"),
    ],
    ids=["own-endpoint", "other-endpoint", "function", "endpoint", "input-size", "arn"],
)
def test_a_tail_call_hands_the_call_over_unless_it_is_invalid(
    tail: call_pb2.Call, expected: TailCall | str
) -> None:
    decision = decide(tail_answer(tail), limits=SMALL_LIMITS)
    if isinstance(expected, TailCall):
        assert decision == expected
        return
    assert isinstance(decision, Finish)
    assert decision.status is Status.INVALID_RESPONSE
    error_type, message = error_of(decision.result)
    assert error_type == "InvalidTailCall"
    assert message.startswith(expected)


# --- INCOMPATIBLE_STATE restarts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("poll", "restarts", "error_type", "expected"),
    [
        (b"\x32\x01s", 0, "IncompatibleStateError", Restart),  # a resume: start over
        (b"\x32\x01s", 2, "IncompatibleStateError", Restart),
        (b"\x32\x01s", 3, "IncompatibleStateError", Retry),  # restarts used up: retried
        (b"\x32\x01s", 0, STEP_MISMATCH, Finish),  # starting over would repeat steps
        (b"", 0, "IncompatibleStateError", Retry),  # not a resume: retried as it is
    ],
    ids=["first", "last", "used-up", "step-mismatch", "not-a-resume"],
)
def test_incompatible_state_restarts_a_resumed_call(
    poll: bytes, restarts: int, error_type: str, expected: type
) -> None:
    call = stored(poll=poll, restarts=restarts)
    decision = decide(answer(Status.INCOMPATIBLE_STATE.value, error_type=error_type), call)
    assert isinstance(decision, expected)
    if isinstance(decision, (Finish, Retry)):
        assert decision.status is Status.INCOMPATIBLE_STATE
        assert error_of(decision.result)[0] == error_type


# --- poison calls and tree bounds ------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(1, Run), (5, Run), (6, Finish), (9, Finish)],
    ids=["first", "last", "one-beyond", "far-beyond"],
)
def test_a_call_claimed_beyond_max_attempts_ends(attempts: int, expected: type) -> None:
    """An attempt that records its outcome never goes beyond max_attempts (5): a claim
    beyond follows attempts that lapsed with no outcome recorded."""
    plan = before_attempt(stored(attempts=attempts, result=b"kept"), LIMITS, NOW)
    assert isinstance(plan, expected)
    if isinstance(plan, Finish):
        assert plan.status is Status.PERMANENT_ERROR
        assert error_of(plan.result) == (
            "AttemptsLapsed",
            f"{attempts - 1} attempts started, at most 5 (--max-attempts): the last ended "
            "with no outcome recorded (its scheduler stopped, or could not store it)",
        )


@pytest.mark.parametrize(
    ("failures", "attempts", "expires_in", "expected"),
    [
        (1, 1, 3600.0, Retry),
        (rules.MAX_UNSTORED - 1, 2, 3600.0, Retry),
        (rules.MAX_UNSTORED, 3, 3600.0, Finish),  # the last time allowed
        (1, 5, 3600.0, Finish),  # its last attempt
        (1, 1, 0.1, Finish),  # no time left for another
    ],
    ids=["first", "one-left", "used-up", "last-attempt", "expiring"],
)
def test_an_outcome_that_cannot_be_stored_runs_the_call_again_a_few_times(
    failures: int, attempts: int, expires_in: float, expected: type
) -> None:
    call = stored(attempts=attempts, expires_at=NOW + expires_in)
    decision = rules.not_stored(call, failures, "ValueError: out of range", LIMITS, NOW, jitter=0)
    assert isinstance(decision, expected)
    times = "1 time" if failures == 1 else f"{failures} times"
    if isinstance(decision, Retry):
        assert decision.status is Status.TEMPORARY_ERROR
        assert decision.ready_at > NOW
        assert error_of(decision.result) == (
            "OutcomeNotStored",
            f"its outcome could not be stored ({times} of at most {rules.MAX_UNSTORED}): "
            "ValueError: out of range",
        )
    else:
        assert isinstance(decision, Finish)
        assert decision.status is Status.PERMANENT_ERROR
        assert error_of(decision.result) == (
            "OutcomeNotStored",
            f"its outcome could not be stored {times}: ValueError: out of range",
        )


def test_a_poll_beyond_a_bound_of_its_tree_ends_the_call_naming_the_bound() -> None:
    from dispatchlet.scheduler.store import TreeLimitExceeded

    children = rules.beyond_bounds(TreeLimitExceeded("children", 10_000, 9_500, 1_000))
    assert children.status is Status.INVALID_RESPONSE
    assert error_of(children.result) == (
        "TreeLimitExceeded",
        "a Poll of 1000 calls would leave the call 10500 unfinished children (9500 "
        "already): at most 10000 (--max-children)",
    )
    below = rules.beyond_bounds(TreeLimitExceeded("descendants", 100_000, 99_999, 2))
    assert error_of(below.result) == (
        "TreeLimitExceeded",
        "a Poll of 2 calls would make its call tree 100001 calls below its root (99999 "
        "already): at most 100000 (--max-descendants)",
    )


# --- receives (``core.messages``) ------------------------------------------------------


def receiving(topic: str, correlation_id: int, **fields: Any) -> call_pb2.Call:
    from dispatchlet.core.call_options import set_call_options
    from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2

    made = child("dispatchlet.receive", correlation_id=correlation_id, **fields)
    set_call_options(made, options_pb2.CallOptions(receive_topic=topic))
    return made


def test_a_polls_receive_is_a_child_marked_with_its_topic_and_timeout() -> None:
    poll = poll_pb2.Poll(
        min_results=1,
        max_results=2,
        calls=[receiving("approval", 1, expiration={"seconds": 30}), child("a", correlation_id=2)],
    )
    decision = decide(poll_answer(poll))
    assert isinstance(decision, Suspend)
    assert decision.children == (
        NewCall("dispatchlet.receive", ENDPOINT, b"", NOW + 30, "", 1, topic="approval"),
        NewCall("a", ENDPOINT, b"", NOW + 3600, "", 2),
    )


def test_a_receive_with_a_bad_topic_is_an_invalid_poll() -> None:
    poll = poll_pb2.Poll(min_results=1, max_results=1, calls=[receiving("bad\ttopic", 1)])
    decision = decide(poll_answer(poll))
    assert isinstance(decision, Finish)
    assert decision.status is Status.INVALID_RESPONSE
    assert decision.instead is not None
    assert "call 0: a topic with a control character" in decision.instead.message


def test_a_receive_is_never_run_claimed_it_ends_timed_out() -> None:
    # Claimed once its timeout passed, or early (a clock behind the database's): either
    # way no endpoint is called.
    for expires_at in (NOW - 1, NOW + 60):
        plan = before_attempt(stored(topic="approval", expires_at=expires_at), LIMITS, NOW)
        assert isinstance(plan, Finish)
        assert plan.status is Status.TIMEOUT
        error = call_pb2.CallResult.FromString(plan.result).error
        assert (error.type, error.message) == (
            "TimeoutError",
            "no message on the topic 'approval' before the receive's timeout",
        )


# --- a call's own policy -------------------------------------------------------------


def test_a_call_without_a_policy_is_decided_by_the_schedulers_limits() -> None:
    assert rules.limits_for(stored(), LIMITS) is LIMITS


def test_a_calls_policy_replaces_the_schedulers_where_it_sets_one() -> None:
    from dispatchlet.scheduler.store import CallPolicy

    own = stored(attempts=2, policy=CallPolicy(max_attempts=2, attempt_timeout=5.0))
    limits = rules.limits_for(own, LIMITS)
    assert (limits.policy.max_attempts, limits.attempt_timeout) == (2, 5.0)
    assert (limits.policy.base, limits.policy.cap) == (1.0, 8.0)  # the scheduler's backoff
    # Its second attempt was its last: a retryable failure is final.
    timed_out = Outcome(Status.TIMEOUT, error_type="TimeoutError", message="slow")
    assert isinstance(decide(timed_out, own, limits=limits), Finish)
    assert isinstance(decide(timed_out, own), rules.Retry)  # under the scheduler's 5
    assert before_attempt(own, limits, NOW) == rules.Run(5.0)
    # A backoff of its own: its initial wait, growth and cap; an initial wait beyond the
    # scheduler's cap raises the cap to it rather than cutting it.
    slow = stored(attempts=1, policy=CallPolicy(backoff_initial=30.0, backoff_multiplier=3.0))
    policy = rules.limits_for(slow, LIMITS).policy
    assert (policy.base, policy.cap, policy.multiplier) == (30.0, 30.0, 3.0)
    capped = rules.limits_for(
        stored(policy=CallPolicy(backoff_initial=1.0, backoff_maximum=100.0)), LIMITS
    ).policy
    assert [capped.backoff(n, 0.999999) for n in (1, 3, 8)] == pytest.approx([1.0, 4.0, 100.0])


# --- delayed children ----------------------------------------------------------------


def delayed(function: str, correlation_id: int, seconds: float) -> call_pb2.Call:
    from dispatchlet.core.call_options import set_call_options
    from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2

    made = child(function, correlation_id=correlation_id)
    options = options_pb2.CallOptions()
    options.delay.FromNanoseconds(int(seconds * 10**9))
    set_call_options(made, options)
    return made


def test_a_child_delayed_to_its_workflows_expiration_or_later_is_an_invalid_poll() -> None:
    """The workflow expires an hour from now: a child that would start then or later
    could never run (its expiration is at most its workflow's)."""
    for seconds in (3600, 7200):
        poll = poll_pb2.Poll(
            min_results=1,
            max_results=2,
            calls=[delayed("soon", 1, 60), delayed("remind", 2, seconds)],
        )
        decision = decide(poll_answer(poll))
        assert isinstance(decision, Finish), seconds
        assert decision.status is Status.INVALID_RESPONSE
        error_type, message = error_of(decision.result)
        assert error_type == "InvalidPoll"
        assert message == (
            f"call 1 (correlation id 2, remind): delayed to start at "
            f"{rules.utc(NOW + seconds)}, at or after its workflow's expiration at "
            f"{rules.utc(NOW + 3600)}: it could never run"
        )
    # Starting before the expiration, it is stored as asked.
    poll = poll_pb2.Poll(min_results=1, max_results=1, calls=[delayed("remind", 2, 3599)])
    decision = decide(poll_answer(poll))
    assert isinstance(decision, Suspend)
    assert decision.children[0].ready_at == pytest.approx(NOW + 3599)


def test_a_tail_call_is_held_to_its_own_policy_and_limits() -> None:
    """The options of the tail call (the target function's defaults, as the SDK makes
    them) are what the call is held to from then on; none: none."""
    from dispatchlet.core.call_options import set_call_options
    from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2
    from dispatchlet.scheduler.store import CallPolicy
    from dispatchlet.scheduler.store.limits import Limits

    tail = child("g")
    options = options_pb2.CallOptions(
        max_attempts=4, concurrency=2, concurrency_key="c-17", concurrency_per_key=1
    )
    options.rate_limit.count = 10
    options.rate_limit.period.FromSeconds(60)
    set_call_options(tail, options)
    decision = decide(tail_answer(tail))
    assert decision == TailCall(
        "g",
        ENDPOINT,
        b"",
        CallPolicy(max_attempts=4),
        Limits(concurrency=2, key="c-17", per_key=1, rate_count=10, rate_period=60.0),
    )
    # Bad options are an invalid tail call, as they would be an invalid Dispatch.
    bad = child("g")
    set_call_options(bad, options_pb2.CallOptions(rate_limit=options_pb2.RateLimit()))
    decision = decide(tail_answer(bad))
    assert isinstance(decision, Finish)
    assert error_of(decision.result)[0] == "InvalidTailCall"
