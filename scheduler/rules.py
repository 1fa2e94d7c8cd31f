"""What the engine does with an attempt, decided without I/O: pure functions from a call,
what its attempt came to, the scheduler's limits and the time, to a ``Decision``.

- ``before_attempt``: a claimed call that expired while it waited ends TIMEOUT (with its
  last error, if it had one); one claimed more than ``max_attempts`` times in its run
  (its attempts' leases lapsed with no outcome recorded: their process died, or failed
  to record it) ends PERMANENT_ERROR; otherwise it is run, for at most
  ``attempt_timeout`` and never past its expiration.
- ``after_attempt``: an attempt cut short by the call's expiration ends the call TIMEOUT;
  a tail call hands the call over (``TailCall``) unless it is invalid; a Poll suspends it
  (``Suspend``) unless it is invalid; INCOMPATIBLE_STATE in answer to a resume starts
  the call over (``Restart``) up to ``max_restarts`` times, a ``StepMismatch`` excepted;
  a retryable status is retried after a backoff (or the endpoint's ``Retry-After``, if
  longer) until ``max_attempts`` or the expiration; anything else is final (``Finish``).
- ``not_stored``: an outcome the store failed to record (not an outage) runs the call
  again, up to ``MAX_UNSTORED`` times in its life, then ends it: a poison call never
  loops. ``beyond_bounds``: a Poll that the tree's bounds refuse ends its call.

The engine applies a decision with one store call and logs; these rules are where a
change of policy goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from google.protobuf.unknown_fields import UnknownFieldSet

from ..core.call_options import call_options
from ..core.errors import STEP_MISMATCH
from ..core.messages import RECEIVE_TIMEOUT, topic_problem
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import call_pb2, error_pb2, poll_pb2
from .call_limits import LimitsInvalid, limits_of
from .calls import (
    AT_ONCE,
    MAX_POLL_CALLS,
    MAX_POLL_RESULTS,
    call_problem,
    duration_seconds,
    oversized_input,
    planned,
)
from .outcome import Outcome, oversized_output
from .retry import MAX_RESTARTS, RetryPolicy
from .settings import DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_MAX_INPUT_SIZE, DEFAULT_MAX_OUTPUT_SIZE
from .store import NO_LIMITS, Call, CallPolicy, NewCall, TreeLimitExceeded
from .store.limits import Limits as CallLimits


def supported(endpoint: str) -> str | None:
    """Every endpoint can be called (the default of ``Limits.unsupported``)."""
    del endpoint
    return None


@dataclass(frozen=True)
class Limits:
    """What the rules need of the scheduler's settings."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    max_restarts: int = MAX_RESTARTS
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE
    """The largest input a Poll's call or a tail call may have, in bytes."""
    max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE
    """The largest output (or error) an answer may carry, and the largest state a Poll
    may leave, in bytes: what the call stores."""
    unsupported: Callable[[str], str | None] = supported
    """Why this process cannot call an endpoint (an ARN without boto3), or None."""


def limits_for(call: Call, limits: Limits) -> Limits:
    """The limits ``call``'s attempts are decided by: the scheduler's, with the call's
    own policy (``CallOptions``, the function's defaults) where it sets one."""
    own = call.policy
    if own is None:
        return limits
    return replace(
        limits,
        policy=retry_policy(own, limits.policy),
        attempt_timeout=own.attempt_timeout or limits.attempt_timeout,
    )


def retry_policy(own: CallPolicy, default: RetryPolicy) -> RetryPolicy:
    """``default`` with a call's own attempts and backoff where it sets them; an initial
    wait beyond the default cap raises the cap to it."""
    base = own.backoff_initial or default.base
    return RetryPolicy(
        base=base,
        cap=own.backoff_maximum or max(default.cap, base),
        max_attempts=own.max_attempts or default.max_attempts,
        multiplier=own.backoff_multiplier or default.multiplier,
    )


# --- decisions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Finish:
    """End the call with ``status`` and ``result`` (its unfinished children cancelled)."""

    status: Status
    result: bytes
    instead: Outcome | None = None
    """What is recorded instead of the endpoint's answer (an invalid Poll or tail
    call), for the attempt's log line; None when the answer itself is recorded."""


@dataclass(frozen=True)
class Retry:
    """Run the call again at ``ready_at``, keeping this attempt's status and error."""

    status: Status
    result: bytes
    ready_at: float


@dataclass(frozen=True)
class Suspend:
    """Make the call wait for ``children`` (its Poll's calls), then resume it."""

    poll: bytes
    """The serialized Poll, without its calls: the state to resume from, and limits."""
    children: tuple[NewCall, ...]
    min_results: int
    max_results: int
    until: float


@dataclass(frozen=True)
class TailCall:
    """Hand the call over to ``function`` at ``endpoint`` with ``input``, held to the
    tail call's own ``policy`` and ``limits`` (its options), not the old function's."""

    function: str
    endpoint: str
    input: bytes
    policy: CallPolicy | None = None
    limits: CallLimits = NO_LIMITS


@dataclass(frozen=True)
class Restart:
    """Run the call again from its input (its code cannot read its state)."""


Decision = Finish | Retry | Suspend | TailCall | Restart


@dataclass(frozen=True)
class Run:
    """Run the attempt for at most ``timeout`` seconds."""

    timeout: float


# --- the rules ------------------------------------------------------------------------


def before_attempt(call: Call, limits: Limits, now: float) -> Run | Finish:
    """Whether a claimed call is run, and for how long: an expired one ends TIMEOUT, one
    whose earlier attempts used up ``max_attempts`` without recording an outcome ends.
    A receive is never run: claimed, its time passed with no message, it ends TIMEOUT."""
    if call.topic is not None:
        timeout = Outcome(
            Status.TIMEOUT,
            error_type=RECEIVE_TIMEOUT,
            message=f"no message on the topic {call.topic!r} before the receive's timeout",
        )
        return Finish(Status.TIMEOUT, error_result(timeout))
    if now >= call.expires_at:
        expired = Outcome(Status.TIMEOUT, error_type="DeadlineExceeded", message="the call expired")
        return Finish(Status.TIMEOUT, call.result or error_result(expired))
    most = limits.policy.max_attempts
    if call.attempts > most:
        # An attempt that records its outcome never goes past max_attempts (the last is
        # final): each one beyond lapsed, its process dead or unable to record it. At
        # least once, yet not forever: as SQS's maxReceiveCount counts receives.
        lapsed = Outcome(
            Status.PERMANENT_ERROR,
            error_type="AttemptsLapsed",
            message=f"{call.attempts - 1} attempts started, at most {most} (--max-attempts): "
            "the last ended with no outcome recorded (its scheduler stopped, or could not "
            "store it)",
        )
        return Finish(lapsed.status, error_result(lapsed), instead=lapsed)
    return Run(min(limits.attempt_timeout, call.expires_at - now))


def cut_short(outcome: Outcome, timeout: float, limits: Limits) -> bool:
    """Whether the attempt timed out because the call's expiration came first (its
    timeout was shorter than an attempt's), rather than because it was slow."""
    return (
        outcome.response is None
        and outcome.status is Status.TIMEOUT
        and timeout < limits.attempt_timeout
    )


def after_attempt(
    call: Call,
    outcome: Outcome,
    limits: Limits,
    now: float,
    *,
    jitter: float,
    expired: bool = False,
) -> Decision:
    """What to record of ``outcome``, an attempt of ``call`` that ended at ``now``.
    ``jitter`` (in [0, 1)) places a retry within its backoff; ``expired``: the attempt
    was cut short by the call's expiration (``cut_short``)."""
    if expired:
        # It ends TIMEOUT with the error its earlier attempts had, if any.
        return Finish(Status.TIMEOUT, call.result or error_result(outcome))
    response = outcome.response
    if response is None:
        return retried_or_final(call, outcome, error_result(outcome), limits, now, jitter)
    directive = response.WhichOneof("directive")
    if directive == "exit" and response.exit.HasField("tail_call"):
        return tail_call(call, response.exit.tail_call, limits, now)
    if directive == "poll":
        return suspension(call, response.poll, limits, now)
    result = outcome.result
    if result is None:
        result = response.exit.result.SerializeToString()
    # (Its length is known once serialized: ``ByteSize`` would serialize it as well.)
    problem = oversized_output(len(result), limits.max_output_size)
    if problem is not None:
        return invalid("InvalidResponse", problem)
    answered = Outcome(Status.answered(response.status))
    if answered.status is Status.INCOMPATIBLE_STATE and call.poll:
        if response.exit.result.error.type == STEP_MISMATCH:
            # Starting over would repeat the steps the workflow took: final.
            return Finish(answered.status, result)
        if call.restarts < limits.max_restarts:
            # The code that answers cannot read this state: start it over.
            return Restart()
    return retried_or_final(call, answered, result, limits, now, jitter)


def retried_or_final(
    call: Call, outcome: Outcome, result: bytes, limits: Limits, now: float, jitter: float
) -> Retry | Finish:
    """A retry after the backoff (or ``Retry-After``, if longer) for a retryable status,
    unless the attempts are used up or no attempt could start before the expiration."""
    status = outcome.status
    if not status.retryable or call.attempts >= limits.policy.max_attempts:
        return Finish(status, result)
    delay = limits.policy.backoff(call.attempts, jitter)
    if outcome.retry_after is not None:
        delay = max(delay, outcome.retry_after)
    ready_at = now + delay
    if ready_at >= call.expires_at:
        return Finish(Status.TIMEOUT, result)
    return Retry(status, result, ready_at)


def tail_call(call: Call, tail: call_pb2.Call, limits: Limits, now: float) -> TailCall | Finish:
    """Hand-over to ``tail``, or the end of an invalid one. Of its options, its policy
    and limits are the call's from then on; the call keeps its dispatch id and its
    expiration, and runs at once (a key or a delay asks nothing of a hand-over)."""
    tail_input = tail.input.SerializeToString() if tail.HasField("input") else b""
    tail_endpoint = tail.endpoint or call.endpoint
    problem = (
        call_problem(tail, endpoint_required=False)
        or oversized_input(len(tail_input), limits.max_input_size)
        or limits.unsupported(tail_endpoint)
    )
    if problem is not None:
        return invalid("InvalidTailCall", problem)
    options = call_options(tail) if UnknownFieldSet(tail) else None
    if options is None:
        return TailCall(tail.function, tail_endpoint, tail_input)
    plan = planned(options, now)
    if isinstance(plan, str):
        return invalid("InvalidTailCall", plan)
    try:
        tail_limits = limits_of(options)
    except LimitsInvalid as exc:
        return invalid("InvalidTailCall", str(exc))
    return TailCall(tail.function, tail_endpoint, tail_input, plan.policy, tail_limits)


def suspension(call: Call, poll: poll_pb2.Poll, limits: Limits, now: float) -> Suspend | Finish:
    """The suspension of ``call`` on ``poll``, or the end of an invalid Poll."""
    problem = poll_problem(poll)
    if problem is not None:
        return invalid("InvalidPoll", problem)
    until = call.expires_at
    if poll.HasField("max_wait"):
        until = min(now + duration_seconds(poll.max_wait), until)
    # Without max_wait (as dispatch-py sends it) there is no deadline: the call is
    # resumed once min_results are ready, or ends when it expires.
    children = []
    for index, child in enumerate(poll.calls):
        child_input = child.input.SerializeToString() if child.HasField("input") else b""
        child_endpoint = child.endpoint.rstrip("/") or call.endpoint
        problem = (
            call_problem(child, endpoint_required=False)
            or oversized_input(len(child_input), limits.max_input_size)
            or limits.unsupported(child_endpoint)
        )
        if problem is not None:
            return invalid("InvalidPoll", f"call {index}: {problem}")
        # Options travel as an unknown field of the Call (``core.call_options``): read
        # only from a child that has one.
        options = call_options(child) if UnknownFieldSet(child) else None
        plan = AT_ONCE if options is None else planned(options, now)
        if isinstance(plan, str):
            return invalid("InvalidPoll", f"call {index}: {plan}")
        start = now if plan.ready_at is None else plan.ready_at
        if plan.ready_at is not None and start >= call.expires_at:
            # Its expiration is at most its workflow's: it would end TIMEOUT unrun.
            return invalid(
                "InvalidPoll",
                f"call {index} (correlation id {child.correlation_id}, {child.function}): "
                f"delayed to start at {utc(start)}, at or after its workflow's "
                f"expiration at {utc(call.expires_at)}: it could never run",
            )
        try:
            child_limits = NO_LIMITS if options is None else limits_of(options)
        except LimitsInvalid as exc:
            return invalid("InvalidPoll", f"call {index}: {exc}")
        topic = (options.receive_topic or None) if options is not None else None
        if topic is not None and (problem := topic_problem(topic)) is not None:
            return invalid("InvalidPoll", f"call {index}: {problem}")
        expires_at = call.expires_at
        if child.HasField("expiration"):
            lifetime = duration_seconds(child.expiration)
            expires_at = min(expires_at, start + lifetime) if lifetime > 0 else expires_at
        children.append(
            NewCall(
                function=child.function,
                endpoint=child_endpoint,
                input=child_input,
                expires_at=expires_at,
                version=child.version,
                correlation_id=child.correlation_id,
                key=plan.key,
                ready_at=plan.ready_at,
                policy=plan.policy,
                limits=child_limits,
                topic=topic,
            )
        )
    state = poll_pb2.Poll()
    state.CopyFrom(poll)
    state.ClearField("calls")
    saved = state.SerializeToString()
    problem = oversized_output(len(saved), limits.max_output_size, "a Poll state")
    if problem is not None:
        return invalid("InvalidPoll", problem)
    return Suspend(
        poll=saved,
        children=tuple(children),
        min_results=poll.min_results,
        max_results=poll.max_results,
        until=until,
    )


def utc(moment: float) -> str:
    """A time as an error message names it: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def poll_problem(poll: poll_pb2.Poll) -> str | None:
    """What is wrong with a Poll's limits, if anything (its calls are checked apart)."""
    if poll.HasField("max_wait") and duration_seconds(poll.max_wait) < 1:
        return "max_wait must be at least 1 second"
    if not 1 <= poll.max_results <= MAX_POLL_RESULTS:
        return f"max_results must be 1 to {MAX_POLL_RESULTS}, not {poll.max_results}"
    if not 1 <= poll.min_results <= poll.max_results:
        return f"min_results must be 1 to max_results, not {poll.min_results}"
    if len(poll.calls) > MAX_POLL_CALLS:
        return f"{len(poll.calls)} calls in one Poll: at most {MAX_POLL_CALLS}"
    return None


def invalid(error_type: str, problem: str) -> Finish:
    """The end of a call whose answer asked for something invalid."""
    outcome = Outcome(Status.INVALID_RESPONSE, error_type=error_type, message=problem)
    return Finish(outcome.status, error_result(outcome), instead=outcome)


MAX_UNSTORED = 3
"""How many times in its life a call's outcome may fail to be stored (an error of the
store that is not the database being away, which retrying will not mend) before the
call ends with that error: each time its attempt runs again."""


def not_stored(
    call: Call, failures: int, error: str, limits: Limits, now: float, *, jitter: float
) -> Retry | Finish:
    """What becomes of a call whose attempt's outcome could not be stored, for the
    ``failures``-th time (``error`` says why): it runs again after a backoff, unless
    that was the last time allowed (``MAX_UNSTORED``), its last attempt or past its
    expiration: then it ends PERMANENT_ERROR with that error."""
    times = "1 time" if failures == 1 else f"{failures} times"
    if failures < MAX_UNSTORED and call.attempts < limits.policy.max_attempts:
        ready_at = now + limits.policy.backoff(call.attempts, jitter)
        if ready_at < call.expires_at:
            again = Outcome(
                Status.TEMPORARY_ERROR,
                error_type="OutcomeNotStored",
                message=f"its outcome could not be stored ({times} of at most "
                f"{MAX_UNSTORED}): {error}",
            )
            return Retry(again.status, error_result(again), ready_at)
    final = Outcome(
        Status.PERMANENT_ERROR,
        error_type="OutcomeNotStored",
        message=f"its outcome could not be stored {times}: {error}",
    )
    return Finish(final.status, error_result(final), instead=final)


def beyond_bounds(exceeded: TreeLimitExceeded) -> Finish:
    """The end of a call whose Poll would take its tree beyond a bound, naming it."""
    total = exceeded.count + exceeded.adding
    if exceeded.bound == "children":
        problem = (
            f"a Poll of {exceeded.adding} calls would leave the call {total} unfinished "
            f"children ({exceeded.count} already): at most {exceeded.limit} (--max-children)"
        )
    else:
        problem = (
            f"a Poll of {exceeded.adding} calls would make its call tree {total} calls below "
            f"its root ({exceeded.count} already): at most {exceeded.limit} "
            "(--max-descendants)"
        )
    return invalid("TreeLimitExceeded", problem)


def error_result(outcome: Outcome) -> bytes:
    """A serialized CallResult carrying ``outcome``'s error."""
    error = error_pb2.Error(type=outcome.error_type, message=outcome.message)
    return call_pb2.CallResult(error=error).SerializeToString()


# What a call's unfinished children end with when it ends (or restarts).
ORPHANS = (
    Status.PERMANENT_ERROR.value,
    call_pb2.CallResult(
        error=error_pb2.Error(type="Cancelled", message="its parent call ended")
    ).SerializeToString(),
)

__all__ = [
    "MAX_UNSTORED",
    "ORPHANS",
    "Decision",
    "Finish",
    "Limits",
    "Restart",
    "Retry",
    "Run",
    "Suspend",
    "TailCall",
    "after_attempt",
    "before_attempt",
    "beyond_bounds",
    "cut_short",
    "error_result",
    "limits_for",
    "not_stored",
    "retry_policy",
]
