"""Inline steps: calls a workflow runs inside its own run, journaled, checkpointed by a policy.

A function registered with ``@endpoint.function(inline=True)`` is, in a workflow of the
same endpoint, a step in the manner of DBOS's ``@DBOS.step()`` or Restate's ``ctx.run``:
an await of a call of it (made without ``options``) runs the function here, in the
workflow's own run, and records its outcome in the journal's slot as a delivered result
would be (``Step.inline`` set), and the run goes on. The scheduler sees none of it: a
workflow of inline steps is one Run that exits, instead of a Poll, a child call, a claim
and a resume per step. The contract:

- The step's outcome is the one a child call's run would have had: its input goes
  through the value codec and the input rule, its ``RunContext`` has the dispatch id
  ``<workflow's dispatch id>:<slot>`` (the same on every run of it inline: an
  idempotency key), the workflow as parent, the workflow's root, creation time and
  deadline. Slots, ``StepMismatch``, ``patched`` and replay checks treat it as a call
  of that function; a resume returns the recorded outcome and runs nothing.
- A permanent failure (a status the scheduler does not retry) is recorded as a child's
  failure would be: the workflow's ``except`` sees the same ``CallFailed`` and error
  type. A retryable one is not retried here: the run suspends with that step as a
  child call, so the scheduler's retries, backoff and the function's policy apply, the
  inline run counted as its first attempt (``max_attempts=1``: its failure is the
  step's outcome; else the child has the attempts left, and waits the first backoff);
  what ran before it is in the journal the Poll stores. A returned ``TailCall`` is started
  as that step's child call.
- ``gather`` of inline steps runs the async ones concurrently and the others in order;
  a group mixing inline steps and other calls runs the inline ones, then suspends for
  the rest; results are matched by slot either way. ``any`` and ``race`` stop at the
  first outcome that decides them.
- Checkpoints: once the inline steps of a run took more than ``checkpoint_after``
  seconds (``Endpoint(checkpoint_after=...)``, or per workflow), or the run used half of
  its time (its request's expiration), the next inline step runs as a child call
  instead: the Poll that starts it stores the journal, the scheduler resumes the run
  with it. (A Poll that only checkpoints would wait: the protocol's least ``max_wait``
  is one second.) A run always starts from a checkpoint (its first run, or a resume),
  so what a killed endpoint runs again is at most the inline steps since the last one:
  at least once, as a child call would be run again.
- An inline function runs as a plain function: an async one is a coroutine with no
  durable steps of its own (a workflow is not inline); the limits the scheduler holds
  calls to (``concurrency``, ``rate_limit``, ...) and ``schedule`` are refused at
  registration. Its ``timeout`` and retry policy apply when it runs as a child call;
  inline, the workflow's attempt bounds it: a step whose ``timeout`` is longer than
  what is left of the run runs as a child call (a step with no ``timeout`` that outlasts
  the workflow's attempts never ends: give long steps a ``timeout``).
"""

from __future__ import annotations

import logging
import math
import time
import typing
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import Any

from ..proto.dispatch.sdk.v1 import function_pb2
from .current_workflow import variable
from .runner import arguments, error_run_response, exit_response, run_context
from .status import Status
from .workflow_steps import Call, DurableAwaitable, Mode

if typing.TYPE_CHECKING:
    from .functions import Function
    from .replay import Replay

logger = logging.getLogger("dispatchlet")

clock: Callable[[], float] = time.monotonic
"""Seconds, for the checkpoint policy (a test replaces it to move time)."""

Outcome = tuple[bool, object]


class InlineSteps:
    """The inline steps of one run of a workflow: runs them, records their outcomes, and
    hands them to the scheduler as child calls when the run should checkpoint."""

    def __init__(
        self,
        request: function_pb2.RunRequest,
        checkpoint_after: float,
        deadline: float | None,
        *,
        allow_pickle: bool,
        unpickle: bool,
    ) -> None:
        self.request = request
        self.checkpoint_after = checkpoint_after
        self.allow_pickle = allow_pickle
        self.unpickle = unpickle
        self.started = clock()
        self.deadline = deadline
        """When the run's time is up (seconds since the epoch), if it is bounded."""
        self.half_time = math.inf if deadline is None else max(0.0, deadline - time.time()) / 2
        """Half of the run's time: past it, the run checkpoints."""
        self.spent = 0.0
        """Seconds the inline steps of this run took."""
        self.handed: set[int] = set()
        """Slots of eligible calls that run as child calls in this run."""

    def due(self) -> bool:
        """Whether the run should checkpoint before its next inline step."""
        return self.spent > self.checkpoint_after or clock() - self.started > self.half_time

    def _waiting(self, step: object) -> bool:
        return (
            isinstance(step, Call)
            and step.inline is not None
            and not step.record.started
            and not step.record.arrival
            and step.slot not in self.handed
        )

    def run(self, replay: Replay, awaited: DurableAwaitable) -> Generator[Any, Any, Outcome | None]:
        """Run the inline steps ``awaited`` needs, until its outcome is known (returned) or
        what remains is for the scheduler (None: the run suspends with a Poll)."""
        while True:
            waiting = [
                typing.cast(Call, s) for s in dict.fromkeys(awaited.steps) if self._waiting(s)
            ]
            if not waiting:
                return None
            if self.due():
                # The checkpoint: these go as child calls, in the Poll that stores the journal.
                self.handed.update(step.slot for step in waiting)
                return None
            # A step whose own timeout outlasts the run: as a child, it has its timeout
            # (inline, an attempt that ran out of time would run it again, and again).
            outlasting = [step for step in waiting if self._outlasts(step)]
            if outlasting:
                self.handed.update(step.slot for step in outlasting)
                continue
            began = clock()
            concurrent = [s for s in waiting if _function(s).is_async]
            if awaited.mode is Mode.ALL and len(concurrent) > 1:
                yield from self._concurrently(replay, concurrent)
            else:
                self._record(replay, waiting[0], (yield from self._one(waiting[0])))
            self.spent += clock() - began
            resolved = replay.resolve(awaited)
            if resolved is not None:
                return resolved

    def _one(self, step: Call) -> Generator[Any, Any, function_pb2.RunResponse]:
        """The RunResponse of the step's function run here, with no workflow around it."""
        current = variable()
        token = current.set(None)
        try:
            if not _function(step).is_async:
                return self._sync(step)
            return (yield from self._async(step).__await__())
        finally:
            current.reset(token)

    def _concurrently(self, replay: Replay, steps: list[Call]) -> Generator[Any, Any, None]:
        import asyncio

        async def each(step: Call) -> None:
            variable().set(None)  # in this task's own copy of the context
            self._record(replay, step, await self._async(step))

        yield from asyncio.gather(*(each(step) for step in steps)).__await__()

    def _arguments(
        self, step: Call
    ) -> tuple[tuple[object, ...], dict[str, object]] | function_pb2.RunResponse:
        function = _function(step)
        return arguments(
            function,
            step.input(),
            lambda: run_context(function, self._request(step)),
            allow_pickle=self.allow_pickle,
            unpickle=self.unpickle,
        )

    def _sync(self, step: Call) -> function_pb2.RunResponse:
        function = _function(step)
        bound = self._arguments(step)
        if isinstance(bound, function_pb2.RunResponse):
            return bound
        try:
            result = function.fn(*bound[0], **bound[1])
        except Exception as exc:
            return self._failed(step, exc)
        return exit_response(function, result, allow_pickle=self.allow_pickle)

    async def _async(self, step: Call) -> function_pb2.RunResponse:
        function = _function(step)
        bound = self._arguments(step)
        if isinstance(bound, function_pb2.RunResponse):
            return bound
        try:
            result = await function.fn(*bound[0], **bound[1])
        except Exception as exc:
            return self._failed(step, exc)
        return exit_response(function, result, allow_pickle=self.allow_pickle)

    def _failed(self, step: Call, exc: Exception) -> function_pb2.RunResponse:
        logger.warning(
            "%s (inline, %s) failed: %s: %s",
            step.record.name,
            self.dispatch_id(step),
            type(exc).__name__,
            exc,
        )
        return error_run_response(exc, allow_pickle=self.allow_pickle)

    def dispatch_id(self, step: Call) -> str:
        """The step's dispatch id: the workflow's and the slot, the same on every run."""
        return f"{self.request.dispatch_id}:{step.slot}"

    def _request(self, step: Call) -> function_pb2.RunRequest:
        """The RunRequest a child call of the step would have had, as far as the step's
        ``RunContext`` tells it."""
        workflow = self.request
        request = function_pb2.RunRequest(
            function=step.record.name,
            dispatch_id=self.dispatch_id(step),
            parent_dispatch_id=workflow.dispatch_id,
            root_dispatch_id=workflow.root_dispatch_id or workflow.dispatch_id,
        )
        if workflow.HasField("creation_time"):
            request.creation_time.CopyFrom(workflow.creation_time)
        if workflow.HasField("expiration_time"):
            request.expiration_time.CopyFrom(workflow.expiration_time)
        return request

    def _record(self, replay: Replay, step: Call, response: function_pb2.RunResponse) -> None:
        """Record the step's outcome in its slot, or hand the step to the scheduler."""
        ending = response.exit
        if ending.HasField("tail_call"):
            step.handover = ending.tail_call
            self.handed.add(step.slot)
            return
        if Status.answered(response.status).retryable and self._retry(step):
            return
        record = step.record
        record.started = record.inline = True
        record.result.CopyFrom(ending.result)
        record.result.correlation_id = step.slot + 1
        record.result.dispatch_id = self.dispatch_id(step)
        replay.arrive(record)

    def _outlasts(self, step: Call) -> bool:
        """Whether the step's function may take longer (its ``timeout``) than the run has
        left."""
        timeout = step.settings.timeout
        return (
            timeout is not None
            and self.deadline is not None
            and time.time() + timeout > self.deadline
        )

    def _retry(self, step: Call) -> bool:
        """Hand a step whose inline run failed and may be retried to the scheduler, as
        a child call with the attempts its policy has left after that run (its first)
        and the policy's first backoff as its delay; False if it has none left (the
        failure is its outcome)."""
        settings = step.settings
        most = settings.max_attempts
        if most == 1:
            return False
        given: dict[str, Any] = {}
        if most is not None:
            given["max_attempts"] = most - 1
        backoff = settings.backoff
        if backoff is not None and (
            self.deadline is None or time.time() + backoff.initial < self.deadline
        ):
            given["delay"] = backoff.initial
        step.settings = replace(settings, **given) if given else settings
        self.handed.add(step.slot)
        return True


def _function(step: Call) -> Function[..., Any]:
    """The function an inline step runs."""
    function = step.inline
    if function is None:
        raise RuntimeError(f"{step!r} is not an inline step")
    return function
