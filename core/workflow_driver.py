"""Running a workflow's coroutine once, over its replay.

The driver sits between the coroutine and the event loop: the durable steps the
coroutine awaits are answered from the journal, or run here when they are inline steps
(``inline_steps``), or end the run with a Poll; anything
else passes through to the event loop, which is how a plain coroutine, one that makes
no steps, runs. A coroutine that mixes both is refused (``NotDurable``), since what it
awaited otherwise would run again on every resume.
"""

from __future__ import annotations

import typing
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from ..proto.dispatch.sdk.v1 import function_pb2
from .current_workflow import variable
from .event_loop import run_coroutine
from .workflow_steps import DurableAwaitable

if typing.TYPE_CHECKING:
    from .functions import Function
    from .replay import Replay


@dataclass
class Suspended:
    """A run that waits for results: ``response`` is its Poll."""

    response: function_pb2.RunResponse


class Driver:
    """Drives a workflow's coroutine inside an asyncio task: the steps it awaits are
    answered from the journal here; anything else it awaits passes through to the
    event loop, which is how a plain coroutine (one with no steps) runs."""

    def __init__(self, coroutine: typing.Coroutine[Any, Any, Any], replay: Replay) -> None:
        self.coroutine = coroutine
        self.replay = replay

    def __await__(self) -> Generator[Any, Any, Any]:
        current = variable()
        token = current.set(self.replay)
        try:
            return (yield from self._drive())
        finally:
            current.reset(token)

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
            if isinstance(yielded, DurableAwaitable):
                if replay.foreign is not None:
                    error = replay.failure = replay.not_durable(replay.foreign)
                    continue
                resolved = replay.resolve(yielded)
                if resolved is None and replay.inline is not None:
                    # Its inline steps run here, awaiting what they await on the loop.
                    resolved = yield from replay.inline.run(replay, yielded)
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

    async def drive() -> object:
        return await Driver(function.fn(*args, **kwargs), replay)

    return run_coroutine(drive(), timeout)
