"""Running workflows in a test, without a scheduler: ``run_workflow`` plays the
scheduler's part in this process (it runs the calls a workflow starts, on the
endpoint's own functions, and resumes it with their results), and ``check_replay``
replays recorded journals against the current code.

``results_per_resume=1`` is the strict mode: every result comes back through its own
Poll and resume, so each await is replayed from the journal. ``order`` decides in which
order finished calls are delivered (``"reverse"``, or a ``random.Random``), to show that
the workflow's outcome does not depend on it. Timers do not make the test wait: the
harness moves the workflow's clock forward instead.

Inline steps (functions registered with ``inline=True``) run inside the workflow's run,
as under the scheduler: they are not among the calls it starts, unless a checkpoint or a
retryable failure hands one over as a child call.

Calls made with options (``Function.options``, a function's ``@endpoint.function(...)``
defaults) are run as the scheduler runs them: a delayed call starts once the clock has
moved forward to its time, its own ``max_attempts`` and ``backoff`` replace the
defaults, and a call whose idempotency key an earlier call had runs nothing and gets
that call's result. (An attempt's ``timeout`` is not enforced: the functions run in
this process.)

Failures are retried by the scheduler's rules: a run that ends with a retryable status
(``Status.retryable``) runs again, up to ``max_attempts`` attempts counted since the
call's last suspension, after the scheduler's capped exponential backoff (by which the
clock moves forward, never slept); a resume answered INCOMPATIBLE_STATE starts the call
over from its input, at most 3 times, unless the workflow's steps changed order
(``StepMismatch``). So a flaky step that the scheduler would retry passes here too.

    from dispatchlet.testing import run_workflow

    def test_onboarding():
        run = run_workflow(endpoint, onboard, "ada@example.com", results_per_resume=1)
        assert run.status is Status.OK and run.output == "ada"

Messages (``receive``) come from ``messages``: values by topic, each list taken in
order (``{"approval": [{"ok": True}]}``), or a function of the topic called at each
receive, which returns the value or ``NO_MESSAGE``. A receive with no message waits for
its timeout, by which the clock moves forward (a ``TimeoutError`` in the workflow), or,
without one, as long as something else may arrive (a sleep it races with); a workflow
left waiting for a message that nothing sends is an error that names the topic.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from google.protobuf.unknown_fields import UnknownFieldSet

from .core import replay, values, workflow
from .core.call_options import call_options
from .core.endpoint import Endpoint
from .core.errors import STEP_MISMATCH
from .core.functions import Function
from .core.messages import RECEIVE_TIMEOUT
from .core.status import Status
from .core.workflow import ReplayCheck, check_replay
from .proto.dispatch.sdk.v1 import call_pb2, error_pb2, function_pb2, poll_pb2
from .proto.dispatchlet.workflow.v1 import journal_pb2
from .scheduler.calls import AT_ONCE, Plan, planned
from .scheduler.retry import MAX_RESTARTS, RetryPolicy
from .scheduler.rules import retry_policy
from .scheduler.store import CallPolicy


@dataclass
class WorkflowRun:
    """How a workflow run by ``run_workflow`` went."""

    status: Status
    output: object = None
    """The decoded output, once OK."""
    error: error_pb2.Error | None = None
    resumes: int = 0
    journals: list[bytes] = field(default_factory=list)
    """The journal after each suspension (``Journal`` bytes), for ``check_replay``."""
    calls: list[call_pb2.Call] = field(default_factory=list)
    """Every call the workflow started, in order."""
    children: dict[int, Status] = field(default_factory=dict)
    """The status each started call ended with, by correlation id."""
    function: str = ""
    attempts: int = 0
    """Attempts of the workflow's last run, as the scheduler counts them (since its last
    suspension): more than 1 when it failed with a retryable status and was retried."""
    child_attempts: dict[int, int] = field(default_factory=dict)
    """The attempts each started call took, by correlation id (1: no retry; 0: its
    idempotency key's call had run already, it ran nothing)."""

    def save_journals(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write each journal to ``folder`` as ``FUNCTION-N.journal``, for
        ``dispatchlet check-replay APP FOLDER`` to replay against later code."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for number, journal in enumerate(self.journals, 1):
            path = target / f"{self.function}-{number}.journal"
            path.write_bytes(journal)
            written.append(path)
        return written


class _Clock:
    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return self.real() + self.offset

    real = staticmethod(time.time_ns)


@contextmanager
def _moved_clock() -> Iterator[_Clock]:
    clock = _Clock()
    saved, replay.clock = replay.clock, clock
    try:
        yield clock
    finally:
        replay.clock = saved


def run_workflow(
    endpoint: Endpoint,
    function: Function[..., Any] | str,
    *args: Any,
    results_per_resume: int = workflow.MAX_POLL_RESULTS,
    order: Literal["arrival", "reverse"] | random.Random = "arrival",
    endpoints: Mapping[str, Endpoint] | None = None,
    max_runs: int = 100_000,
    max_attempts: int = RetryPolicy.max_attempts,
    messages: Messages = None,
    **kwargs: Any,
) -> WorkflowRun:
    """Run ``function`` of ``endpoint`` with these arguments to its end, its calls run
    in this process (calls of other endpoints on ``endpoints``, by URL).

    Failures are retried by the scheduler's rules, with its defaults: at most
    ``max_attempts`` attempts per call (as ``dispatchlet scheduler --max-attempts``).
    ``messages``: what the workflow's receives get (see the module's docstring)."""
    if isinstance(function, str):
        function = endpoint.functions[function]
    value = function.input_for(*args, **kwargs)
    request = function_pb2.RunRequest(
        function=function.name,
        input=values.to_any(value, allow_pickle=endpoint.allow_pickle),
        dispatch_id="root",
        root_dispatch_id="root",
    )
    simulator = _Simulator(endpoint, dict(endpoints or {}), results_per_resume, order, max_runs)
    simulator.policy = RetryPolicy(max_attempts=max_attempts)
    simulator.mailbox = _Mailbox(messages, endpoint.allow_pickle)
    with _moved_clock() as clock:
        simulator.clock = clock
        run = WorkflowRun(Status.UNSPECIFIED, function=function.name)
        policy = None
        if function.defaults:
            policy = simulator.options(function.defaults.apply(call_pb2.Call())).policy
        response, run.attempts = simulator.complete(endpoint, request, run, policy)
    result = response.exit.result
    run.status = Status(response.status)
    if result.HasField("error"):
        run.error = result.error
    elif result.HasField("output"):
        run.output = values.from_any(result.output, allow_pickle=endpoint.allow_pickle)
    return run


class _Simulator:
    def __init__(
        self,
        endpoint: Endpoint,
        endpoints: dict[str, Endpoint],
        per_resume: int,
        order: Literal["arrival", "reverse"] | random.Random,
        max_runs: int,
    ) -> None:
        self.endpoint = endpoint
        self.endpoints = endpoints
        self.per_resume = per_resume
        self.order = order
        self.runs = 0
        self.max_runs = max_runs
        self.ids = itertools.count(1)
        self.clock = _Clock()
        self.policy = RetryPolicy()
        # The backoff's jitter (not a secret), seeded: every run moves the clock alike.
        self.rng = random.Random(0)  # noqa: S311
        self.keyed: dict[str, tuple[call_pb2.CallResult, Status]] = {}
        """The result and status of each idempotency key's call, once it ended."""
        self.mailbox = _Mailbox(None, False)

    def complete(
        self,
        endpoint: Endpoint,
        request: function_pb2.RunRequest,
        run: WorkflowRun | None,
        own: CallPolicy | None = None,
    ) -> tuple[function_pb2.RunResponse, int]:
        """Run a call until it ends, as the scheduler would: resumed after each Poll,
        retried after a retryable failure, started over when a resume is answered
        INCOMPATIBLE_STATE. Its last response and the attempts since its last Poll."""
        policy = self.policy if own is None else retry_policy(own, self.policy)
        finished: list[call_pb2.CallResult] = []
        waiting = _Receives()  # this call's receives that have no message yet
        start = request  # what a restart runs again: the input of the current function
        attempts = restarts = 0
        while True:
            self.runs += 1
            if self.runs > self.max_runs:
                raise RuntimeError(f"more than {self.max_runs} runs: does the workflow end?")
            attempts += 1
            response = endpoint.run(request)
            if response.WhichOneof("directive") != "poll":
                tail = response.exit.tail_call
                if response.exit.HasField("tail_call"):
                    request = start = function_pb2.RunRequest(
                        function=tail.function,
                        input=tail.input,
                        dispatch_id=request.dispatch_id,
                        root_dispatch_id=request.root_dispatch_id,
                    )
                    endpoint = self._endpoint(tail.endpoint) or endpoint
                    # The function handed over to starts afresh, as in the scheduler.
                    finished, attempts = [], 0
                    continue
                status = Status.answered(response.status)
                if status is Status.INCOMPATIBLE_STATE and request.HasField("poll_result"):
                    if response.exit.result.error.type == STEP_MISMATCH:
                        return response, attempts  # starting over would repeat its steps
                    if restarts < MAX_RESTARTS:
                        # The code cannot read this state: the scheduler starts it over.
                        request, finished = start, []
                        restarts += 1
                        continue
                if status.retryable and attempts < policy.max_attempts:
                    # Waited for by moving the clock forward, as timers are.
                    delay = policy.delay(attempts, self.rng)
                    self.clock.offset += int(delay * 1e9)
                    continue
                return response, attempts
            attempts = 0  # a suspension counts as a success
            poll = response.poll
            if run is not None:
                run.resumes += 1
                run.journals.append(poll.typed_coroutine_state.value)
                run.calls.extend(poll.calls)
            calls, receives = _receives_apart(poll.calls)
            stored = self.clock.offset  # when the scheduler stores the receives
            batch = self._children(endpoint, request, calls, run)
            batch += self.mailbox.deliver(receives, waiting, stored, run)
            finished.extend(self._ordered(batch))
            take = min(poll.max_results, self.per_resume)
            if len(finished) < poll.min_results:
                # Not enough results: the Poll's max_wait passes, unless a receive's
                # timeout comes first.
                waiting.stuck(poll, finished)
                wait = poll.max_wait.ToNanoseconds()
                self.clock.offset = waiting.wait(self.clock.offset, wait)
            finished.extend(waiting.timed_out(self.clock.offset, run))
            resume = function_pb2.RunRequest(
                function=request.function,
                dispatch_id=request.dispatch_id,
                root_dispatch_id=request.root_dispatch_id,
            )
            resume.poll_result.typed_coroutine_state.CopyFrom(poll.typed_coroutine_state)
            resume.poll_result.results.extend(finished[:take])
            finished = finished[take:]
            request = resume

    def _children(
        self,
        endpoint: Endpoint,
        parent: function_pb2.RunRequest,
        calls: Iterable[call_pb2.Call],
        run: WorkflowRun | None,
    ) -> list[call_pb2.CallResult]:
        # The scheduler runs a Poll's calls side by side: each starts at the same time,
        # and the clock moves on to when the slowest of them (retries included) ended.
        start = latest = self.clock.offset
        results = []
        for child in calls:
            self.clock.offset = start
            results.append(self._child(endpoint, parent, child, run))
            latest = max(latest, self.clock.offset)
        self.clock.offset = latest
        return results

    def _child(
        self,
        endpoint: Endpoint,
        parent: function_pb2.RunRequest,
        child: call_pb2.Call,
        run: WorkflowRun | None,
    ) -> call_pb2.CallResult:
        target = self._endpoint(child.endpoint) if child.endpoint else endpoint
        dispatch_id = f"child-{next(self.ids)}"
        attempts = 1
        plan = self.options(child)
        if plan.key in self.keyed:
            # Its key's call ran already: its result, nothing run again.
            earlier, status = self.keyed[plan.key]
            result = call_pb2.CallResult()
            result.CopyFrom(earlier)
            result.correlation_id = child.correlation_id
            if run is not None:
                run.children[child.correlation_id] = status
                run.child_attempts[child.correlation_id] = 0
            return result
        if plan.ready_at is not None:
            # A delayed call: the clock moves forward to its time.
            wait = int(plan.ready_at * 1e9) - self.clock()
            self.clock.offset += max(0, wait)
        if target is None:
            response = function_pb2.RunResponse(status=Status.NOT_FOUND.value)  # type: ignore[arg-type]
            response.exit.result.error.CopyFrom(
                error_pb2.Error(type="NotFound", message=f"no endpoint {child.endpoint!r}")
            )
        else:
            request = function_pb2.RunRequest(
                function=child.function,
                input=child.input,
                dispatch_id=dispatch_id,
                parent_dispatch_id=parent.dispatch_id,
                root_dispatch_id=parent.root_dispatch_id,
            )
            response, attempts = self.complete(target, request, None, plan.policy)
        if run is not None:
            run.children[child.correlation_id] = Status(response.status)
            run.child_attempts[child.correlation_id] = attempts
        result = call_pb2.CallResult()
        result.CopyFrom(response.exit.result)
        result.correlation_id = child.correlation_id
        result.dispatch_id = dispatch_id
        if plan.key:
            self.keyed[plan.key] = (result, Status(response.status))
        return result

    def options(self, call: call_pb2.Call) -> Plan:
        """What ``call``'s options ask, as the scheduler reads them (now: this clock)."""
        if not UnknownFieldSet(call):
            return AT_ONCE
        plan = planned(call_options(call), self.clock() / 1e9)
        if isinstance(plan, str):
            raise ValueError(f"a call of {call.function} with invalid options: {plan}")
        return plan

    def _endpoint(self, url: str) -> Endpoint | None:
        if not url:
            return None
        return self.endpoints.get(url.rstrip("/"))

    def _ordered(self, results: list[call_pb2.CallResult]) -> list[call_pb2.CallResult]:
        if self.order == "reverse":
            return results[::-1]
        if isinstance(self.order, random.Random):
            shuffled = list(results)
            self.order.shuffle(shuffled)
            return shuffled
        return results


class _NoMessage:
    def __repr__(self) -> str:
        return "NO_MESSAGE"


NO_MESSAGE: Any = _NoMessage()
"""What a ``messages`` function returns for a receive that gets no message."""

Messages = Mapping[str, Iterable[object]] | Callable[[str], object] | None


def _receives_apart(
    calls: Iterable[call_pb2.Call],
) -> tuple[list[call_pb2.Call], list[tuple[call_pb2.Call, str]]]:
    """A Poll's calls of functions, and its receives with their topics."""
    plain, receives = [], []
    for made in calls:
        topic = call_options(made).receive_topic
        if topic:
            receives.append((made, topic))
        else:
            plain.append(made)
    return plain, receives


class _Mailbox:
    """The messages ``run_workflow`` was given, as the scheduler keeps them."""

    def __init__(self, messages: Messages, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.source: Callable[[str], object] | None = None
        self.kept: dict[str, deque[object]] = {}
        if callable(messages):
            self.source = messages
        elif messages is not None:
            self.kept = {topic: deque(values) for topic, values in messages.items()}

    def take(self, topic: str) -> object:
        if self.source is not None:
            return self.source(topic)
        kept = self.kept.get(topic)
        return kept.popleft() if kept else NO_MESSAGE

    def deliver(
        self,
        receives: list[tuple[call_pb2.Call, str]],
        waiting: _Receives,
        now: int,
        run: WorkflowRun | None,
    ) -> list[call_pb2.CallResult]:
        """The results of the receives that have a message; the others wait."""
        results = []
        for made, topic in receives:
            value = self.take(topic)
            if value is NO_MESSAGE:
                due = None
                if made.HasField("expiration"):
                    due = now + made.expiration.ToNanoseconds()
                waiting.add(made, topic, due)
                continue
            result = call_pb2.CallResult(
                correlation_id=made.correlation_id,
                output=values.to_any(value, allow_pickle=self.allow_pickle),
            )
            if run is not None:
                run.children[made.correlation_id] = Status.OK
            results.append(result)
        return results


class _Receives:
    """One call's receives waiting for a message: each times out when due (never,
    without a timeout)."""

    def __init__(self) -> None:
        self.waiting: dict[int, tuple[str, int | None]] = {}

    def add(self, made: call_pb2.Call, topic: str, due: int | None) -> None:
        self.waiting[made.correlation_id] = (topic, due)

    def wait(self, now: int, max_wait: int) -> int:
        """The clock once the Poll's ``max_wait`` passed, or a timeout came first."""
        dues = [due for _, due in self.waiting.values() if due is not None]
        return min([now + max_wait, *(max(now, due) for due in dues)])

    def timed_out(self, now: int, run: WorkflowRun | None) -> list[call_pb2.CallResult]:
        results = []
        for correlation_id, (topic, due) in list(self.waiting.items()):
            if due is None or due > now:
                continue
            del self.waiting[correlation_id]
            error = error_pb2.Error(
                type=RECEIVE_TIMEOUT,
                message=f"no message on the topic {topic!r} before the receive's timeout",
            )
            results.append(call_pb2.CallResult(correlation_id=correlation_id, error=error))
            if run is not None:
                run.children[correlation_id] = Status.TIMEOUT
        return results

    def stuck(self, poll: poll_pb2.Poll, finished: list[call_pb2.CallResult]) -> None:
        """Raise when all the workflow waits for is receives without a timeout that no
        message will ever end: nothing else can arrive."""
        if finished or not self.waiting:
            return
        journal = journal_pb2.Journal.FromString(poll.typed_coroutine_state.value)
        pending = {
            slot + 1
            for slot, step in enumerate(journal.steps)
            if not step.arrival and step.kind != journal_pb2.Step.KIND_PATCH
        }
        forever = {i for i, (_, due) in self.waiting.items() if due is None}
        if pending and pending <= forever:
            topics = sorted({self.waiting[i][0] for i in pending})
            raise RuntimeError(
                f"the workflow waits for a message on {', '.join(map(repr, topics))} that "
                "nothing sends: give run_workflow(messages=...) one, or the receive a timeout"
            )


__all__ = ["NO_MESSAGE", "ReplayCheck", "WorkflowRun", "check_replay", "run_workflow"]
