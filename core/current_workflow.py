"""The workflow run that the running code is part of, if any.

A workflow's driver sets it around the workflow's coroutine, in the coroutine's own
asyncio task, so that runs side by side do not see each other's. It is read where a
call becomes a durable step: calling a registered function, and the step functions
(``gather``, ``sleep``, ...). The context variable is made when a workflow first runs,
so that an endpoint without workflows never imports contextvars (cold starts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import contextvars

    from .replay import Replay

_variable: list[contextvars.ContextVar[Replay | None]] = []
"""The context variable, once made. A list, filled once in place: two threads that run
their first workflows at once both use its first entry."""


def current_replay() -> Replay | None:
    """The run of a workflow the running code is part of; None outside workflows."""
    return _variable[0].get() if _variable else None


def variable() -> contextvars.ContextVar[Replay | None]:
    """The context variable holding the current run, made on first use."""
    if not _variable:
        import contextvars

        _variable.append(contextvars.ContextVar("dispatchlet.workflow", default=None))
    return _variable[0]
