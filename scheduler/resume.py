"""Resuming a failed workflow from where it failed (``CallService.Resume``): the Poll a
new call starts from, made of the failed call's journal.

A workflow's journal (``dispatchlet.workflow.v1.Journal``) is what it answered its
last Poll with: its steps up to the ones it then waited for. The results of those came
to it with the attempt that failed and are not in the journal; the scheduler has them,
as the workflow's children. The journal a resume starts from keeps every step that had
finished before, adds the results that came OK with the failing attempt, and makes
every other step of the wait (the failed one, and any unfinished one) a step not made
yet, which the resumed run calls anew. Pure: no store, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import message

from ..core.errors import DispatchletError
from ..core.journal import CALL, JOURNAL_TYPE_URL, JOURNAL_VERSION, RECEIVE
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import call_pb2, poll_pb2
from ..proto.dispatchlet.workflow.v1 import journal_pb2
from .store import Child


class NotResumable(DispatchletError):
    """A call that cannot be resumed as it is (Connect ``failed_precondition``)."""

    http_status = 400
    code = "failed_precondition"


NO_JOURNAL = (
    "the call kept no workflow journal to resume from: it is not a workflow, or it failed "
    "before it made its first step, or it was cancelled; re-run it to run it again from "
    "its input"
)


@dataclass(frozen=True)
class Resumed:
    """The Poll a resume starts from, and what became of the old run's steps."""

    poll: bytes
    """A serialized ``Poll`` holding the journal in its ``typed_coroutine_state``."""
    kept: int
    """Steps the resumed run starts with, finished."""
    retried: int
    """Steps it makes anew: the failed one, and those that had not finished."""


def resumed_poll(poll: bytes, children: Sequence[Child]) -> Resumed:
    """The Poll a new call resumes the failed workflow from, given the Poll the workflow
    had answered last (``Call.poll``) and its ``children`` in creation order;
    ``NotResumable`` when that is not a dispatchlet journal."""
    journal = _journal(poll)
    # A step's child is the newest with its correlation id (the slot plus one): a run
    # restarted from its input made new children for the same slots.
    by_slot = {child.correlation_id - 1: child for child in children}
    arrived: list[tuple[float, int, call_pb2.CallResult]] = []
    retried = 0
    for slot, step in enumerate(journal.steps):
        # A receive is a child too: a message it took is kept; one that timed out or
        # still waited is made anew (a new wait, on the new call).
        if step.kind not in (CALL, RECEIVE) or not step.started or step.arrival:
            continue
        child = by_slot.get(slot)
        result = _ok_result(child)
        if child is not None and result is not None:
            arrived.append((child.finished_at or 0.0, slot, result))
            continue
        # The failed step, or one the failure left unfinished: called anew.
        step.started = False
        step.ClearField("result")
        retried += 1
    # In the order they finished, as the failing attempt was given them.
    for _, slot, result in sorted(arrived, key=lambda found: found[:2]):
        journal.arrivals += 1
        step = journal.steps[slot]
        step.result.CopyFrom(result)
        step.arrival = journal.arrivals
    kept = sum(1 for step in journal.steps if step.arrival)
    resumed = poll_pb2.Poll()
    resumed.typed_coroutine_state.type_url = JOURNAL_TYPE_URL
    resumed.typed_coroutine_state.value = journal.SerializeToString()
    return Resumed(resumed.SerializeToString(), kept, retried)


def _journal(poll: bytes) -> journal_pb2.Journal:
    """The journal in a stored Poll; ``NotResumable`` if it holds none this code reads."""
    if not poll:
        raise NotResumable(NO_JOURNAL)
    try:
        state = poll_pb2.Poll.FromString(poll)
        if state.WhichOneof("state") != "typed_coroutine_state":
            raise NotResumable(
                "the call's state is not a dispatchlet workflow journal (another SDK's "
                "coroutine state): only dispatchlet workflows can be resumed; re-run it"
            )
        kind = state.typed_coroutine_state.type_url.rsplit("/", 1)[-1]
        if kind != journal_pb2.Journal.DESCRIPTOR.full_name:
            raise NotResumable(
                f"the call's state is a {kind[:100]!r}, not a dispatchlet workflow journal: "
                "re-run it"
            )
        journal = journal_pb2.Journal.FromString(state.typed_coroutine_state.value)
    except message.DecodeError:
        raise NotResumable("the call's kept journal is malformed: re-run it") from None
    if journal.version != JOURNAL_VERSION:
        raise NotResumable(
            f"the call's journal has version {journal.version}, this scheduler reads "
            f"version {JOURNAL_VERSION}"
        )
    return journal


def _ok_result(child: Child | None) -> call_pb2.CallResult | None:
    """The child's result if it came to the workflow OK; else None."""
    if child is None or not child.done or not child.delivered:
        return None
    if child.status != Status.OK.value:
        return None
    result = call_pb2.CallResult()
    try:
        result.ParseFromString(child.result)
    except message.DecodeError:
        return None
    if result.HasField("error"):
        return None
    result.correlation_id = child.correlation_id
    result.dispatch_id = child.dispatch_id
    return result
