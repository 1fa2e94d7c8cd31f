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
- A call of a function registered with ``inline=True`` on the same endpoint runs inside
  the run and its outcome is journaled as a delivered result (``inline_steps``); the
  run checkpoints through the scheduler as a policy says.
- A workflow awaits only these awaitables. An async function that awaits nothing of
  them is a plain coroutine run on an event loop; one that mixes both is refused,
  since what it awaited otherwise would run again on every resume.

Everything here is sans-IO: the scheduler does the calling and the waiting.

This module holds the primitives a workflow uses; the machinery has modules of its own:
``workflow_steps`` (what a workflow awaits), ``journal`` (the state and its format),
``replay`` (one run over the journal), ``workflow_driver`` (running the coroutine once),
``inline_steps`` (calls of ``inline=True`` functions run in the workflow's own run),
``replay_check`` (replaying recorded journals before a deploy) and ``current_workflow``
(the run the running code is part of).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

# The parts of a workflow, each in a module of its own; their names are re-exported
# here, where they lived before.
from . import replay as _replay_module
from .current_workflow import current_replay, variable
from .errors import AllFailed, CallFailed
from .journal import CALL as CALL
from .journal import JOURNAL_TYPE_URL as JOURNAL_TYPE_URL
from .journal import JOURNAL_VERSION as JOURNAL_VERSION
from .journal import PATCH as PATCH
from .journal import RECEIVE as RECEIVE
from .journal import SLEEP as SLEEP
from .journal import Kind as Kind
from .journal import new_journal as new_journal
from .journal import read_journal as read_journal
from .limits import MAX_POLL_CALLS
from .limits import MAX_POLL_RESULTS as MAX_POLL_RESULTS
from .replay import WAIT_FOR_RESULTS as WAIT_FOR_RESULTS
from .replay import NotDurable, short_repr
from .replay import Replay as Replay
from .replay_check import ReplayCheck as ReplayCheck
from .replay_check import check_replay as check_replay
from .workflow_driver import Driver as Driver
from .workflow_driver import Suspended as Suspended
from .workflow_driver import run_workflow as run_workflow
from .workflow_steps import Call as Call
from .workflow_steps import DurableAwaitable as DurableAwaitable
from .workflow_steps import Group, Mode, Step
from .workflow_steps import Receive as Receive
from .workflow_steps import Sleep as Sleep

CURRENT = variable()
"""The workflow run the running code is part of (set by ``Driver``, in its task)."""


def clock() -> int:
    """Nanoseconds since the epoch by the timers' clock. The clock itself is
    ``replay.clock``: a test harness moves time by replacing that one."""
    return _replay_module.clock()


def _replay(what: str) -> Replay:
    replay = current_replay()
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
                f"{what}() takes calls of registered functions, receives and sleeps, not "
                f"{short_repr(item)}: to run a helper coroutine beside others, register it "
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


def receive(topic: str, timeout: float | timedelta | None = None) -> Any:
    """Wait durably for a message sent to this workflow's call on ``topic``
    (``Client.send``, ``dispatchlet calls send``) and return its value. Messages sent
    before the workflow waits are kept in order, each received once. With ``timeout``
    (seconds or a timedelta, counted from when the scheduler first stores the wait),
    ``TimeoutError`` is raised once it passes with no message; without, the wait lasts
    as long as the call may. Composes with ``gather``, ``any``, ``race`` and ``sleep``."""
    seconds: float | None = None
    if timeout is not None:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        if not seconds > 0:  # NaN too
            raise ValueError(f"receive() needs a positive timeout, not {timeout!r}")
    return _replay("receive").receive(topic, seconds)


def patched(name: str) -> bool:
    """True where a run of the workflow reaches this point after the code took the
    patch ``name``, False in runs recorded by the code before it: ``if patched("x"):
    new steps, else: the old ones``, so that runs in flight keep their old branch."""
    return _replay("patched").patched(name)


def call(function: str, input: object = None, *, endpoint: str = "") -> Any:
    """A call of ``function`` by name, on ``endpoint`` (a URL or a Lambda ARN; this
    endpoint when empty), with ``input`` encoded by the value codec."""
    return _replay("call").call_by_name(function, input, endpoint)


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
    "receive",
    "sleep",
]
