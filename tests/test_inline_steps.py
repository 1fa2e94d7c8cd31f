"""Inline steps: calls of functions registered with ``inline=True`` run inside their
workflow's own run, recorded in its journal as delivered results would be; a policy
(driven here by a fake clock) makes the run checkpoint through the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import pytest
from dispatchlet import (
    CallFailed,
    ConfigurationError,
    Endpoint,
    PermanentError,
    RunContext,
    Status,
    TailCall,
    TemporaryError,
    call,
    gather,
    patched,
    race,
)
from dispatchlet.core import inline_steps, values
from dispatchlet.core.value_views import read_journal
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.proto.dispatchlet.workflow.v1 import journal_pb2
from dispatchlet.scheduler.dashboard.views import journal_steps
from dispatchlet.testing import check_replay, run_workflow


class FakeClock:
    """The checkpoint policy's clock, moved by the steps themselves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(inline_steps, "clock", fake)
    return fake


class App:
    """An endpoint with inline steps that count their runs and move the fake clock."""

    def __init__(self, clock: FakeClock | None = None, **options: Any) -> None:
        self.ran: Counter[str] = Counter()
        self.ids: list[str] = []
        self.flaky_failures = 0
        self.endpoint = endpoint = Endpoint(insecure=True, **options)

        @endpoint.function(inline=True)
        def add(x: int, ctx: RunContext) -> int:
            self.ran[f"add {x}"] += 1
            self.ids.append(ctx.dispatch_id)
            return x + 1

        @endpoint.function(inline=True)
        def slow(x: int) -> int:
            # Takes 0.6 s by the policy's clock.
            self.ran[f"slow {x}"] += 1
            if clock is not None:
                clock.now += 0.6
            return x + 1

        @endpoint.function
        def child(x: int) -> int:
            self.ran[f"child {x}"] += 1
            return x * 10

        @endpoint.function(inline=True)
        def refuse(kind: str) -> None:
            self.ran[f"refuse {kind}"] += 1
            if kind == "permanent":
                raise PermanentError("card declined")
            raise ValueError("bad amount")

        @endpoint.function(inline=True, max_attempts=5, backoff=2.0)
        def flaky(x: int) -> int:
            self.ran[f"flaky {x}"] += 1
            if self.ran[f"flaky {x}"] <= self.flaky_failures:
                raise TemporaryError("not yet")
            return x + 100

        @endpoint.function
        async def three(x: int) -> int:
            a = await add(x)
            b = await add(a)
            return await add(b)

        @endpoint.function
        async def mixed(x: int) -> int:
            a = await add(x)
            b = await child(a)
            return await add(b)

        @endpoint.function
        async def slow_chain(n: int) -> int:
            x = 0
            for _ in range(n):
                x = await slow(x)
            return x

    def run(self, name: str, value: Any, **fields: Any) -> function_pb2.RunResponse:
        request = function_pb2.RunRequest(
            function=name, input=values.to_any(value), dispatch_id="wf", **fields
        )
        return self.endpoint.run(request)


def output(response: function_pb2.RunResponse) -> Any:
    assert response.WhichOneof("directive") == "exit", response
    assert response.status == Status.OK.value, response.exit.result.error
    return values.from_any(response.exit.result.output)


def journal_of(response: function_pb2.RunResponse) -> journal_pb2.Journal:
    assert response.WhichOneof("directive") == "poll", response
    return journal_pb2.Journal.FromString(response.poll.typed_coroutine_state.value)


def resume(
    name: str, poll: Any, results: list[call_pb2.CallResult], dispatch_id: str = "wf"
) -> function_pb2.RunRequest:
    request = function_pb2.RunRequest(function=name, dispatch_id=dispatch_id)
    request.poll_result.typed_coroutine_state.CopyFrom(poll.typed_coroutine_state)
    request.poll_result.results.extend(results)
    return request


def test_inline_steps_run_in_the_workflows_own_run() -> None:
    app = App()
    assert output(app.run("three", 1)) == 4
    assert app.ran == Counter({"add 1": 1, "add 2": 1, "add 3": 1})
    # Each step's dispatch id is the workflow's and its slot.
    assert app.ids == ["wf:0", "wf:1", "wf:2"]
    # The harness runs them the same way: no call reaches its scheduler.
    run = run_workflow(app.endpoint, "three", 10, results_per_resume=1)
    assert (run.status, run.output, run.resumes, run.calls) == (Status.OK, 13, 0, [])


def test_a_resume_replays_inline_steps_from_the_journal_without_running_them() -> None:
    app = App()
    poll = app.run("mixed", 1).poll
    assert [(c.function, c.correlation_id) for c in poll.calls] == [("child", 2)]
    journal = journal_pb2.Journal.FromString(poll.typed_coroutine_state.value)
    first = journal.steps[0]
    assert (first.name, first.inline, first.started, first.arrival) == ("add", True, True, 1)
    assert first.result.dispatch_id == "wf:0"
    assert values.from_any(first.result.output) == 2
    child = call_pb2.CallResult(correlation_id=2, output=values.to_any(20))
    assert output(app.endpoint.run(resume("mixed", poll, [child]))) == 21
    # add(1) ran once, in the first run; the resume took its result from the journal.
    assert app.ran == Counter({"add 1": 1, "add 20": 1})
    assert app.ids == ["wf:0", "wf:2"]


def test_replay_checks_treat_an_inline_step_as_a_call_of_its_function() -> None:
    app = App()
    poll = app.run("mixed", 1).poll
    state = poll.typed_coroutine_state.value
    # The same code, with add no longer inline, resumes the journal recorded inline.
    plain = Endpoint(insecure=True)

    @plain.function
    def add(x: int) -> int:
        return x + 1

    @plain.function
    def child(x: int) -> int:
        return x * 10

    @plain.function
    async def mixed(x: int) -> int:
        a = await add(x)
        b = await child(a)
        return await add(b)

    checked = check_replay(plain, state)
    assert (checked.ok, checked.recorded, checked.outcome) == (True, 2, "suspended")
    # Checking calls nothing, inline or not.
    before = app.ran.copy()
    assert check_replay(app.endpoint, state).ok
    assert app.ran == before

    # Another function in the inline step's slot is a StepMismatch naming both.
    edited = Endpoint(insecure=True)

    @edited.function(inline=True)
    def subtract(x: int) -> int:
        return x - 1

    @edited.function
    async def mixed(x: int) -> int:  # noqa: F811
        return await subtract(x)

    mismatch = check_replay(edited, state)
    assert not mismatch.ok
    assert "slot 0" in mismatch.outcome
    assert "'add'" in mismatch.outcome
    answer = edited.run(resume("mixed", poll, []))
    assert answer.status == Status.INCOMPATIBLE_STATE.value
    assert answer.exit.result.error.type == "dispatchlet.core.errors.StepMismatch"


def test_patched_sees_inline_steps_as_steps() -> None:
    app = App()
    add = app.endpoint.functions["add"]
    child = app.endpoint.functions["child"]

    @app.endpoint.function
    async def patched_flow(x: int) -> list[int]:
        a = await add(x)
        if patched("extra"):
            a = await add(a)
        return [a, await child(a)]

    run = run_workflow(app.endpoint, patched_flow, 1)
    assert run.output == [3, 30]
    assert [c.correlation_id for c in run.calls] == [4]  # slots 0 and 2 inline, 1 the patch
    assert check_replay(app.endpoint, run.journals[0]).ok


def test_a_permanent_failure_is_recorded_as_a_childs_would_be() -> None:
    outcomes = {}
    for inline in (True, False):
        endpoint = Endpoint(insecure=True)

        @endpoint.function(inline=inline)
        def refuse(kind: str) -> None:
            if kind == "permanent":
                raise PermanentError("card declined")
            raise ValueError("bad amount")

        @endpoint.function
        async def careful(kind: str) -> str:
            try:
                await refuse(kind)
            except CallFailed as exc:
                return f"{type(exc).__name__} {isinstance(exc, ValueError)} {exc.status.name}"
            return "not raised"

        @endpoint.function
        async def careless(kind: str) -> None:
            await refuse(kind)

        ended = run_workflow(endpoint, careless, "permanent")
        assert ended.error is not None
        outcomes[inline] = (
            run_workflow(endpoint, careful, "value").output,
            run_workflow(endpoint, careful, "permanent").output,
            ended.status,
            ended.error.type,
        )
    assert outcomes[True] == outcomes[False]
    assert outcomes[True][0] == "CallFailed[ValueError] True INVALID_ARGUMENT"
    assert outcomes[True][2] is Status.PERMANENT_ERROR

    # Recorded in the journal: a resume raises it again without running the step.
    app = App()
    refusing, child = app.endpoint.functions["refuse"], app.endpoint.functions["child"]

    @app.endpoint.function
    async def keeps_going() -> int:
        with contextlib.suppress(PermanentError):
            await refusing("permanent")
        return int(await child(4))

    run = run_workflow(app.endpoint, keeps_going, results_per_resume=1)
    assert (run.output, app.ran["refuse permanent"]) == (40, 1)


def test_a_retryable_failure_suspends_with_the_step_as_a_child_call() -> None:
    app = App()
    app.flaky_failures = 1
    add, flaky = app.endpoint.functions["add"], app.endpoint.functions["flaky"]

    @app.endpoint.function
    async def flow(x: int) -> int:
        return int(await flaky(await add(x)))

    poll = app.run("flow", 1).poll
    # What ran before it is in the journal; the step is a child with its policy.
    journal = journal_pb2.Journal.FromString(poll.typed_coroutine_state.value)
    assert [(s.name, s.inline, s.arrival) for s in journal.steps] == [
        ("add", True, 1),
        ("flaky", False, 0),
    ]
    assert journal.steps[1].started
    (made,) = poll.calls
    assert (made.function, made.correlation_id) == ("flaky", 2)
    # Its policy, the inline run counted as its first attempt: 4 left, after the
    # policy's first backoff.
    assert made == flaky.options(max_attempts=4, delay=2.0).settings.apply(
        call_pb2.Call(correlation_id=2, function="flaky", input=values.to_any(2))
    )
    # The scheduler (the harness) retries it as a child: the workflow gets its result.
    app.ran.clear()
    app.flaky_failures = 3
    run = run_workflow(app.endpoint, flow, 1)
    assert (run.status, run.output) == (Status.OK, 102)
    assert app.ran == Counter({"add 1": 1, "flaky 2": 4})
    assert run.child_attempts == {2: 3}  # the first failure was the inline run


def test_an_inline_step_allowed_one_attempt_runs_once_and_its_failure_is_its_outcome() -> None:
    endpoint = Endpoint(insecure=True)
    ran: Counter[str] = Counter()

    @endpoint.function(inline=True, max_attempts=1)
    def charge(amount: int) -> int:
        ran["charge"] += 1
        raise TemporaryError("gateway timeout")

    @endpoint.function
    async def flow(amount: int) -> str:
        try:
            await charge(amount)
        except CallFailed as exc:
            return f"{exc.error_type}: {exc}"
        return "charged"

    run = run_workflow(endpoint, flow, 5)
    assert run.status == Status.OK
    assert "TemporaryError" in str(run.output)
    assert "gateway timeout" in str(run.output)
    assert ran == Counter({"charge": 1})  # as a child call with max_attempts=1 would


def test_a_step_whose_timeout_outlasts_the_run_runs_as_a_child_call() -> None:
    endpoint = Endpoint(insecure=True)
    ran: Counter[str] = Counter()

    @endpoint.function(inline=True, timeout=60)
    def export(x: int) -> int:
        ran["export"] += 1
        return x

    @endpoint.function(inline=True, timeout=1)
    def quick(x: int) -> int:
        ran["quick"] += 1
        return x + 1

    @endpoint.function
    async def flow(x: int) -> int:
        return int(await export(await quick(x)))

    request = function_pb2.RunRequest(function="flow", input=values.to_any(1), dispatch_id="wf")
    # Ten seconds left of the run: quick (1 s) fits, export (60 s) does not.
    request.expiration_time.FromNanoseconds(int((time.time() + 10) * 1e9))
    response = endpoint.run(request)
    assert response.WhichOneof("directive") == "poll"
    (made,) = response.poll.calls
    assert (made.function, made.correlation_id) == ("export", 2)
    assert ran == Counter({"quick": 1})


def test_a_tail_call_returned_inline_is_started_as_the_steps_child() -> None:
    app = App()
    child = app.endpoint.functions["child"]

    @app.endpoint.function(inline=True)
    def hand_over(x: int) -> TailCall:
        return child.tail_call(x)

    @app.endpoint.function
    async def flow(x: int) -> int:
        return int(await hand_over(x)) + 1

    poll = app.run("flow", 3).poll
    assert [(c.function, c.correlation_id) for c in poll.calls] == [("child", 1)]
    assert run_workflow(app.endpoint, flow, 3).output == 31


def test_gather_runs_async_inline_steps_concurrently() -> None:
    endpoint = Endpoint(insecure=True)
    events: dict[str, asyncio.Event] = {}

    @endpoint.function(inline=True)
    async def meet(mine: str, theirs: str) -> str:
        # Returns only once the other step has started: they must run side by side.
        events.setdefault(mine, asyncio.Event()).set()
        await asyncio.wait_for(events.setdefault(theirs, asyncio.Event()).wait(), 30)
        return mine

    @endpoint.function
    async def together() -> list[str]:
        return list(await gather(meet("a", "b"), meet("b", "a")))

    events.clear()
    run = run_workflow(endpoint, together)
    assert (run.status, run.output, run.calls) == (Status.OK, ["a", "b"], [])


def test_a_gather_mixing_inline_steps_and_calls_matches_results_by_slot() -> None:
    app = App()
    add, child = app.endpoint.functions["add"], app.endpoint.functions["child"]

    @app.endpoint.function
    async def mix() -> list[int]:
        return list(await gather(child(1), add(1), child(2), add(2)))

    poll = app.run("mix", None).poll
    assert [(c.function, c.correlation_id) for c in poll.calls] == [("child", 1), ("child", 3)]
    assert poll.min_results == 2
    for order in ("arrival", "reverse"):
        run = run_workflow(app.endpoint, mix, order=order, results_per_resume=1)
        assert run.output == [10, 2, 20, 3]


def test_race_decided_by_an_inline_step_starts_no_child() -> None:
    app = App()
    add, child = app.endpoint.functions["add"], app.endpoint.functions["child"]

    @app.endpoint.function
    async def first() -> int:
        return int(await race(child(5), add(5)))

    assert output(app.run("first", None)) == 6
    assert app.ran == Counter({"add 5": 1})


def test_calls_with_options_other_endpoints_and_by_name_are_child_calls() -> None:
    app = App()
    add = app.endpoint.functions["add"]

    @app.endpoint.function
    async def with_options(x: int) -> int:
        return int(await add.options(max_attempts=2)(x)) + int(await add.options().step(x))

    poll = app.run("with_options", 1).poll
    assert [(c.function, c.correlation_id) for c in poll.calls] == [("add", 1)]
    assert not app.ran

    other = Endpoint(insecure=True, endpoint_url="https://other.example.com/")

    @other.function(inline=True)
    def elsewhere(x: int) -> int:
        return x

    @app.endpoint.function
    async def across(x: int) -> int:
        return int(await elsewhere(x))

    (made,) = app.run("across", 1).poll.calls
    assert (made.function, made.endpoint.rstrip("/")) == ("elsewhere", "https://other.example.com")

    @app.endpoint.function
    async def by_name(x: int) -> int:
        return int(await call("add", x))

    (made,) = app.run("by_name", 1).poll.calls
    assert (made.function, made.correlation_id) == ("add", 1)
    assert not app.ran


def test_inline_refuses_what_the_scheduler_would_have_to_enforce() -> None:
    endpoint = Endpoint(insecure=True)
    refused: list[dict[str, Any]] = [
        {"concurrency": 2},
        {"concurrency_per_key": 1},
        {"rate_limit": (10, 1.0)},
        {"schedule": "*/5 * * * *"},
    ]
    for options in refused:
        with pytest.raises(ConfigurationError, match=next(iter(options))):
            endpoint.function(inline=True, **options)(lambda: None)
    assert not endpoint.functions
    with pytest.raises(ConfigurationError, match="checkpoint_after"):

        @endpoint.function(checkpoint_after=5)
        def not_a_workflow() -> None: ...

    with pytest.raises(ConfigurationError, match="checkpoint_after"):
        Endpoint(insecure=True, checkpoint_after=-1)
    with pytest.raises(ConfigurationError, match="checkpoint_after"):
        endpoint.function(checkpoint_after="soon")  # type: ignore[call-overload]


def test_the_run_checkpoints_once_its_inline_steps_took_longer_than_the_bound(
    clock: FakeClock,
) -> None:
    app = App(clock, checkpoint_after=1.0)
    # slow takes 0.6 s: after two (1.2 s), the third goes to the scheduler as a child
    # call, in the Poll that stores the journal of the first two.
    response = app.run("slow_chain", 7)
    journal = journal_of(response)
    assert [(s.name, s.inline, bool(s.arrival)) for s in journal.steps] == [
        ("slow", True, True),
        ("slow", True, True),
        ("slow", False, False),
    ]
    assert [(c.function, c.correlation_id) for c in response.poll.calls] == [("slow", 3)]
    assert app.ran == Counter({"slow 0": 1, "slow 1": 1})
    # The resume is a new run: two more inline, then the next checkpoint.
    result = call_pb2.CallResult(correlation_id=3, output=values.to_any(3))
    again = app.endpoint.run(resume("slow_chain", response.poll, [result]))
    assert [c.correlation_id for c in again.poll.calls] == [6]
    assert app.ran == Counter({"slow 0": 1, "slow 1": 1, "slow 3": 1, "slow 4": 1})
    # End to end through the harness: every step ran once, 2 of 7 as children.
    app.ran.clear()
    run = run_workflow(app.endpoint, "slow_chain", 7)
    assert (run.output, sorted(app.ran.values())) == (7, [1] * 7)
    assert [c.correlation_id for c in run.calls] == [3, 6]


def test_the_bound_is_per_workflow_when_given(clock: FakeClock) -> None:
    app = App(clock, checkpoint_after=1.0)
    slow = app.endpoint.functions["slow"]

    @app.endpoint.function(checkpoint_after=0.5)
    async def eager(n: int) -> int:
        x = 0
        for _ in range(n):
            x = await slow(x)
        return x

    assert [c.correlation_id for c in app.run("eager", 3).poll.calls] == [2]
    # A zero bound: one inline step per run, the next one checkpoints.
    zero = App(clock, checkpoint_after=0)
    assert [c.correlation_id for c in zero.run("slow_chain", 3).poll.calls] == [2]


def test_the_run_checkpoints_before_half_of_its_time_is_used(clock: FakeClock) -> None:
    app = App(clock, checkpoint_after=3600)
    deadline = function_pb2.RunRequest()
    deadline.expiration_time.FromNanoseconds(time.time_ns() + 2_000_000_000)
    # 2 s to run: half is 1 s, passed after two slow steps (1.2 s).
    response = app.run("slow_chain", 5, expiration_time=deadline.expiration_time)
    assert [c.correlation_id for c in response.poll.calls] == [3]
    # Without a deadline, nothing but the bound (an hour) checkpoints.
    assert output(app.run("slow_chain", 5)) == 5


def test_the_steps_context_is_a_child_calls_and_stable_across_runs() -> None:
    app = App()
    contexts: list[RunContext] = []

    @app.endpoint.function(inline=True)
    def look(ctx: RunContext) -> None:
        contexts.append(ctx)

    child = app.endpoint.functions["child"]

    @app.endpoint.function
    async def flow() -> None:
        await look()
        await child(1)

    request = function_pb2.RunRequest(
        function="flow", input=values.to_any(None), dispatch_id="wf-7", root_dispatch_id="r"
    )
    request.creation_time.FromSeconds(1_700_000_000)
    request.expiration_time.FromNanoseconds(time.time_ns() + 60_000_000_000)
    app.endpoint.run(request)
    app.endpoint.run(request)  # run again, as after a killed endpoint
    first, second = contexts
    assert first == second
    assert (first.function, first.dispatch_id) == ("look", "wf-7:0")
    assert (first.parent_dispatch_id, first.root_dispatch_id) == ("wf-7", "r")
    assert first.creation_time is not None
    assert first.creation_time.year == 2023
    assert first.expiration_time is not None


def test_the_journal_shows_inline_steps_without_a_child() -> None:
    app = App()
    poll = app.run("mixed", 1).poll
    shown = read_journal(poll.typed_coroutine_state)
    assert shown is not None
    assert shown["steps"][0]["inline"] is True
    assert "inline" not in shown["steps"][1]
    _, steps = journal_steps(poll.typed_coroutine_state, [])
    assert [(s.name, s.inline, s.state, s.child) for s in steps] == [
        ("add", True, "done", None),
        ("child", False, "pending", None),
    ]


def test_an_inline_function_runs_as_a_plain_function_outside_the_journal() -> None:
    app = App()
    add, child = app.endpoint.functions["add"], app.endpoint.functions["child"]

    @app.endpoint.function(inline=True)
    def helper(x: int) -> int:
        # A registered function called from an inline step is a plain call, not a step
        # of the workflow: the step's own work, as in a child call's run.
        return int(child(x)) + 1

    @app.endpoint.function(inline=True)
    async def waits(x: int) -> int:
        await asyncio.sleep(0)  # a plain coroutine may await anything
        return x

    @app.endpoint.function
    async def flow(x: int) -> list[int]:
        return [await helper(x), await waits(x), await child(x), await add(x)]

    response = app.run("flow", 2)
    journal = journal_of(response)
    assert [(s.name, s.inline) for s in journal.steps] == [
        ("helper", True),
        ("waits", True),
        ("child", False),
    ]
    assert app.ran == Counter({"child 2": 1})
    assert run_workflow(app.endpoint, flow, 2).output == [21, 2, 20, 3]
