"""Durable workflows: ``async def`` functions that await other functions, by replay.

A workflow's state is a journal (``dispatchlet.workflow.v1.Journal``), plain data: its
input and, slot by slot, the steps its code made (calls, timers, patches) with their
outcomes as they arrived. A run executes the coroutine from its start; an await whose
outcome is in the journal returns it at once, and the first await that has none ends
the run with a Poll: the new calls, and the journal as ``typed_coroutine_state``. The
scheduler resumes the call with the journal and the results, and the coroutine runs
again from its start, now a little further. Nothing depends on the Python version or
on the bytecode, so in-flight workflows survive redeploys and upgrades.

- Slots are numbered in the order the code makes its steps, when a call (or a timer)
  is created: ``gather`` is deterministic. Each replayed step is checked against the
  function name recorded in its slot; a difference is a ``StepMismatch``.
- An outcome gets a place in the order outcomes arrived; ``gather``, ``any`` and
  ``race`` decide by that order, so every replay decides as the first run did.
- A call's correlation id is its slot plus one. A result for an unknown id, or for a
  slot that has one already, is ignored.
- A workflow awaits only these awaitables. An async function that awaits nothing of
  them is a plain coroutine run on an event loop; one that mixes both is refused,
  since what it awaited otherwise would run again on every resume.

Everything here is sans-IO: the scheduler does the calling and the waiting.
"""

from __future__ import annotations

import contextvars
import time
import typing
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from google.protobuf import any_pb2, message

from ..proto.dispatch.sdk.v1 import call_pb2, function_pb2, poll_pb2
from ..proto.dispatchlet.workflow.v1 import journal_pb2
from . import functions, values
from .errors import (
    AllFailed,
    CallFailed,
    ConfigurationError,
    IncompatibleState,
    PermanentError,
    StepMismatch,
    error_class,
    status_for_type,
)
from .functions import FUNCTION_NAME, Function
from .status import Status

if typing.TYPE_CHECKING:
    from .endpoint import Endpoint

JOURNAL_VERSION = 1
JOURNAL_TYPE_URL = values.TYPE_URL_PREFIX + journal_pb2.Journal.DESCRIPTOR.full_name
MAX_POLL_CALLS = 1000
"""Calls one Poll may start (the protocol's bound); larger fan-outs take several."""
MAX_POLL_RESULTS = 1000
WAIT_FOR_RESULTS = 24 * 3600.0
"""How long a Poll waits for results before the workflow looks again."""

CURRENT: contextvars.ContextVar[Replay | None] = contextvars.ContextVar(
    "dispatchlet.workflow", default=None
)
"""The workflow run the running code is part of (set by ``Driver``, in its task)."""
functions.WORKFLOW = typing.cast("contextvars.ContextVar[object]", CURRENT)

clock: Callable[[], int] = time.time_ns
"""Nanoseconds since the epoch, for timers (a test harness may move it)."""

Kind = journal_pb2.Step.Kind
CALL, SLEEP, PATCH = (
    journal_pb2.Step.KIND_CALL,
    journal_pb2.Step.KIND_SLEEP,
    journal_pb2.Step.KIND_PATCH,
)
_KIND_NAMES = {CALL: "a call of", SLEEP: "a sleep", PATCH: "patched"}


class Mode(Enum):
    ALL = "gather"
    ANY = "any"
    RACE = "race"


class NotDurable(PermanentError):
    """A workflow awaited something that the journal cannot remember."""


class Awaitable:
    """What a workflow awaits: steps, and the rule that decides when they are done."""

    steps: tuple[Step, ...]
    mode: Mode = Mode.ALL
    single = True

    def __await__(self) -> Generator[Awaitable, Any, Any]:
        return (yield self)


class Step(Awaitable):
    """One step of a workflow, in its slot: a call or a timer."""

    def __init__(self, replay: Replay, slot: int, record: journal_pb2.Step) -> None:
        self.replay = replay
        self.slot = slot
        self.record = record
        self.steps = (self,)


class Call(Step):
    """A call of a function, run by the scheduler when the workflow first awaits it."""

    def __init__(
        self,
        replay: Replay,
        slot: int,
        record: journal_pb2.Step,
        encode: Callable[[], any_pb2.Any],
    ) -> None:
        super().__init__(replay, slot, record)
        self._encode = encode

    def call(self) -> call_pb2.Call:
        record = self.record
        return call_pb2.Call(
            correlation_id=self.slot + 1,
            function=record.name,
            endpoint=record.endpoint,
            input=self._encode(),
        )

    def __repr__(self) -> str:
        return f"<dispatchlet call of {self.record.name} in slot {self.slot}>"


class Sleep(Step):
    def __repr__(self) -> str:
        return f"<dispatchlet sleep in slot {self.slot}>"


class Group(Awaitable):
    single = False

    def __init__(self, steps: tuple[Step, ...], mode: Mode) -> None:
        self.steps = steps
        self.mode = mode


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
        from .endpoint import DEFAULT_MAX_JOURNAL_SIZE, DEFAULT_MAX_WORKFLOW_STEPS

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
                    f"slot {slot}: the journal records {_describe(record.kind, record.name)}, "
                    f"the code now makes {_describe(kind, name)}: the workflow's steps "
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
        self, function: Function[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
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
        return Call(
            self, slot, record, lambda: values.to_any(value, allow_pickle=self.allow_pickle)
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

    def sleep(self, seconds: float) -> Sleep:
        slot, record = self._reserve(SLEEP, "")
        if not record.started:
            record.started = True
            record.wake_at.FromNanoseconds(clock() + int(seconds * 1e9))
            if seconds <= 0:
                self._arrive(record)
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

    def _arrive(self, record: journal_pb2.Step) -> None:
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
            if record.kind != CALL or not record.started or record.arrival:
                continue  # not a call we started, or a result delivered twice
            record.result.CopyFrom(result)
            self._arrive(record)
        for record in steps:
            if (
                record.kind == SLEEP
                and not record.arrival
                and record.wake_at.ToNanoseconds() <= now_ns
            ):
                self._arrive(record)

    def outcome(self, step: Step) -> tuple[bool, object]:
        """(True, value) or (False, exception) for a step that has arrived."""
        record = step.record
        if record.kind == SLEEP:
            return True, None
        result = record.result
        if result.HasField("error"):
            return False, _failure(record.name, result)
        if not result.HasField("output"):
            return True, None
        return True, values.from_any(result.output, allow_pickle=self.unpickle)

    def resolve(self, awaited: Awaitable) -> tuple[bool, object] | None:
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

    def suspend(self, awaited: Awaitable) -> function_pb2.RunResponse:
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
            f"the workflow {self.journal.function} awaited {_short(awaited)}, which is not "
            "a dispatchlet step: a workflow runs again from its start on every resume, and "
            "only calls of registered functions, gather, any, race and sleep are remembered "
            "in its journal. Put other I/O (asyncio.sleep, HTTP requests, ...) in a "
            "registered function and await a call of it, or use dispatchlet.sleep"
        )


def _describe(kind: Kind.ValueType, name: str) -> str:
    label = _KIND_NAMES.get(kind, "an unknown step")
    if kind == PATCH:
        return f"patched({name!r})"
    return f"{label} {name!r}" if name else label


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_failure_classes: dict[str, type[CallFailed]] = {}


def _failure(function: str, result: call_pb2.CallResult) -> CallFailed:
    error = result.error
    cls = _failure_classes.get(error.type)
    if cls is None:
        cls = CallFailed
        base = error_class(error.type)
        if base is not None and issubclass(base, Exception) and base is not Exception:
            try:
                cls = type(f"CallFailed[{base.__name__}]", (CallFailed, base), {})
            except TypeError:  # an incompatible layout: the plain class
                cls = CallFailed
        _failure_classes[error.type] = cls
    status = status_for_type(error.type)
    try:
        return cls(function, error.type, error.message, status, result.dispatch_id)
    except TypeError:
        return CallFailed(function, error.type, error.message, status, result.dispatch_id)


# -- the public awaitables


def _replay(what: str) -> Replay:
    replay = CURRENT.get()
    if replay is None:
        raise RuntimeError(
            f"{what} is a durable step: use it in an async function registered on an "
            "Endpoint, run by the scheduler"
        )
    return replay


def _steps(awaitables: tuple[object, ...], what: str) -> tuple[Step, ...]:
    steps = []
    for item in awaitables:
        if not isinstance(item, Step):
            raise TypeError(
                f"{what}() takes calls of registered functions and sleeps, not "
                f"{_short(item)}: to run a helper coroutine beside others, register it "
                "as a function (a child workflow) and pass a call of it"
            )
        steps.append(item)
    return tuple(steps)


def gather(*awaitables: Any) -> Any:
    """Await all: their results in the order given; the first error (in the order the
    outcomes arrived) is raised."""
    _replay("gather")
    return Group(_steps(awaitables, "gather"), Mode.ALL)


def any(*awaitables: Any) -> Any:
    """Await the first success; when all fail, ``AllFailed`` with every error."""
    _replay("any")
    if not awaitables:
        raise ValueError("any() needs at least one call")
    return Group(_steps(awaitables, "any"), Mode.ANY)


def race(*awaitables: Any) -> Any:
    """Await the first outcome: its result, or its error raised."""
    _replay("race")
    if not awaitables:
        raise ValueError("race() needs at least one call")
    return Group(_steps(awaitables, "race"), Mode.RACE)


def sleep(duration: float | timedelta) -> Any:
    """A durable timer: the workflow is resumed once ``duration`` (seconds or a
    timedelta) has passed, whatever happens to the processes meanwhile."""
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    if seconds != seconds:  # NaN
        raise ValueError("sleep() needs a number of seconds, not NaN")
    return _replay("sleep").sleep(seconds)


def patched(name: str) -> bool:
    """True where a run of the workflow reaches this point after the code took the
    patch ``name``, False in runs recorded by the code before it: ``if patched("x"):
    new steps, else: the old ones``, so that runs in flight keep their old branch."""
    return _replay("patched").patched(name)


def call(function: str, input: object = None, *, endpoint: str = "") -> Any:
    """A call of ``function`` by name, on ``endpoint`` (a URL or a Lambda ARN; this
    endpoint when empty), with ``input`` encoded by the value codec."""
    return _replay("call").call_by_name(function, input, endpoint)


# -- running a workflow


def read_journal(result: poll_pb2.PollResult, function: str) -> journal_pb2.Journal:
    """The journal a resume carries back; IncompatibleState when it is not one this
    code can read."""
    kind = result.WhichOneof("state")
    if kind != "typed_coroutine_state":
        raise IncompatibleState(
            f"{function} cannot resume this state: "
            + ("it holds no journal" if kind is None else "it is another SDK's coroutine state")
        )
    state = result.typed_coroutine_state
    if state.type_url.rsplit("/", 1)[-1] != journal_pb2.Journal.DESCRIPTOR.full_name:
        raise IncompatibleState(
            f"{function} cannot resume a state of type {state.type_url[:100]!r}"
        )
    try:
        journal = journal_pb2.Journal.FromString(state.value)
    except message.DecodeError:
        raise IncompatibleState(f"{function}: the journal is malformed") from None
    if journal.version != JOURNAL_VERSION:
        raise IncompatibleState(
            f"{function}: the journal has version {journal.version}, this code reads "
            f"version {JOURNAL_VERSION}"
        )
    if journal.function != function:
        raise IncompatibleState(
            f"the journal belongs to {journal.function[:100]!r}, not to {function!r}"
        )
    return journal


def new_journal(function: str, input: any_pb2.Any | None) -> journal_pb2.Journal:
    journal = journal_pb2.Journal(version=JOURNAL_VERSION, function=function)
    if input is not None and input.type_url:
        journal.input.CopyFrom(input)
    return journal


@dataclass
class Suspended:
    response: function_pb2.RunResponse


class Driver:
    """Drives a workflow's coroutine inside an asyncio task: the steps it awaits are
    answered from the journal here; anything else it awaits passes through to the
    event loop, which is how a plain coroutine (one with no steps) runs."""

    def __init__(self, coroutine: typing.Coroutine[Any, Any, Any], replay: Replay) -> None:
        self.coroutine = coroutine
        self.replay = replay

    def __await__(self) -> Generator[Any, Any, Any]:
        token = CURRENT.set(self.replay)
        try:
            return (yield from self._drive())
        finally:
            CURRENT.reset(token)

    def _drive(self) -> Generator[Any, Any, Any]:
        coroutine, replay = self.coroutine, self.replay
        value: object = None
        error: BaseException | None = None
        while True:
            try:
                yielded = coroutine.throw(error) if error is not None else coroutine.send(value)
            except StopIteration as stop:
                if replay.failure is not None:
                    raise replay.failure from None
                return stop.value
            except BaseException:
                if replay.failure is not None:
                    raise replay.failure from None
                raise
            value, error = None, None
            if replay.failure is not None:
                # Raised in the coroutine, which caught it: it ends the run all the same.
                coroutine.close()
                raise replay.failure
            if isinstance(yielded, Awaitable):
                if replay.foreign is not None:
                    error = replay.failure = replay.not_durable(replay.foreign)
                    continue
                resolved = replay.resolve(yielded)
                if resolved is None:
                    response = replay.suspend(yielded)
                    coroutine.close()
                    return Suspended(response)
                ok, outcome = resolved
                if ok:
                    value = outcome
                else:
                    error = typing.cast(BaseException, outcome)
            elif replay.cursor or replay.resumed:
                error = replay.failure = replay.not_durable(yielded)
            else:
                # A plain coroutine so far: the event loop handles what it awaits.
                replay.foreign = yielded if yielded is not None else "asyncio.sleep(0)"
                try:
                    value = yield yielded
                except BaseException as exc:
                    error = exc


def run_workflow(
    function: Function[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    replay: Replay,
    timeout: float | None,
) -> object:
    """Run the workflow's coroutine once: its return value, or ``Suspended``."""
    from .runner import run_coroutine

    async def drive() -> object:
        return await Driver(function.fn(*args, **kwargs), replay)

    return run_coroutine(drive(), timeout)


@dataclass(frozen=True)
class ReplayCheck:
    """What replaying one recorded journal with the current code showed."""

    function: str
    ok: bool
    """False when resuming this run with this code would fail for the code's change (a
    step in another order, a function gone, a journal it cannot read)."""
    recorded: int
    """Steps in the journal."""
    replayed: int
    """Steps the code made again before it stopped."""
    outcome: str
    """``suspended`` (it would wait for more), ``returned``, ``raised ...`` or the
    reason it is not ok."""


def check_replay(endpoint: Endpoint, journal: bytes | journal_pb2.Journal) -> ReplayCheck:
    """Replay a recorded journal (``Journal`` bytes, as a Poll carries them) with the
    endpoint's current code, calling nothing: whether runs in flight in that state
    would resume after a deploy. Journals come from ``dispatchlet.testing`` runs or
    from the scheduler's suspended calls."""
    if isinstance(journal, bytes):
        try:
            journal = journal_pb2.Journal.FromString(journal)
        except message.DecodeError:
            return ReplayCheck("", False, 0, 0, "not a journal: it does not parse")
    name = journal.function
    recorded = len(journal.steps)
    function = endpoint.functions.get(name)
    if function is None or not function.is_async:
        why = "no such function" if function is None else "it is no longer an async function"
        return ReplayCheck(name, False, recorded, 0, f"{why}: {name!r}")
    if journal.version != JOURNAL_VERSION:
        return ReplayCheck(name, False, recorded, 0, f"journal version {journal.version}")
    replay = Replay(
        journal, endpoint, allow_pickle=endpoint.allow_pickle, unpickle=endpoint.allow_pickle
    )
    from .context import RunContext

    try:
        value = values.from_any(journal.input, allow_pickle=endpoint.allow_pickle)
        args, kwargs = function.arguments(
            value, bool(journal.input.type_url), lambda: RunContext(function=name)
        )
        result = run_workflow(function, args, kwargs, replay, None)
    except (IncompatibleState, NotDurable) as exc:
        return ReplayCheck(name, False, recorded, replay.cursor, str(exc))
    except Exception as exc:
        if replay.failure is exc:
            return ReplayCheck(name, False, recorded, replay.cursor, str(exc))
        return ReplayCheck(
            name, True, recorded, replay.cursor, f"raised {type(exc).__name__}: {exc}"
        )
    outcome = "suspended" if isinstance(result, Suspended) else "returned"
    return ReplayCheck(name, True, recorded, min(replay.cursor, recorded), outcome)


__all__ = [
    "MAX_POLL_CALLS",
    "AllFailed",
    "CallFailed",
    "NotDurable",
    "any",
    "call",
    "gather",
    "patched",
    "race",
    "sleep",
]
