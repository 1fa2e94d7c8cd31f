"""Stored values as people read them: a value decoded for showing (JSON-like, or a
description of what cannot be shown), and a dispatchlet workflow's journal decoded step
by step. Shared by the command line (``calls show``) and the scheduler's dashboard.

Values are decoded with ``values``; a pickle is described, never unpickled."""

from __future__ import annotations

import datetime
import json
from typing import Any

from google.protobuf import any_pb2, message

from ..proto.dispatch.sdk.v1 import call_pb2
from ..proto.dispatchlet.workflow.v1 import journal_pb2
from .messages import RECEIVE_TIMEOUT
from .values import DecodeError, from_any, is_pickled, type_name

_JOURNAL_NAME = journal_pb2.Journal.DESCRIPTOR.full_name
_KINDS = {
    journal_pb2.Step.KIND_CALL: "call",
    journal_pb2.Step.KIND_SLEEP: "sleep",
    journal_pb2.Step.KIND_PATCH: "patch",
    journal_pb2.Step.KIND_RECEIVE: "receive",
}


def plain(value: object) -> object:
    """``value`` as JSON can carry it: itself when it can, else a description."""
    if isinstance(value, any_pb2.Any):
        return describe_any(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def text(value: object) -> str:
    """``value`` on one line: compact JSON, or a description."""
    shown = plain(value)
    # ``plain`` hands back what JSON can carry as it is, else a description to show as is.
    return json.dumps(shown, ensure_ascii=False) if shown is value else str(shown)


def decoded(value: any_pb2.Any) -> object:
    """The value ``value`` holds; itself (described when shown) when it is a pickle,
    which is never unpickled, or cannot be decoded."""
    try:
        return from_any(value)
    except DecodeError:
        return value


def describe_any(value: any_pb2.Any) -> str:
    """What an ``Any`` that is not shown as a value is: a pickle, or its type and size."""
    if is_pickled(value):
        return f"<a pickled Python value of {len(value.value)} bytes, not unpickled>"
    return f"<{value.type_url or 'no type'}: {len(value.value)} bytes>"


def read_journal(state: any_pb2.Any) -> dict[str, Any] | None:
    """The journal in a suspended call's state, decoded; None when the state is not a
    dispatchlet journal (another SDK's) or cannot be read."""
    try:
        if type_name(state) != _JOURNAL_NAME:
            return None
        journal = journal_pb2.Journal.FromString(state.value)
    except (DecodeError, message.DecodeError):
        return None
    return {
        "function": journal.function,
        "version": journal.version,
        "input": plain(decoded(journal.input)) if journal.HasField("input") else None,
        "outcomes": journal.arrivals,
        "steps": [_step(slot, step) for slot, step in enumerate(journal.steps)],
    }


def _step(slot: int, step: journal_pb2.Step) -> dict[str, Any]:
    kind = _KINDS.get(step.kind, "unknown")
    shown: dict[str, Any] = {"slot": slot, "kind": kind}
    if step.kind == journal_pb2.Step.KIND_CALL:
        shown["function"] = step.name
        if step.endpoint:
            shown["endpoint"] = step.endpoint
        if step.inline:
            shown["inline"] = True  # ran in the workflow's run: no child call
        if step.arrival:
            shown.update(_result(step.result))
        else:
            shown["state"] = "pending" if step.started else "not started"
    elif step.kind == journal_pb2.Step.KIND_RECEIVE:
        shown["topic"] = step.name
        if not step.arrival:
            shown["state"] = "waiting" if step.started else "not started"
        elif step.result.HasField("error") and step.result.error.type == RECEIVE_TIMEOUT:
            shown["state"] = "timed out"
        else:
            shown.update(_result(step.result))
            if shown["state"] == "done":
                shown["state"] = "received"
    elif step.kind == journal_pb2.Step.KIND_SLEEP:
        shown["state"] = "done" if step.arrival else "sleeping"
        shown["wake_at"] = step.wake_at.ToDatetime(datetime.timezone.utc).isoformat()
    else:
        shown["name"] = step.name
        shown["state"] = "applied"
    return shown


def _result(result: call_pb2.CallResult) -> dict[str, Any]:
    if result.HasField("error"):
        error = {"type": result.error.type, "message": result.error.message}
        return {"state": "failed", "error": error}
    output = decoded(result.output) if result.HasField("output") else None
    return {"state": "done", "output": plain(output)}
