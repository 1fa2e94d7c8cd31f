"""The engine end to end, in-process: the real ``Engine`` over the in-memory store, its
endpoints a scripted caller. Retries and their backoff, Retry-After, attempt limits, a
tail call, a Poll's children and the resume, INCOMPATIBLE_STATE restarts, expiry, the
destination limit and the children a finished or cancelled call leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from dispatchlet.core.errors import STEP_MISMATCH
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2, poll_pb2
from dispatchlet.scheduler import engine as engine_module
from dispatchlet.scheduler.concurrency import Limiter
from dispatchlet.scheduler.engine import Engine, timestamp
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.store import Call, NewCall, State
from dispatchlet.scheduler.store.memory import MemoryStore
from google.protobuf import any_pb2
from test_cron import FixedClock

ENDPOINT = "http://endpoint.test"
OTHER = "https://other.test"
BOUND = 30.0  # how long any wait may take before the test fails, whatever the load
# Short backoffs, so that retries come within milliseconds.
POLICY = RetryPolicy(base=0.02, cap=0.05, max_attempts=5)

Answer = Callable[[function_pb2.RunRequest], Awaitable[Outcome]]


@dataclass
class Attempt:
    endpoint: str
    request: function_pb2.RunRequest
    timeout: float
    at: float
    """The engine's clock when the attempt was sent."""


@dataclass
class Scripted:
    """A caller whose answers come from an async function per function name."""

    clock: Callable[[], float] = time.time
    answers: dict[str, Answer] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        self.attempts.append(Attempt(endpoint, request, timeout, self.clock()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.answers[request.function](request)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        pass

    def of(self, dispatch_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.request.dispatch_id == dispatch_id]


def output(value: bytes) -> call_pb2.CallResult:
    return call_pb2.CallResult(output=any_pb2.Any(type_url="test/bytes", value=value))


def returning(value: bytes, status: Status = Status.OK) -> Answer:
    async def answer(request: function_pb2.RunRequest) -> Outcome:
        response = function_pb2.RunResponse(status=status.value)
        response.exit.result.CopyFrom(output(value))
        return Outcome(Status.OK, response)

    return answer


def raised(error_type: str, status: Status) -> function_pb2.RunResponse:
    response = function_pb2.RunResponse(status=status.value)
    response.exit.result.error.type = error_type
    response.exit.result.error.message = "it failed"
    return response


def answered(response: function_pb2.RunResponse) -> Outcome:
    return Outcome(Status.OK, response)


def in_turn(*outcomes: Outcome) -> Answer:
    """Each attempt gets the next outcome; the last one is repeated."""
    remaining = list(outcomes)

    async def answer(request: function_pb2.RunRequest) -> Outcome:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return answer


def hanging(released: asyncio.Event | None = None) -> Answer:
    """No answer until ``released`` is set (never, without it), or the attempt's
    timeout: as the HTTP caller, a TIMEOUT then."""
    gate = released or asyncio.Event()

    async def answer(request: function_pb2.RunRequest) -> Outcome:
        deadline = request.expiration_time.ToNanoseconds() / 1e9
        try:
            await asyncio.wait_for(gate.wait(), max(0.0, deadline - time.time()))
        except (TimeoutError, asyncio.TimeoutError):
            return Outcome(Status.TIMEOUT, error_type="Timeout", message="no answer")
        return await returning(b"late")(request)

    return answer


@dataclass
class Running:
    store: MemoryStore
    engine: Engine
    caller: Scripted

    async def dispatch(
        self, function: str, *, endpoint: str = ENDPOINT, expires_in: float = 3600.0
    ) -> str:
        now = self.engine.clock()
        (dispatch_id,) = await self.store.dispatch(
            [NewCall(function, endpoint, b"", now + expires_in)], now=now
        )
        self.engine.wake()
        return dispatch_id

    async def until(self, dispatch_id: str, ready: Callable[[Call], bool]) -> Call:
        """The call once ``ready(call)`` holds, failing after ``BOUND`` seconds."""
        deadline = time.monotonic() + BOUND
        with self.engine.watching(dispatch_id) as changed:
            while True:
                found = await self.store.get(dispatch_id)
                assert found is not None, dispatch_id
                if ready(found):
                    return found
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{dispatch_id} did not get there in {BOUND} s: {found}"
                await changed(min(remaining, 0.01))

    async def done(self, dispatch_id: str) -> Call:
        return await self.until(dispatch_id, lambda call: call.done)


@contextlib.asynccontextmanager
async def running(
    answers: dict[str, Answer], store: MemoryStore | None = None, **options: Any
) -> AsyncIterator[Running]:
    store = store or await MemoryStore.open()
    caller = Scripted(answers=answers)
    options.setdefault("policy", POLICY)
    options.setdefault("idle_interval", 0.01)
    engine = Engine(store, caller, **options)
    task = asyncio.create_task(engine.run())
    try:
        yield Running(store, engine, caller)
    finally:
        engine.stop()
        await asyncio.wait_for(task, BOUND)
        await store.close()


def scenario(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 2 * BOUND))


def error(call: Call) -> tuple[str, str]:
    failure = call_pb2.CallResult.FromString(call.result).error
    return failure.type, failure.message


# --- retries --------------------------------------------------------------------------


def test_a_failing_call_is_retried_after_its_backoff_until_it_succeeds() -> None:
    failed = Outcome(Status.TEMPORARY_ERROR, error_type="HTTPError", message="503")

    async def body() -> None:
        answers = {"f": in_turn(failed, failed, answered(returning_response(b"ok")))}
        async with running(answers) as run:
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            assert (done.status, done.result, done.attempts) == (
                Status.OK,
                output(b"ok").SerializeToString(),
                3,
            )
            at = [a.at for a in run.caller.of(dispatch_id)]
            # At least half of each backoff's ceiling (0.02 s, then 0.04 s) in between.
            assert at[1] - at[0] >= 0.01
            assert at[2] - at[1] >= 0.02

    scenario(body)


def returning_response(value: bytes) -> function_pb2.RunResponse:
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.exit.result.CopyFrom(output(value))
    return response


def test_retry_after_longer_than_the_backoff_is_honoured() -> None:
    throttled = Outcome(Status.THROTTLED, error_type="HTTPError", message="429", retry_after=0.3)

    async def body() -> None:
        answers = {"f": in_turn(throttled, answered(returning_response(b"ok")))}
        async with running(answers) as run:
            dispatch_id = await run.dispatch("f")
            assert (await run.done(dispatch_id)).status == Status.OK
            first, second = (a.at for a in run.caller.of(dispatch_id))
            assert second - first >= 0.3

    scenario(body)


def test_the_last_attempt_ends_the_call_with_its_error() -> None:
    failed = Outcome(Status.TCP_ERROR, error_type="ConnectionRefused", message="refused")

    async def body() -> None:
        async with running({"f": in_turn(failed)}) as run:
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            assert (done.status, done.attempts) == (Status.TCP_ERROR, POLICY.max_attempts)
            assert error(done) == ("ConnectionRefused", "refused")
            assert len(run.caller.of(dispatch_id)) == POLICY.max_attempts

    scenario(body)


def test_a_final_status_is_not_retried() -> None:
    async def body() -> None:
        answer = answered(raised("ValueError", Status.PERMANENT_ERROR))
        async with running({"f": in_turn(answer)}) as run:
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            assert (done.status, done.attempts) == (Status.PERMANENT_ERROR, 1)
            assert error(done) == ("ValueError", "it failed")

    scenario(body)


# --- tail calls and Polls ------------------------------------------------------------


def test_a_tail_call_hands_the_call_over_to_another_function() -> None:
    tail = function_pb2.RunResponse(status=Status.OK.value)
    tail.exit.tail_call.function = "g"
    tail.exit.tail_call.endpoint = OTHER
    tail.exit.tail_call.input.CopyFrom(any_pb2.Any(type_url="test/bytes", value=b"in"))

    async def body() -> None:
        answers = {"f": in_turn(answered(tail)), "g": returning(b"from g")}
        async with running(answers) as run:
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            assert (done.function, done.endpoint, done.status) == ("g", OTHER, Status.OK)
            assert done.result == output(b"from g").SerializeToString()
            first, second = run.caller.of(dispatch_id)
            assert (first.request.function, second.request.function) == ("f", "g")
            assert second.endpoint == OTHER
            assert second.request.input.value == b"in"

    scenario(body)


def poll_on(*functions: str, min_results: int, state: bytes = b"state") -> Outcome:
    poll = poll_pb2.Poll(
        coroutine_state=state, min_results=min_results, max_results=len(functions) or 1
    )
    for index, function in enumerate(functions):
        poll.calls.add(function=function, correlation_id=index + 10)
    return answered(function_pb2.RunResponse(status=Status.OK.value, poll=poll))


def test_a_poll_runs_its_children_and_resumes_the_caller_with_their_results() -> None:
    async def parent(request: function_pb2.RunRequest) -> Outcome:
        if not request.HasField("poll_result"):
            return poll_on("a", "b", min_results=2)
        results = sorted((r.correlation_id, r.output.value) for r in request.poll_result.results)
        assert request.poll_result.coroutine_state == b"state"
        return answered(returning_response(b"+".join(value for _, value in results)))

    async def body() -> None:
        answers = {"parent": parent, "a": returning(b"A"), "b": returning(b"B")}
        async with running(answers) as run:
            dispatch_id = await run.dispatch("parent")
            done = await run.done(dispatch_id)
            assert (done.status, done.result) == (Status.OK, output(b"A+B").SerializeToString())
            children = await run.store.list(root_id=dispatch_id)
            assert sorted((c.function, c.parent_id, c.status) for c in children[1:]) == [
                ("a", dispatch_id, Status.OK),
                ("b", dispatch_id, Status.OK),
            ]
            resume = run.caller.of(dispatch_id)[-1].request
            assert sorted(r.correlation_id for r in resume.poll_result.results) == [10, 11]
            assert {r.dispatch_id for r in resume.poll_result.results} == {
                c.dispatch_id for c in children[1:]
            }

    scenario(body)


def test_an_invalid_poll_ends_the_call_invalid_response() -> None:
    async def body() -> None:
        async with running({"f": in_turn(poll_on("not a name", min_results=1))}) as run:
            dispatch_id = await run.dispatch("f")
            done = await run.done(dispatch_id)
            assert done.status == Status.INVALID_RESPONSE
            assert error(done)[0] == "InvalidPoll"
            assert await run.store.list(root_id=dispatch_id) == [done]

    scenario(body)


def test_incompatible_state_on_a_resume_runs_the_call_again_from_its_input() -> None:
    runs = 0

    async def parent(request: function_pb2.RunRequest) -> Outcome:
        nonlocal runs
        if request.HasField("poll_result"):
            return answered(raised("IncompatibleStateError", Status.INCOMPATIBLE_STATE))
        runs += 1
        return poll_on("a", min_results=1) if runs == 1 else answered(returning_response(b"new"))

    async def body() -> None:
        async with running({"parent": parent, "a": returning(b"A")}) as run:
            dispatch_id = await run.dispatch("parent")
            done = await run.done(dispatch_id)
            assert (done.status, done.restarts) == (Status.OK, 1)
            requests = [a.request for a in run.caller.of(dispatch_id)]
            # Its first run, the resume its code refused, then a run from its input again.
            assert [r.HasField("poll_result") for r in requests] == [False, True, False]

    scenario(body)


def test_a_step_mismatch_on_a_resume_is_final() -> None:
    async def parent(request: function_pb2.RunRequest) -> Outcome:
        if request.HasField("poll_result"):
            return answered(raised(STEP_MISMATCH, Status.INCOMPATIBLE_STATE))
        return poll_on("a", min_results=1)

    async def body() -> None:
        async with running({"parent": parent, "a": returning(b"A")}) as run:
            dispatch_id = await run.dispatch("parent")
            done = await run.done(dispatch_id)
            assert (done.status, done.restarts) == (Status.INCOMPATIBLE_STATE, 0)
            assert error(done)[0] == STEP_MISMATCH
            assert len(run.caller.of(dispatch_id)) == 2

    scenario(body)


# --- expiry ------------------------------------------------------------------------------


NO_ANSWER = Outcome(Status.TIMEOUT, error_type="Timeout", message="no answer in time")


def test_an_attempt_cut_short_by_the_expiration_ends_the_call_timeout() -> None:
    async def body() -> None:
        async with running({"f": in_turn(NO_ANSWER)}, attempt_timeout=300.0) as run:
            dispatch_id = await run.dispatch("f", expires_in=60.0)
            done = await run.done(dispatch_id)
            assert done.status == Status.TIMEOUT
            (attempt,) = run.caller.of(dispatch_id)
            # Sent with the call's expiration, not a whole attempt's timeout.
            assert attempt.timeout <= 60.0
            assert attempt.request.expiration_time == timestamp(done.expires_at)

    scenario(body)


def test_an_attempt_that_timed_out_with_time_left_is_retried() -> None:
    async def body() -> None:
        async with running({"f": in_turn(NO_ANSWER)}, attempt_timeout=10.0) as run:
            dispatch_id = await run.dispatch("f", expires_in=3600.0)
            done = await run.done(dispatch_id)
            assert (done.status, error(done)) == (Status.TIMEOUT, ("Timeout", "no answer in time"))
            attempts = run.caller.of(dispatch_id)
            assert len(attempts) == POLICY.max_attempts
            assert {a.timeout for a in attempts} == {10.0}

    scenario(body)


def test_a_call_that_expires_between_retries_ends_timeout_with_its_last_error() -> None:
    failed = Outcome(Status.TEMPORARY_ERROR, error_type="HTTPError", message="503", retry_after=120)

    async def body() -> None:
        async with running({"f": in_turn(failed)}) as run:
            dispatch_id = await run.dispatch("f", expires_in=60.0)
            done = await run.done(dispatch_id)
            assert (done.status, error(done)) == (Status.TIMEOUT, ("HTTPError", "503"))
            assert len(run.caller.of(dispatch_id)) == 1

    scenario(body)


def test_a_call_that_expired_before_its_attempt_is_not_run() -> None:
    async def body() -> None:
        async with running({"f": returning(b"never")}) as run:
            dispatch_id = await run.dispatch("f", expires_in=-1.0)
            done = await run.done(dispatch_id)
            assert (done.status, error(done)) == (
                Status.TIMEOUT,
                ("DeadlineExceeded", "the call expired"),
            )
            assert run.caller.of(dispatch_id) == []

    scenario(body)


# --- the destination limit ------------------------------------------------------------------


def test_no_more_attempts_than_the_destinations_limit_are_in_flight() -> None:
    async def slow(request: function_pb2.RunRequest) -> Outcome:
        await asyncio.sleep(0.02)
        return answered(returning_response(b"ok"))

    async def body() -> None:
        limiter = Limiter(initial=2.0, cap=2.0)
        async with running({"f": slow}, limiter=limiter) as run:
            ids = [await run.dispatch("f") for _ in range(8)]
            for dispatch_id in ids:
                assert (await run.done(dispatch_id)).status == Status.OK
            assert run.caller.most_in_flight == 2

    scenario(body)


# --- the claim loop's wake-ups ---------------------------------------------------------

# Longer than any test waits: what these tests wait for comes from a wake-up, never from
# the claim loop's idle polling.
NO_POLLING = 1000.0


class CountingClaims(MemoryStore):
    """The in-memory store, noting how many calls each claim took."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[int] = []

    async def claim(self, **options: Any) -> list[Any]:
        claimed = await super().claim(**options)
        self.claims.append(len(claimed))
        return claimed


async def settled(engine: Engine) -> None:
    """Once no attempt is in flight, the engine's loop given its turns (a wake-up it got
    claims in one of them)."""
    deadline = time.monotonic() + BOUND
    while engine.in_flight:
        assert time.monotonic() < deadline, f"attempts still in flight after {BOUND} s"
        await asyncio.sleep(0.001)
    for _ in range(50):
        await asyncio.sleep(0)


def test_a_call_that_ends_with_nothing_waiting_wakes_no_empty_claim() -> None:
    """A call's end frees a slot that no ready call waits for: the loop is not woken to
    find nothing (a claim, and on a database a transaction, for nothing)."""

    async def body() -> None:
        store = CountingClaims()
        async with running({"f": returning(b"ok")}, store, idle_interval=NO_POLLING) as run:
            await settled(run.engine)
            before = len(store.claims)
            for _ in range(3):
                assert (await run.done(await run.dispatch("f"))).status == Status.OK
                await settled(run.engine)
            assert store.claims[before:] == [1, 1, 1]

    scenario(body)


def test_an_attempt_that_ends_starts_a_call_its_destinations_limit_held() -> None:
    """The destination's limit holds the second call back; the first one's end frees its
    room and starts it at once, without waiting for the loop's idle polling."""
    released = asyncio.Event()

    async def body() -> None:
        answers = {"first": hanging(released), "second": returning(b"ok")}
        options = {"limiter": Limiter(initial=1.0), "idle_interval": NO_POLLING}
        async with running(answers, **options) as run:
            first = await run.dispatch("first")
            await run.until(first, lambda call: call.state is State.RUNNING)
            second = await run.dispatch("second")
            await settled_claims(run)
            assert (await run.store.get(second)).state is State.READY  # type: ignore[union-attr]
            released.set()
            assert (await run.done(first)).status == Status.OK
            assert (await run.done(second)).status == Status.OK

    scenario(body)


class HeldClaims(MemoryStore):
    """The in-memory store whose claims, once ``hold`` is cleared, read the calls and
    then wait for ``hold`` before answering: what commits meanwhile is not in them."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = asyncio.Event()
        self.hold.set()
        self.held = asyncio.Event()

    async def claim(self, **options: Any) -> list[Any]:
        claimed = await super().claim(**options)
        if not self.hold.is_set():
            self.held.set()
            await self.hold.wait()
        return claimed


def test_a_dispatch_made_while_a_claim_is_in_flight_starts_without_the_idle_polling() -> None:
    """A Dispatch that commits after a claim read the store, but before the claim
    answered, wakes the loop: it is claimed then, not at the next idle polling."""

    async def body() -> None:
        store = HeldClaims()
        async with running({"f": returning(b"ok")}, store, idle_interval=NO_POLLING) as run:
            await settled(run.engine)
            store.hold.clear()
            run.engine.wake()
            await asyncio.wait_for(store.held.wait(), BOUND)
            dispatch_id = await run.dispatch("f")  # its wake-up comes during the claim
            store.hold.set()
            assert (await run.done(dispatch_id)).status == Status.OK

    scenario(body)


class HeldEndings(MemoryStore):
    """The in-memory store whose passes over ended calls' descendants wait for
    ``hold`` once it is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = asyncio.Event()
        self.hold.set()
        self.held = asyncio.Event()
        self.passes = 0

    async def end_descendants(self, *, now: float, limit: int = 100) -> int:
        self.passes += 1
        if not self.hold.is_set():
            self.held.set()
            await self.hold.wait()
        return await super().end_descendants(now=now, limit=limit)


def test_a_stop_told_while_descendants_are_being_ended_is_not_waited_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``stop()`` while the pass that ends descendants is in the store: the engine stops
    once that pass is done, not after the interval between two passes."""
    monkeypatch.setattr(engine_module, "ENDING_INTERVAL", NO_POLLING)

    async def body() -> None:
        store = HeldEndings()
        store.hold.clear()
        engine = Engine(store, Scripted(), policy=POLICY, idle_interval=NO_POLLING)
        task = asyncio.create_task(engine.run())
        try:
            await asyncio.wait_for(store.held.wait(), BOUND)
            engine.stop()
            store.hold.set()
            await asyncio.wait_for(asyncio.shield(task), BOUND)
        finally:
            task.cancel()
            await store.close()

    scenario(body)


def test_a_cancel_told_while_descendants_are_being_ended_gets_its_own_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel whose descendants are to be ended (``end_descendants_soon``), told while
    a pass is in the store, gets a pass of its own at once, not after the interval
    between two passes: the pass in flight may have read the tree before the cancel."""
    monkeypatch.setattr(engine_module, "ENDING_INTERVAL", NO_POLLING)

    async def body() -> None:
        store = HeldEndings()
        async with running({}, store, idle_interval=NO_POLLING) as run:
            store.hold.clear()
            run.engine.end_descendants_soon()
            await asyncio.wait_for(store.held.wait(), BOUND)
            passes = store.passes  # the held one counted
            run.engine.end_descendants_soon()  # told while the pass is held
            store.hold.set()
            deadline = time.monotonic() + BOUND
            while store.passes < passes + 1:
                assert time.monotonic() < deadline, f"no pass of its own in {BOUND} s"
                await asyncio.sleep(0.001)

    scenario(body)


async def settled_claims(run: Running) -> None:
    """The engine's loop given its turns (the claim a dispatch woke done)."""
    for _ in range(50):
        await asyncio.sleep(0)


def test_a_childs_end_resumes_its_waiting_parent_at_once() -> None:
    """The end of a Poll's last child makes its parent ready: the loop claims it then,
    not at its next idle polling."""

    async def parent(request: function_pb2.RunRequest) -> Outcome:
        if not request.HasField("poll_result"):
            return poll_on("a", min_results=1)
        return answered(returning_response(b"resumed"))

    async def body() -> None:
        answers = {"parent": parent, "a": returning(b"A")}
        async with running(answers, idle_interval=NO_POLLING) as run:
            done = await run.done(await run.dispatch("parent"))
            assert (done.status, done.result) == (
                Status.OK,
                output(b"resumed").SerializeToString(),
            )

    scenario(body)


# --- children left behind ---------------------------------------------------------------------


def test_a_call_that_ends_cancels_its_unfinished_children() -> None:
    released = asyncio.Event()

    async def parent(request: function_pb2.RunRequest) -> Outcome:
        if request.HasField("poll_result"):
            return answered(returning_response(b"enough"))
        return poll_on("quick", "stuck", min_results=1)

    stuck_started = asyncio.Event()
    hang = hanging(released)

    async def stuck_attempt(request: function_pb2.RunRequest) -> Outcome:
        stuck_started.set()
        return await hang(request)

    async def quick(request: function_pb2.RunRequest) -> Outcome:
        # Answers once its sibling is running, so that the sibling's attempt is in flight
        # when the parent ends: its late answer is what this test is about.
        await stuck_started.wait()
        return await returning(b"Q")(request)

    async def body() -> None:
        answers = {"parent": parent, "quick": quick, "stuck": stuck_attempt}
        async with running(answers) as run:
            dispatch_id = await run.dispatch("parent")
            assert (await run.done(dispatch_id)).status == Status.OK
            (stuck,) = await run.store.list(root_id=dispatch_id, function="stuck")
            assert (stuck.state, stuck.status) == (State.DONE, Status.PERMANENT_ERROR)
            assert error(stuck) == ("Cancelled", "its parent call ended")
            # Its attempt answers after all: too late, it is not recorded.
            released.set()
            await run.until(stuck.dispatch_id, lambda _: run.engine.in_flight == 0)
            assert await run.store.get(stuck.dispatch_id) == stuck

    scenario(body)


def test_cancelling_a_waiting_call_ends_its_children() -> None:
    released = asyncio.Event()

    async def body() -> None:
        answers = {"parent": in_turn(poll_on("stuck", min_results=1)), "stuck": hanging(released)}
        async with running(answers) as run:
            dispatch_id = await run.dispatch("parent")
            await run.until(dispatch_id, lambda call: call.state is State.WAITING)
            ended = await run.store.cancel(dispatch_id, Status.PERMANENT_ERROR.value, b"", now=0)
            assert ended == 2
            tree = await run.store.list(root_id=dispatch_id)
            assert [(c.function, c.state) for c in tree] == [
                ("parent", State.DONE),
                ("stuck", State.DONE),
            ]
            released.set()  # a late answer, if the child was running: not recorded
            await run.until(dispatch_id, lambda _: run.engine.in_flight == 0)
            assert await run.store.list(root_id=dispatch_id) == tree

    scenario(body)


@pytest.mark.parametrize("ends", ["while it waits", "while it is looked at"])
def test_a_follower_ends_when_its_call_ends_not_at_its_next_look(ends: str) -> None:
    """The call a follower follows ends: the follower, handed back to look again later
    (by a clock that never gets there), ends then with its outcome."""
    released = asyncio.Event()
    looking = asyncio.Event()
    # A clock that stands still: a look due later never comes by time. (Started at the
    # wall clock's time: the attempts' deadlines are read on it.)
    clock = FixedClock(time.time())

    async def body() -> None:
        answers = {"first": hanging(released)}
        async with running(answers, idle_interval=NO_POLLING, clock=clock) as run:
            store = run.store
            first = await run.dispatch("first")
            await run.until(first, lambda call: call.state is State.RUNNING)
            if ends == "while it is looked at":
                # The follower reads the call it follows as running, then that call
                # ends before the follower is handed back.
                async def get_then_end(dispatch_id: str) -> Call | None:
                    found = await store.get(dispatch_id)
                    if dispatch_id == first and not looking.is_set():
                        looking.set()
                        released.set()
                        await run.done(first)
                    return found

                run.engine.store.get = get_then_end  # type: ignore[method-assign]
            now = clock()
            (follower,) = await store.dispatch(
                [NewCall("first", ENDPOINT, b"", now + 3600, follows=first)], now=now
            )
            run.engine.wake()
            if ends == "while it waits":
                await run.until(follower, lambda call: call.ready_at > now)
                released.set()
            else:
                await asyncio.wait_for(looking.wait(), BOUND)
            assert (await run.done(first)).status == Status.OK
            ended = await run.done(follower)
            assert ended.status == Status.OK
            assert ended.result == (await run.done(first)).result

    scenario(body)


def test_many_followers_of_one_call_all_end_when_it_ends() -> None:
    """More followers than the claim loop makes claimable in one turn: the rest follow
    in the next turns."""
    released = asyncio.Event()
    clock = FixedClock(time.time())
    count = 3 * engine_module.LOOKS_PER_TURN + 1

    async def body() -> None:
        answers = {"first": hanging(released)}
        # Room for them all at once: followers are claimed within their destination's.
        room = Limiter(initial=float(count + 1))
        options = {"idle_interval": NO_POLLING, "clock": clock, "limiter": room}
        async with running(answers, concurrency=count + 1, **options) as run:
            first = await run.dispatch("first")
            await run.until(first, lambda call: call.state is State.RUNNING)
            now = clock()
            followers = await run.store.dispatch(
                [NewCall("first", ENDPOINT, b"", now + 3600, follows=first)] * count, now=now
            )
            run.engine.wake()
            for follower in followers:
                await run.until(follower, lambda call: call.ready_at > now)
            released.set()
            for follower in followers:
                assert (await run.done(follower)).status == Status.OK

    scenario(body)


def test_a_follower_checks_its_call_again_by_its_own_time_not_the_idle_polling() -> None:
    """A follower (a call that takes the outcome of the call with its key) handed back
    to the store to look again later is claimed again by then, though nothing else
    wakes the loop."""
    released = asyncio.Event()

    async def body() -> None:
        async with running({"first": hanging(released)}, idle_interval=NO_POLLING) as run:
            first = await run.dispatch("first")
            await run.until(first, lambda call: call.state is State.RUNNING)
            now = run.engine.clock()
            (follower,) = await run.store.dispatch(
                [NewCall("first", ENDPOINT, b"", now + 3600, follows=first)], now=now
            )
            run.engine.wake()
            # Looked at once and handed back for later (its attempt given back: the
            # count of attempts is 1 only in between, so it is not what is waited for).
            await run.until(follower, lambda call: call.ready_at > now)
            await settled_claims(run)
            released.set()
            assert (await run.done(first)).status == Status.OK
            assert (await run.done(follower)).status == Status.OK

    scenario(body)
