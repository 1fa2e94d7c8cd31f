"""Durable workflows replayed from their journal, with no I/O: the harness in
``dispatchlet.testing`` plays the scheduler, and some tests build the resumes by hand."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dispatchlet import (
    AllFailed,
    CallFailed,
    Endpoint,
    IncompatibleState,
    PermanentError,
    Status,
    any,
    call,
    gather,
    patched,
    race,
    sleep,
)
from dispatchlet.core import values, workflow
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.proto.dispatchlet.workflow.v1 import journal_pb2
from dispatchlet.testing import check_replay, run_workflow
from hypothesis import given, settings
from hypothesis import strategies as st


def make_endpoint(**options: Any) -> Endpoint:
    endpoint = Endpoint(insecure=True, **options)

    @endpoint.function
    def double(x: int) -> int:
        return 2 * x

    @endpoint.function
    def fail(kind: str) -> None:
        if kind == "permanent":
            raise PermanentError("no such account")
        if kind == "value":
            raise ValueError("bad amount")
        raise TimeoutError("too slow")

    @endpoint.function
    async def three_steps(x: int) -> list[int]:
        a = await double(x)
        b = await double(a)
        c = await double(b)
        return [a, b, c]

    return endpoint


@pytest.fixture
def endpoint() -> Endpoint:
    return make_endpoint()


def start(name: str, value: Any) -> function_pb2.RunRequest:
    return function_pb2.RunRequest(function=name, input=values.to_any(value))


def resume(name: str, poll: Any, results: list[call_pb2.CallResult]) -> function_pb2.RunRequest:
    request = function_pb2.RunRequest(function=name)
    request.poll_result.typed_coroutine_state.CopyFrom(poll.typed_coroutine_state)
    request.poll_result.results.extend(results)
    return request


def ok(correlation_id: int, value: Any) -> call_pb2.CallResult:
    return call_pb2.CallResult(correlation_id=correlation_id, output=values.to_any(value))


def output(response: function_pb2.RunResponse) -> Any:
    assert response.WhichOneof("directive") == "exit", response
    assert response.status == Status.OK.value, response.exit.result.error
    return values.from_any(response.exit.result.output)


def test_a_three_step_workflow_suspends_at_each_step(endpoint: Endpoint) -> None:
    run = run_workflow(endpoint, "three_steps", 3, results_per_resume=1)
    assert (run.status, run.output) == (Status.OK, [6, 12, 24])
    assert run.resumes == 3
    assert [(c.function, c.correlation_id) for c in run.calls] == [
        ("double", 1),
        ("double", 2),
        ("double", 3),
    ]


def test_by_hand_each_poll_carries_the_journal_and_one_call(endpoint: Endpoint) -> None:
    first = endpoint.run(start("three_steps", 5))
    assert first.WhichOneof("directive") == "poll"
    poll = first.poll
    assert [(c.function, values.from_any(c.input), c.endpoint) for c in poll.calls] == [
        ("double", 5, "")
    ]
    assert (poll.min_results, poll.max_results) == (1, 1000)
    assert poll.max_wait.seconds >= 1
    assert poll.typed_coroutine_state.type_url == (
        "type.googleapis.com/dispatchlet.workflow.v1.Journal"
    )
    journal = journal_pb2.Journal.FromString(poll.typed_coroutine_state.value)
    assert (journal.version, journal.function, len(journal.steps)) == (1, "three_steps", 1)
    assert values.from_any(journal.input) == 5
    second = endpoint.run(resume("three_steps", poll, [ok(1, 10)]))
    assert [values.from_any(c.input) for c in second.poll.calls] == [10]
    assert second.poll.calls[0].correlation_id == 2


def test_results_twice_or_for_unknown_ids_are_ignored(endpoint: Endpoint) -> None:
    poll = endpoint.run(start("three_steps", 1)).poll
    noisy = [ok(1, 2), ok(1, 999), ok(7, 5), ok(0, 5), ok(2, 5)]
    second = endpoint.run(resume("three_steps", poll, noisy)).poll
    # Slot 1's result is the first one; the result for slot 2 came before slot 2 was
    # started, so it too is ignored: the call of double(2) is made.
    assert [values.from_any(c.input) for c in second.calls] == [2]
    third = endpoint.run(resume("three_steps", second, [ok(2, 4), ok(2, 0)])).poll
    assert [values.from_any(c.input) for c in third.calls] == [4]
    assert output(endpoint.run(resume("three_steps", third, [ok(3, 8), ok(1, -1)]))) == [2, 4, 8]


def test_replay_does_not_depend_on_the_order_results_come_in() -> None:
    endpoint = make_endpoint()

    @endpoint.function
    async def fan(n: int) -> list[int]:
        return await gather(*(endpoint.functions["double"](i) for i in range(n)))

    expected = [2 * i for i in range(20)]
    for order in ("arrival", "reverse", random.Random(7)):
        for per_resume in (1, 3, 1000):
            run = run_workflow(endpoint, fan, 20, results_per_resume=per_resume, order=order)
            assert (run.status, run.output) == (Status.OK, expected)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4),
    per_resume=st.integers(min_value=1, max_value=7),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_schedule_of_results_gives_the_same_outcome(
    sizes: list[int], per_resume: int, seed: int
) -> None:
    endpoint = make_endpoint()
    double = endpoint.functions["double"]

    @endpoint.function
    async def stages(widths: list[int]) -> list[Any]:
        out: list[Any] = []
        for stage, width in enumerate(widths):
            calls = [double(stage * 10 + i) for i in range(width)]
            out.append(await gather(*calls))
            out.append(
                await race(double(stage), double(stage + 100)) in (2 * stage, 2 * stage + 200)
            )
        return out

    run = run_workflow(
        endpoint, stages, sizes, results_per_resume=per_resume, order=random.Random(seed)
    )
    expected: list[Any] = []
    for stage, width in enumerate(sizes):
        expected += [[2 * (stage * 10 + i) for i in range(width)], True]
    assert (run.status, run.output) == (Status.OK, expected)


def test_a_gather_larger_than_a_poll_is_spread_over_several() -> None:
    endpoint = make_endpoint()
    double = endpoint.functions["double"]

    @endpoint.function
    async def wide(n: int) -> int:
        return sum(await gather(*(double(i) for i in range(n))))

    polls = []
    response = endpoint.run(start("wide", 2500))
    while response.WhichOneof("directive") == "poll":
        poll = response.poll
        polls.append((len(poll.calls), poll.min_results))
        results = [ok(c.correlation_id, 2 * values.from_any(c.input)) for c in poll.calls]
        response = endpoint.run(resume("wide", poll, results))
    # 1000 calls at a time; while calls are left to start the workflow comes back after
    # the first result, then waits for all that are pending.
    assert polls == [(1000, 1), (1000, 1), (500, 500)]
    assert output(response) == 2 * sum(range(2500))


def test_a_poll_asks_for_what_the_await_needs(endpoint: Endpoint) -> None:
    double = endpoint.functions["double"]

    @endpoint.function
    async def all_of() -> Any:
        return await gather(double(1), double(2), double(3))

    @endpoint.function
    async def first_of() -> Any:
        return await any(double(1), double(2), double(3))

    @endpoint.function
    async def fastest() -> Any:
        return await race(double(1), double(2))

    assert endpoint.run(start("all_of", None)).poll.min_results == 3
    assert endpoint.run(start("first_of", None)).poll.min_results == 1
    assert endpoint.run(start("fastest", None)).poll.min_results == 1


def test_gather_raises_the_first_error_to_arrive(endpoint: Endpoint) -> None:
    double, fail = endpoint.functions["double"], endpoint.functions["fail"]

    @endpoint.function
    async def mixed() -> Any:
        try:
            await gather(double(1), fail("value"), fail("permanent"))
        except CallFailed as exc:
            return [exc.function, exc.error_type, exc.message, exc.status.name]
        return None

    arrival = run_workflow(endpoint, mixed)
    assert arrival.output == ["fail", "ValueError", "bad amount", "INVALID_ARGUMENT"]
    reverse = run_workflow(endpoint, mixed, order="reverse")
    assert reverse.output == [
        "fail",
        "dispatchlet.core.errors.PermanentError",
        "no such account",
        "PERMANENT_ERROR",
    ]


def test_a_childs_error_is_caught_as_its_type_or_ends_the_workflow(endpoint: Endpoint) -> None:
    fail = endpoint.functions["fail"]

    @endpoint.function
    async def careful() -> str:
        try:
            await fail("value")
        except ValueError as exc:  # the built-in type of the child's error
            caught = f"value:{isinstance(exc, CallFailed)}"
        try:
            await fail("permanent")
        except PermanentError:
            return caught + "+permanent"
        return "no"

    @endpoint.function
    async def careless(kind: str) -> None:
        await fail(kind)

    assert run_workflow(endpoint, careful).output == "value:True+permanent"
    permanent = run_workflow(endpoint, careless, "permanent")
    assert permanent.status is Status.PERMANENT_ERROR
    assert permanent.error is not None
    assert "no such account" in permanent.error.message
    assert run_workflow(endpoint, careless, "value").status is Status.INVALID_ARGUMENT
    # A child that ran out of retries (TIMEOUT): retrying the workflow would replay the
    # same failure, so it ends PERMANENT_ERROR, naming the child's status.
    timed_out = run_workflow(endpoint, careless, "timeout")
    assert timed_out.status is Status.PERMANENT_ERROR
    assert timed_out.error is not None
    assert "TIMEOUT" in timed_out.error.message


def test_retryable_failures_are_retried_as_the_scheduler_retries_them() -> None:
    endpoint = make_endpoint()
    fail = endpoint.functions["fail"]
    attempts: list[int] = []  # the workflow clock at each attempt of the flaky step

    @endpoint.function
    def flaky(times: int) -> str:
        attempts.append(workflow.clock())
        if len(attempts) <= times:
            raise TimeoutError("not yet")
        return f"after {len(attempts)}"

    @endpoint.function
    async def flow(times: int) -> str:
        return str(await flaky(times))

    @endpoint.function
    async def careless(kind: str) -> None:
        await fail(kind)

    run = run_workflow(endpoint, flow, 9)
    assert (run.status, run.output) == (Status.OK, "after 10")
    assert (run.child_attempts, run.attempts) == ({1: 10}, 1)
    # Between attempts, the clock moved on by the scheduler's backoff (half to all of
    # 0.5 s doubled each time, up to 60 s) rather than the test waiting for it.
    for number, (before, after) in enumerate(itertools.pairwise(attempts), 1):
        ceiling = min(60.0, 0.5 * 2 ** (number - 1))
        assert after - before >= ceiling / 2 * 1e9, (number, after - before)

    # Out of attempts: the step ends with its last error, after max_attempts (50 as in
    # the scheduler, by default); the workflow cannot go on without it.
    attempts.clear()
    exhausted = run_workflow(endpoint, flow, 100)
    assert (exhausted.status, exhausted.child_attempts) == (Status.PERMANENT_ERROR, {1: 50})
    attempts.clear()
    assert run_workflow(endpoint, flow, 100, max_attempts=3).child_attempts == {1: 3}
    # Statuses that are not retryable are final at once.
    for kind, status in (("permanent", Status.PERMANENT_ERROR), ("value", Status.INVALID_ARGUMENT)):
        final = run_workflow(endpoint, careless, kind)
        assert (final.children, final.child_attempts) == ({1: status}, {1: 1})


def test_the_workflow_itself_is_retried_and_restarted_as_the_scheduler_would() -> None:
    endpoint = make_endpoint()
    double = endpoint.functions["double"]
    runs: list[str] = []

    @endpoint.function
    async def shaky() -> int:
        value = await double(1)
        runs.append("after the step")
        if len(runs) == 1:
            raise ConnectionError("reset")  # TCP_ERROR: retryable
        if len(runs) == 2:
            raise IncompatibleState("cannot read this state")  # on a resume: start over
        return int(value)

    run = run_workflow(endpoint, shaky)
    assert (run.status, run.output) == (Status.OK, 2)
    # The restart ran it from its input again: a second Poll for the step.
    assert [c.function for c in run.calls] == ["double", "double"]
    assert run.resumes == 2

    # Steps that changed order are final: starting over would repeat them.
    @endpoint.function
    def triple(x: int) -> int:
        return 3 * x

    seen: list[int] = []

    @endpoint.function
    async def reordered() -> int:
        seen.append(len(seen))
        step = double if len(seen) == 1 else triple  # as if redeployed between runs
        return int(await step(1))

    mismatch = run_workflow(endpoint, reordered)
    assert mismatch.status is Status.INCOMPATIBLE_STATE
    assert mismatch.error is not None
    assert mismatch.error.type.endswith("StepMismatch")
    assert mismatch.attempts == 1


def test_a_workflow_step_with_arguments_that_do_not_bind_is_never_started() -> None:
    endpoint = make_endpoint()

    @endpoint.function
    def add(a: int, b: int) -> int:
        return a + b

    @endpoint.function
    async def typo() -> int:
        return int(await add(1, 2, 3))  # type: ignore[call-arg]

    run = run_workflow(endpoint, typo)
    assert run.status is Status.INVALID_ARGUMENT
    assert run.calls == []
    assert run.error is not None
    assert (run.error.type, run.error.message) == (
        "TypeError",
        "add(): too many positional arguments",
    )


def test_any_returns_the_first_success_and_raises_when_all_fail(endpoint: Endpoint) -> None:
    double, fail = endpoint.functions["double"], endpoint.functions["fail"]

    @endpoint.function
    async def first_success() -> int:
        return int(await any(fail("value"), double(21), double(50)))

    @endpoint.function
    async def all_fail() -> list[str]:
        try:
            await any(fail("value"), fail("permanent"))
        except AllFailed as exc:
            return [e.error_type for e in exc.errors]
        return []

    assert run_workflow(endpoint, first_success, results_per_resume=1).output == 42
    assert run_workflow(endpoint, first_success, order="reverse").output == 100
    assert run_workflow(endpoint, all_fail, order="reverse").output == [
        "ValueError",
        "dispatchlet.core.errors.PermanentError",
    ]


def test_race_returns_or_raises_the_first_outcome(endpoint: Endpoint) -> None:
    double, fail = endpoint.functions["double"], endpoint.functions["fail"]

    @endpoint.function
    async def first() -> Any:
        try:
            return await race(fail("value"), double(1))
        except ValueError:
            return "error first"

    assert run_workflow(endpoint, first).output == "error first"
    assert run_workflow(endpoint, first, order="reverse").output == 2


def test_a_sleep_is_a_poll_without_calls_for_its_duration(endpoint: Endpoint) -> None:
    @endpoint.function
    async def nap(seconds: float) -> str:
        await sleep(timedelta(seconds=seconds))
        await sleep(0)  # no wait at all: no Poll
        await sleep(seconds)
        return "rested"

    first = endpoint.run(start("nap", 30.0))
    poll = first.poll
    assert list(poll.calls) == []
    assert 29 <= poll.max_wait.seconds <= 30
    # Resumed too early (the timer has not fired): it waits for the rest.
    again = endpoint.run(resume("nap", poll, [])).poll
    assert list(again.calls) == []
    assert again.max_wait.seconds <= 30
    run = run_workflow(endpoint, nap, 3600.0)
    assert (run.status, run.output, run.resumes) == (Status.OK, "rested", 2)


def test_race_against_a_timer(endpoint: Endpoint) -> None:
    double = endpoint.functions["double"]

    @endpoint.function
    async def deadline() -> Any:
        return await race(double(4), sleep(60))

    first = endpoint.run(start("deadline", None)).poll
    assert [c.function for c in first.calls] == ["double"]
    assert 59 <= first.max_wait.seconds <= 60
    assert run_workflow(endpoint, deadline).output == 8


def record_journal(endpoint: Endpoint, name: str, value: Any, results: int) -> Any:
    """The Poll of a run of ``name`` after ``results`` of its calls returned."""
    poll = endpoint.run(start(name, value)).poll
    for _ in range(results):
        results_in = [ok(c.correlation_id, 2 * values.from_any(c.input)) for c in poll.calls]
        poll = endpoint.run(resume(name, poll, results_in)).poll
    return poll


def order_endpoint(version: str) -> Endpoint:
    """One workflow in three versions of its code."""
    endpoint = Endpoint(insecure=True)
    if version == "edited":

        @endpoint.function
        def added(x: int) -> int:  # a new function, and lines above the workflow
            return x

    @endpoint.function
    def charge(x: int) -> int:
        return 2 * x

    @endpoint.function
    def ship(x: int) -> int:
        return 2 * x

    @endpoint.function
    async def order(x: int) -> list[int]:
        first = await charge(x)
        if version == "reordered":
            return [await ship(first), await charge(first)]
        if version == "patched" and patched("ship-first"):
            return [await ship(first), await charge(first)]
        return [await charge(first), await ship(first)]

    return endpoint


def test_edited_code_resumes_a_journal_recorded_before() -> None:
    poll = record_journal(order_endpoint("original"), "order", 1, results=1)
    edited = order_endpoint("edited")
    second = edited.run(resume("order", poll, [ok(2, 4)])).poll
    assert [c.function for c in second.calls] == ["ship"]
    assert output(edited.run(resume("order", second, [ok(3, 8)]))) == [4, 8]


def test_a_changed_step_order_is_incompatible_and_names_the_slot() -> None:
    poll = record_journal(order_endpoint("original"), "order", 1, results=1)
    answer = order_endpoint("reordered").run(resume("order", poll, [ok(2, 4)]))
    assert answer.status == Status.INCOMPATIBLE_STATE.value
    error = answer.exit.result.error
    assert error.type == "dispatchlet.core.errors.StepMismatch"
    assert "slot 1" in error.message
    assert "'charge'" in error.message
    assert "'ship'" in error.message


def test_patched_keeps_runs_in_flight_on_their_old_branch() -> None:
    old = record_journal(order_endpoint("original"), "order", 1, results=1)
    code = order_endpoint("patched")
    second = code.run(resume("order", old, [ok(2, 4)])).poll
    assert [c.function for c in second.calls] == ["ship"]  # the old order: charge, ship
    assert output(code.run(resume("order", second, [ok(3, 8)]))) == [4, 8]
    # A run that starts with the patched code takes the new branch, and keeps it.
    run = run_workflow(code, "order", 1, results_per_resume=1)
    assert [c.function for c in run.calls] == ["charge", "ship", "charge"]
    assert run.output == [4, 4]
    # A journal that reached the patch before the call after it was made resumes too.
    assert all(check_replay(code, j).ok for j in run.journals)


def test_check_replay_reports_what_a_deploy_would_do_to_runs_in_flight() -> None:
    original = order_endpoint("original")
    journals = run_workflow(original, "order", 1, results_per_resume=1).journals
    assert len(journals) == 3
    for journal in journals:
        assert check_replay(order_endpoint("edited"), journal).ok
        assert check_replay(order_endpoint("patched"), journal).ok
    checks = [check_replay(order_endpoint("reordered"), j) for j in journals]
    assert [c.ok for c in checks] == [True, False, False]
    assert "slot 1" in checks[1].outcome
    assert checks[0].outcome == "suspended"
    gone = check_replay(Endpoint(insecure=True), journals[0])
    assert not gone.ok
    assert "no such function" in gone.outcome
    assert not check_replay(original, b"\xff\xff").ok


def test_states_it_cannot_read_are_incompatible_and_restartable(endpoint: Endpoint) -> None:
    poll = endpoint.run(start("three_steps", 1)).poll
    journal = journal_pb2.Journal.FromString(poll.typed_coroutine_state.value)
    cases = []
    newer = journal_pb2.Journal()
    newer.CopyFrom(journal)
    newer.version = 2
    other = journal_pb2.Journal()
    other.CopyFrom(journal)
    other.function = "double"
    for replaced in (newer, other):
        request = resume("three_steps", poll, [])
        request.poll_result.typed_coroutine_state.value = replaced.SerializeToString()
        cases.append(request)
    garbage = resume("three_steps", poll, [])
    garbage.poll_result.typed_coroutine_state.value = b"\xff\xff\xff"
    foreign = resume("three_steps", poll, [])
    foreign.poll_result.coroutine_state = b"pickled frames"
    wrong_type = resume("three_steps", poll, [])
    wrong_type.poll_result.typed_coroutine_state.type_url = "type.googleapis.com/x.Y"
    for request in (*cases, garbage, foreign, wrong_type):
        answer = endpoint.run(request)
        assert answer.status == Status.INCOMPATIBLE_STATE.value
        assert answer.exit.result.error.type == "dispatchlet.core.errors.IncompatibleState"


def test_awaiting_other_things_in_a_workflow_is_a_clear_error(endpoint: Endpoint) -> None:
    double = endpoint.functions["double"]

    @endpoint.function
    async def after_a_step() -> None:
        await double(1)
        await asyncio.sleep(0.01)

    @endpoint.function
    async def before_a_step() -> None:
        await asyncio.sleep(0)
        await double(1)

    @endpoint.function
    async def swallowing() -> str:
        await double(1)
        with contextlib.suppress(Exception):
            await asyncio.sleep(0.01)
        return "went on"

    @endpoint.function
    async def plain() -> str:
        await asyncio.sleep(0.01)
        return "a plain coroutine still works"

    for name in ("after_a_step", "before_a_step", "swallowing"):
        run = run_workflow(endpoint, name)
        assert run.status is Status.PERMANENT_ERROR, name
        assert run.error is not None
        assert "not a dispatchlet step" in run.error.message
        assert "runs again from its start" in run.error.message
    assert run_workflow(endpoint, plain).output == "a plain coroutine still works"


def test_the_step_and_journal_limits_are_clear_errors() -> None:
    endpoint = make_endpoint(max_workflow_steps=5, max_journal_size=2000)
    double = endpoint.functions["double"]

    @endpoint.function
    async def many(n: int) -> int:
        return sum(await gather(*(double(i) for i in range(n))))

    @endpoint.function
    async def big(text: str) -> str:
        await double(1)
        return text

    assert run_workflow(endpoint, many, 5).output == 20
    over = run_workflow(endpoint, many, 6)
    assert over.status is Status.PERMANENT_ERROR
    assert over.error is not None
    assert "more than 5 steps" in over.error.message
    large = run_workflow(endpoint, big, "x" * 5000)
    assert large.status is Status.PERMANENT_ERROR
    assert large.error is not None
    assert "over the limit of 2000" in large.error.message


def test_calls_of_other_endpoints_and_by_name() -> None:
    billing = Endpoint(insecure=True, endpoint_url="https://billing.example.com/api")

    @billing.function
    def invoice(amount: int) -> str:
        return f"invoice for {amount}"

    shop = Endpoint(insecure=True, endpoint_url="https://shop.example.com")

    @shop.function
    async def checkout(amount: int) -> list[str]:
        first = await invoice(amount)
        second = await call("invoice", amount + 1, endpoint="https://billing.example.com/api/")
        third = await call("local", amount)
        return [first, second, third]

    @shop.function
    def local(amount: int) -> str:
        return f"local {amount}"

    poll = shop.run(start("checkout", 5)).poll
    assert [(c.function, c.endpoint) for c in poll.calls] == [
        ("invoice", "https://billing.example.com/api")
    ]
    run = run_workflow(shop, checkout, 5, endpoints={"https://billing.example.com/api": billing})
    assert run.output == ["invoice for 5", "invoice for 6", "local 5"]
    assert [c.endpoint for c in run.calls] == [
        "https://billing.example.com/api",
        "https://billing.example.com/api",
        "",
    ]


def test_results_are_decoded_by_the_value_codec(endpoint: Endpoint) -> None:
    @endpoint.function
    async def typed() -> Any:
        return await call("elsewhere", {"n": 1}, endpoint="https://go.example.com")

    poll = endpoint.run(start("typed", None)).poll
    assert values.from_any(poll.calls[0].input) == {"n": 1}
    # A result as another language sends it: a Struct with ints and a list.
    answer = endpoint.run(resume("typed", poll, [ok(1, {"ids": [1, 2, 3], "ok": True})]))
    assert output(answer) == {"ids": [1, 2, 3], "ok": True}


def test_step_is_the_typed_spelling_of_a_call(endpoint: Endpoint) -> None:
    double = endpoint.functions["double"]

    @endpoint.function
    async def typed(x: int) -> list[int]:
        return [await double.step(x), await double(x + 1)]

    run = run_workflow(endpoint, typed, 1)
    assert run.output == [2, 4]
    assert [c.function for c in run.calls] == ["double", "double"]
    with pytest.raises(RuntimeError, match="durable call"):
        double.step(1)


def test_outside_a_workflow_functions_are_plain_and_steps_refuse(endpoint: Endpoint) -> None:
    assert endpoint.functions["double"](4) == 8
    with pytest.raises(RuntimeError, match="durable step"):
        sleep(1)
    with pytest.raises(RuntimeError, match="durable step"):
        patched("x")
    with pytest.raises(RuntimeError, match="durable step"):
        gather()


def test_gather_refuses_coroutines_with_a_hint(endpoint: Endpoint) -> None:
    async def helper() -> int:
        return 1

    @endpoint.function
    async def wrong() -> None:
        coroutine = helper()
        try:
            await gather(coroutine)
        finally:
            coroutine.close()

    run = run_workflow(endpoint, wrong)
    assert run.status is Status.INVALID_ARGUMENT
    assert run.error is not None
    assert "register it as a function" in run.error.message


def test_a_workflow_awaiting_a_child_workflow(endpoint: Endpoint) -> None:
    three_steps = endpoint.functions["three_steps"]

    @endpoint.function
    async def parent(x: int) -> Any:
        left, right = await gather(three_steps(x), three_steps(x + 1))
        return [left, right]

    run = run_workflow(endpoint, parent, 1, results_per_resume=1)
    assert run.output == [[2, 4, 8], [4, 8, 16]]


def test_a_step_mismatch_caught_by_the_code_still_ends_the_run() -> None:
    poll = record_journal(order_endpoint("original"), "order", 1, results=1)
    endpoint = Endpoint(insecure=True)

    @endpoint.function
    def ship(x: int) -> int:
        return x

    @endpoint.function
    async def order(x: int) -> str:
        with contextlib.suppress(Exception):
            await ship(x)  # slot 0 was charge
        return "ignored the mismatch"

    answer = endpoint.run(resume("order", poll, [ok(2, 4)]))
    assert answer.status == Status.INCOMPATIBLE_STATE.value
    assert "slot 0" in answer.exit.result.error.message


def test_the_wire_names_of_the_journal_are_stable() -> None:
    assert workflow.JOURNAL_TYPE_URL == "type.googleapis.com/dispatchlet.workflow.v1.Journal"
    assert workflow.MAX_POLL_CALLS == 1000


def test_the_error_types_a_workflow_ends_with_keep_their_names(endpoint: Endpoint) -> None:
    # An Error's type is its class's module and name: the scheduler, the logs and the
    # filters users write on it see these, whichever module now makes the exception.
    double, fail = endpoint.functions["double"], endpoint.functions["fail"]

    @endpoint.function
    async def careless() -> None:
        await fail("value")

    @endpoint.function
    async def impatient() -> None:
        await double(1)
        await asyncio.sleep(0)

    failed = run_workflow(endpoint, careless)
    assert failed.error is not None
    assert failed.error.type == "dispatchlet.core.workflow.CallFailed[ValueError]"
    refused = run_workflow(endpoint, impatient)
    assert refused.error is not None
    assert refused.error.type == "dispatchlet.core.workflow.NotDurable"
    assert workflow.NotDurable.__module__ == "dispatchlet.core.workflow"


WORKFLOW_MACHINERY = [
    "asyncio",
    "contextvars",
    "dispatchlet.core.event_loop",
    "dispatchlet.core.journal",
    "dispatchlet.core.replay",
    "dispatchlet.core.replay_check",
    "dispatchlet.core.workflow",
    "dispatchlet.core.workflow_driver",
    "dispatchlet.core.workflow_steps",
]

LOADED_BY_A_RUN = """
import sys
from dispatchlet import Endpoint
from dispatchlet.core import values
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2

endpoint = Endpoint(insecure=True)

@endpoint.function
def plain(name: str) -> str:
    return "Hello, " + name

@endpoint.function
async def flow(name: str) -> str:
    return await plain(name)

answer = endpoint.run(function_pb2.RunRequest(function=sys.argv[1], input=values.to_any("x")))
assert answer.status == 1, answer
print("\\n".join(sorted(set(sys.argv[2:]) & set(sys.modules))))
"""


def loaded_by_a_run(function: str) -> set[str]:
    """The modules of ``WORKFLOW_MACHINERY`` that a fresh process imports to serve one
    run of ``function``."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED_BY_A_RUN, function, *WORKFLOW_MACHINERY],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_an_endpoint_loads_the_workflow_machinery_only_to_run_a_workflow() -> None:
    # Cold starts (Lambda) pay for every module imported: serving plain functions
    # never imports asyncio, contextvars or the workflow modules.
    assert loaded_by_a_run("plain") == set()
    assert {"asyncio", "contextvars", "dispatchlet.core.replay"} <= loaded_by_a_run("flow")


CLI_APP = """
from dispatchlet import Endpoint

endpoint = Endpoint(insecure=True)


@endpoint.function
def charge(x: int) -> int:
    return 2 * x


@endpoint.function
def ship(x: int) -> int:
    return 2 * x


@endpoint.function
async def order(x: int) -> list:
    first = await charge(x)
    return [FIRST, SECOND]
"""


def test_check_replay_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatchlet.cli.main import main

    original = CLI_APP.replace("FIRST", "await charge(first)").replace(
        "SECOND", "await ship(first)"
    )
    reordered = CLI_APP.replace("FIRST", "await ship(first)").replace(
        "SECOND", "await charge(first)"
    )
    (tmp_path / "original.py").write_text(original)
    (tmp_path / "reordered.py").write_text(reordered)
    recorded = run_workflow(order_endpoint("original"), "order", 1, results_per_resume=1)
    written = recorded.save_journals(tmp_path / "journals")
    assert [p.name for p in written] == ["order-1.journal", "order-2.journal", "order-3.journal"]

    assert main(["check-replay", str(tmp_path / "original.py"), str(tmp_path / "journals")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "3 of 3 would resume"
    assert all(line.startswith("ok ") for line in out[:-1])

    assert main(["check-replay", str(tmp_path / "reordered.py"), str(written[2])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL")
    assert "slot 1" in out[0]
    assert "'ship'" in out[0]
    assert out[-1] == "0 of 1 would resume"

    assert main(["check-replay", str(tmp_path / "original.py")]) == 2
    assert "give JOURNAL files" in capsys.readouterr().err
    assert main(["check-replay", str(tmp_path / "original.py"), str(tmp_path / "none")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@settings(max_examples=300, deadline=None)
@given(state=st.binary(max_size=300), type_url=st.sampled_from([workflow.JOURNAL_TYPE_URL, "x"]))
def test_any_state_bytes_resume_or_are_incompatible(state: bytes, type_url: str) -> None:
    endpoint = make_endpoint()
    request = function_pb2.RunRequest(function="three_steps")
    request.poll_result.typed_coroutine_state.type_url = type_url
    request.poll_result.typed_coroutine_state.value = state
    answer = endpoint.run(request)
    assert answer.status in (Status.OK.value, Status.INCOMPATIBLE_STATE.value), answer
    if answer.status == Status.INCOMPATIBLE_STATE.value:
        assert answer.exit.result.error.type.endswith(("IncompatibleState", "StepMismatch"))


@settings(max_examples=200, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4),
    results=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=40)),
        max_size=6,
    ),
)
def test_damaged_journals_and_stray_results_never_crash(
    flips: list[tuple[int, int]], results: list[tuple[int, bytes]]
) -> None:
    endpoint = make_endpoint()
    poll = record_journal(endpoint, "three_steps", 3, results=2)
    state = bytearray(poll.typed_coroutine_state.value)
    for at, mask in flips:
        state[at % len(state)] ^= mask
    request = resume("three_steps", poll, [])
    request.poll_result.typed_coroutine_state.value = bytes(state)
    for correlation_id, output in results:
        result = request.poll_result.results.add(correlation_id=correlation_id)
        result.output.type_url = "type.googleapis.com/google.protobuf.Int64Value"
        result.output.value = output
    answer = endpoint.run(request)
    # Whatever arrives: a Poll, an exit, or an error status; never an exception.
    assert answer.WhichOneof("directive") in ("poll", "exit")
    assert answer.status != Status.UNSPECIFIED.value


class QuotaExceeded(Exception):
    pass


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("ValueError", Status.INVALID_ARGUMENT),
        ("ConnectionRefusedError", Status.TCP_ERROR),  # by its base, ConnectionError
        ("TimeoutError", Status.TIMEOUT),
        ("socket.gaierror", Status.DNS_ERROR),
        ("dispatchlet.core.errors.Throttled", Status.THROTTLED),
        ("DeadlineExceeded", Status.TIMEOUT),  # as the scheduler names an expired call
        ("InvalidResponse", Status.INVALID_RESPONSE),
        ("test_workflow.QuotaExceeded", Status.THROTTLED),  # registered
        ("somewhere.Else", Status.PERMANENT_ERROR),
    ],
)
def test_a_failed_calls_status_comes_from_its_error_type(error_type: str, status: Status) -> None:
    from dispatchlet import register_error_status
    from dispatchlet.core.errors import _registered, status_for_type

    QuotaExceeded.__module__ = "test_workflow"
    register_error_status(QuotaExceeded, Status.THROTTLED)
    try:
        assert status_for_type(error_type) is status
    finally:
        _registered.pop(QuotaExceeded, None)
