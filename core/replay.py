"""One run of a workflow over its journal.

A ``Replay`` reserves a slot for each step the code makes, checking it against the
journal; records the results a resume brings, in the order they arrived; tells the
outcome of what the code awaits, from the journal alone; and, when that is still
pending, builds the Poll that suspends the run. It calls nothing and waits for nothing:
the scheduler does the calling and the waiting.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Iterable
from typing import Any

from ..proto.dispatch.sdk.v1 import call_pb2, function_pb2, poll_pb2
from ..proto.dispatchlet.workflow.v1 import journal_pb2
from . import values
from .dispatch_options import CallSettings
from .errors import (
    AllFailed,
    CallFailed,
    ConfigurationError,
    PermanentError,
    StepMismatch,
    error_class,
    status_for_type,
)
from .functions import FUNCTION_NAME
from .journal import CALL, JOURNAL_TYPE_URL, PATCH, RECEIVE, SLEEP, Kind, describe
from .limits import (
    DEFAULT_MAX_JOURNAL_SIZE,
    DEFAULT_MAX_WORKFLOW_STEPS,
    MAX_POLL_CALLS,
    MAX_POLL_RESULTS,
)
from .messages import RECEIVE_TIMEOUT, topic_problem
from .status import Status
from .workflow_steps import Call, DurableAwaitable, Mode, Receive, Sleep, Step

if typing.TYPE_CHECKING:
    from .endpoint import Endpoint
    from .functions import Function
    from .inline_steps import InlineSteps

WAIT_FOR_RESULTS = 24 * 3600.0
"""How long a Poll waits for results before the workflow looks again."""

clock: Callable[[], int] = time.time_ns
"""Nanoseconds since the epoch, for timers (a test harness may move it)."""

# Errors travel by type name, module included. These were made in the module
# ``dispatchlet.core.workflow`` before the replay had a module of its own, and keep
# its name: the scheduler, logs and users' filters see it.
_WORKFLOW_MODULE = __name__.rpartition(".")[0] + ".workflow"


class NotDurable(PermanentError):
    """A workflow awaited something that the journal cannot remember."""


NotDurable.__module__ = _WORKFLOW_MODULE


class Replay:
    """One run of a workflow over its journal."""

    def __init__(
        self,
        journal: journal_pb2.Journal,
        endpoint: Endpoint | None,
        *,
        allow_pickle: bool,
        unpickle: bool,
    ) -> None:
        self.journal = journal
        self.endpoint = endpoint
        self.allow_pickle = allow_pickle
        self.unpickle = unpickle
        self.max_steps = DEFAULT_MAX_WORKFLOW_STEPS
        self.max_journal_size = DEFAULT_MAX_JOURNAL_SIZE
        if endpoint is not None:
            self.max_steps = endpoint.max_workflow_steps
            self.max_journal_size = endpoint.max_journal_size
        self.cursor = 0
        self.resumed = len(journal.steps) > 0
        self.foreign: object = None
        """Something other than a step that the run awaited, while it had no steps."""
        self.failure: BaseException | None = None
        """An error that ends the run whatever the code does with it (a mismatch, a
        limit): raised into the coroutine, and reported even if it is caught there."""
        self.inline: InlineSteps | None = None
        """What runs the inline steps of this run; None: every call is a child call
        (replay checks, which call nothing)."""

    # -- steps

    def _reserve(
        self, kind: Kind.ValueType, name: str, endpoint: str = ""
    ) -> tuple[int, journal_pb2.Step]:
        if self.failure is not None:
            raise self.failure
        slot = self.cursor
        steps = self.journal.steps
        if slot < len(steps):
            record = steps[slot]
            if record.kind != kind or record.name != name:
                self.failure = StepMismatch(
                    f"slot {slot}: the journal records {describe(record.kind, record.name)}, "
                    f"the code now makes {describe(kind, name)}: the workflow's steps "
                    "changed order; use patched() to keep runs in flight on their old branch"
                )
                raise self.failure
        else:
            if slot >= self.max_steps:
                self.failure = PermanentError(
                    f"the workflow {self.journal.function} makes more than "
                    f"{self.max_steps} steps (calls, sleeps, patches; "
                    "Endpoint(max_workflow_steps=...)): every resume replays them all; split "
                    "the work into child workflows"
                )
                raise self.failure
            record = steps.add(kind=kind, name=name, endpoint=endpoint)
        self.cursor += 1
        return slot, record

    def call(
        self,
        function: Function[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        settings: CallSettings | None = None,
    ) -> Call:
        owner = function.endpoint
        endpoint = ""
        if owner is not None and owner is not self.endpoint:
            url = owner.endpoint_url
            if not url:
                raise ConfigurationError(
                    f"{function.name} belongs to another endpoint, which has no public URL "
                    "to be called at: set its endpoint_url"
                )
            if self.endpoint is None or url != self.endpoint.endpoint_url:
                endpoint = url
        # Checked now, so that a call with wrong arguments fails where it is made.
        value = function.input_for(*args, **kwargs)
        slot, record = self._reserve(CALL, function.name, endpoint)
        # Inline only as the function's own plain call on this endpoint: per-call options
        # ask the scheduler for something (a delay, a key, limits) only a child call gets.
        inline = function.inline and settings is None and owner is self.endpoint is not None
        return Call(
            self,
            slot,
            record,
            lambda: values.to_any(value, allow_pickle=self.allow_pickle),
            function.defaults if settings is None else settings,
            function if inline else None,
        )

    def call_by_name(self, name: str, value: object, endpoint: str) -> Call:
        if not FUNCTION_NAME.fullmatch(name):
            raise ValueError(f"invalid function name {name!r}")
        if endpoint and not endpoint.startswith(("http://", "https://", "arn:aws:lambda:")):
            raise ValueError(f"invalid endpoint {endpoint!r}: expected http(s):// or a Lambda ARN")
        slot, record = self._reserve(CALL, name, endpoint.rstrip("/"))
        return Call(
            self, slot, record, lambda: values.to_any(value, allow_pickle=self.allow_pickle)
        )

    def receive(self, topic: str, timeout: float | None) -> Receive:
        problem = topic_problem(topic)
        if problem is not None:
            raise ValueError(
                f"receive() needs a topic of 1 to 256 printable characters, not {problem}"
            )
        slot, record = self._reserve(RECEIVE, topic)
        return Receive(self, slot, record, timeout)

    def sleep(self, seconds: float) -> Sleep:
        slot, record = self._reserve(SLEEP, "")
        if not record.started:
            record.started = True
            record.wake_at.FromNanoseconds(clock() + int(seconds * 1e9))
            if seconds <= 0:
                self.arrive(record)
        return Sleep(self, slot, record)

    def patched(self, name: str) -> bool:
        steps = self.journal.steps
        if self.cursor < len(steps):
            record = steps[self.cursor]
            if record.kind == PATCH and record.name == name:
                self.cursor += 1
                return True
            # The run was recorded by code without this patch: the old branch.
            return False
        self._reserve(PATCH, name)
        return True

    # -- outcomes

    def arrive(self, record: journal_pb2.Step) -> None:
        """Give the step's outcome, now recorded, its place in the order of arrival."""
        self.journal.arrivals += 1
        record.arrival = self.journal.arrivals

    def merge(self, results: Iterable[call_pb2.CallResult]) -> None:
        """Record the results a resume brought, then the timers that are due."""
        now_ns = clock()
        steps = self.journal.steps
        for result in results:
            slot = result.correlation_id - 1
            if not 0 <= slot < len(steps):
                continue
            record = steps[slot]
            if record.kind not in (CALL, RECEIVE) or not record.started or record.arrival:
                continue  # not a call we started, or a result delivered twice
            record.result.CopyFrom(result)
            self.arrive(record)
        for record in steps:
            if (
                record.kind == SLEEP
                and not record.arrival
                and record.wake_at.ToNanoseconds() <= now_ns
            ):
                self.arrive(record)

    def outcome(self, step: Step) -> tuple[bool, object]:
        """(True, value) or (False, exception) for a step that has arrived."""
        record = step.record
        if record.kind == SLEEP:
            return True, None
        result = record.result
        if result.HasField("error"):
            if record.kind == RECEIVE and result.error.type == RECEIVE_TIMEOUT:
                return False, TimeoutError(result.error.message)
            return False, _failure(record.name, result)
        if not result.HasField("output"):
            return True, None
        return True, values.from_any(result.output, allow_pickle=self.unpickle)

    def resolve(self, awaited: DurableAwaitable) -> tuple[bool, object] | None:
        """The outcome of ``awaited`` by the journal, or None while it is pending."""
        steps = awaited.steps
        for step in steps:
            if step.replay is not self:
                raise RuntimeError(f"{step!r} belongs to another run of the workflow")
        if awaited.single:
            return self.outcome(steps[0]) if steps[0].record.arrival else None
        arrived = sorted((s.record.arrival, i) for i, s in enumerate(steps) if s.record.arrival)
        outcomes = {i: self.outcome(steps[i]) for _, i in arrived}
        mode = awaited.mode
        if mode is Mode.RACE:
            return outcomes[arrived[0][1]] if arrived else None
        complete = len(arrived) == len(steps)
        if mode is Mode.ANY:
            for _, i in arrived:
                if outcomes[i][0]:
                    return outcomes[i]
            if complete:
                errors = [typing.cast(CallFailed, outcomes[i][1]) for i in range(len(steps))]
                return False, AllFailed(errors)
            return None
        for _, i in arrived:
            if not outcomes[i][0]:
                return outcomes[i]
        if complete:
            return True, [outcomes[i][1] for i in range(len(steps))]
        return None

    # -- suspending

    def suspend(self, awaited: DurableAwaitable) -> function_pb2.RunResponse:
        """The Poll that waits for what ``awaited`` still needs."""
        poll = poll_pb2.Poll(max_results=MAX_POLL_RESULTS)
        started_now = 0
        pending_calls = 0
        unstarted = 0
        wait = WAIT_FOR_RESULTS
        now_ns = clock()
        for step in dict.fromkeys(awaited.steps):  # each step once, in order
            record = step.record
            if record.arrival:
                continue
            if isinstance(step, Call):
                if not record.started:
                    if started_now == MAX_POLL_CALLS:
                        unstarted += 1
                        continue
                    poll.calls.append(step.call())
                    record.started = True
                    started_now += 1
                pending_calls += 1
            else:
                wait = min(wait, (record.wake_at.ToNanoseconds() - now_ns) / 1e9)
        if unstarted or awaited.mode is not Mode.ALL:
            # Back after the first result: to start the rest, or to decide.
            poll.min_results = 1
        else:
            poll.min_results = max(1, min(pending_calls, MAX_POLL_RESULTS))
        # A timer a little early is looked at again; the protocol's least wait is 1 s.
        poll.max_wait.FromNanoseconds(int(max(1.0, wait) * 1e9))
        size = self.journal.ByteSize()
        if size > self.max_journal_size:
            raise PermanentError(
                f"the journal of the workflow {self.journal.function} is {size} bytes, over "
                f"the limit of {self.max_journal_size} (Endpoint(max_journal_size=...)): it "
                "carries the workflow's input and every result; keep large values elsewhere "
                "and pass references"
            )
        poll.typed_coroutine_state.type_url = JOURNAL_TYPE_URL
        poll.typed_coroutine_state.value = self.journal.SerializeToString()
        answer = function_pb2.RunResponse(status=Status.OK.value)  # type: ignore[arg-type]
        answer.poll.CopyFrom(poll)
        return answer

    def not_durable(self, awaited: object) -> NotDurable:
        return NotDurable(
            f"the workflow {self.journal.function} awaited {short_repr(awaited)}, which is "
            "not a dispatchlet step: a workflow runs again from its start on every resume, "
            "and only calls of registered functions, gather, any, race and sleep are "
            "remembered in its journal. Put other I/O (asyncio.sleep, HTTP requests, ...) "
            "in a registered function and await a call of it, or use dispatchlet.sleep"
        )


def short_repr(value: object) -> str:
    """``repr(value)``, cut to fit in an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_failure_classes: dict[str, type[CallFailed]] = {}


def _failure(function: str, result: call_pb2.CallResult) -> CallFailed:
    """The exception a failed call raises in the workflow: a ``CallFailed`` that is an
    instance of its error's type too, when this process knows that type by name."""
    error = result.error
    cls = _failure_classes.get(error.type)
    if cls is None:
        cls = CallFailed
        base = error_class(error.type)
        if base is not None and issubclass(base, Exception) and base is not Exception:
            try:
                cls = type(
                    f"CallFailed[{base.__name__}]",
                    (CallFailed, base),
                    {"__module__": _WORKFLOW_MODULE},
                )
            except TypeError:  # an incompatible layout: the plain class
                cls = CallFailed
        _failure_classes[error.type] = cls
    status = status_for_type(error.type)
    try:
        return cls(function, error.type, error.message, status, result.dispatch_id)
    except TypeError:
        return CallFailed(function, error.type, error.message, status, result.dispatch_id)
