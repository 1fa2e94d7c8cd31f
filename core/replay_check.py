"""Checking a recorded journal against the current code, before a deploy."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from google.protobuf import message

from ..proto.dispatchlet.workflow.v1 import journal_pb2
from . import values
from .context import RunContext
from .errors import IncompatibleState
from .journal import JOURNAL_VERSION
from .replay import NotDurable, Replay
from .workflow_driver import Suspended, run_workflow

if typing.TYPE_CHECKING:
    from .endpoint import Endpoint


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
