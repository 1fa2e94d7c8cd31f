"""A workflow's journal: its format, and reading it back from a resume.

The journal (``dispatchlet.workflow.v1.Journal``) is a workflow's whole state, plain
data: its input and, slot by slot, the steps its code made (calls, timers, patches,
receives)
with their outcomes as they arrived. It travels as a Poll's ``typed_coroutine_state``.
"""

from __future__ import annotations

from google.protobuf import any_pb2, message

from ..proto.dispatch.sdk.v1 import poll_pb2
from ..proto.dispatchlet.workflow.v1 import journal_pb2
from .errors import IncompatibleState
from .values import TYPE_URL_PREFIX

JOURNAL_VERSION = 1
JOURNAL_TYPE_URL = TYPE_URL_PREFIX + journal_pb2.Journal.DESCRIPTOR.full_name

Kind = journal_pb2.Step.Kind
CALL, SLEEP, PATCH, RECEIVE = (
    journal_pb2.Step.KIND_CALL,
    journal_pb2.Step.KIND_SLEEP,
    journal_pb2.Step.KIND_PATCH,
    journal_pb2.Step.KIND_RECEIVE,
)
_KIND_NAMES = {CALL: "a call of", SLEEP: "a sleep", PATCH: "patched", RECEIVE: "receive"}


def describe(kind: Kind.ValueType, name: str) -> str:
    """A step as an error message names it: ``a call of 'f'``, ``patched('x')``."""
    label = _KIND_NAMES.get(kind, "an unknown step")
    if kind == PATCH:
        return f"patched({name!r})"
    if kind == RECEIVE:
        return f"receive({name!r})"
    return f"{label} {name!r}" if name else label


def new_journal(function: str, input: any_pb2.Any | None) -> journal_pb2.Journal:
    """The journal of a workflow's first run, holding its input."""
    journal = journal_pb2.Journal(version=JOURNAL_VERSION, function=function)
    if input is not None and input.type_url:
        journal.input.CopyFrom(input)
    return journal


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
