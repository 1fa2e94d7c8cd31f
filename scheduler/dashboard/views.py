"""What the dashboard's templates show, made from the store's calls: rows of the calls
table, one call whole (its values decoded, its tree, a workflow's steps), the filters of
the calls page read from its query.

Values are decoded as the command line decodes them (``core.value_views``): a pickle is
described, never unpickled. Everything here is plain data; the templates escape it."""

from __future__ import annotations

import datetime
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2

from ...core.errors import InvalidArgument
from ...core.status import Status
from ...core.value_views import decoded, plain, read_journal
from ...core.values import to_any
from ...proto.dispatch.sdk.v1 import call_pb2, poll_pb2
from ..store import AttemptHistory, Call, CallPolicy, State

FAILED = "failed"
MAX_SHOWN_CHARS = 64 * 1024
"""The most characters of one value a page shows (a value may be megabytes)."""
TREE_LIMIT = 500
"""The most calls of a tree the call page lists."""
MAX_DEPTH_SHOWN = 8
"""Deeper calls of a tree are indented as much as this depth."""
PAGE_SIZES = (25, 50, 100, 200)


def moment(when: float | None) -> str:
    """A time in UTC, to the second: 2026-12-05 14:50:20Z."""
    if when is None:
        return ""
    shown = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return shown.strftime("%Y-%m-%d %H:%M:%SZ")


def iso(when: float | None) -> str:
    """A time for a ``<time datetime>`` attribute."""
    if when is None:
        return ""
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat()


def duration(seconds: float) -> str:
    """A span as people read it: 850ms, 4.2s, 3m05s, 2h03m, 1d02h."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def policy_text(own: CallPolicy | None) -> str:
    """A call's own retry policy in words (empty: the scheduler's settings)."""
    if own is None:
        return ""
    parts = []
    if own.max_attempts:
        parts.append(f"at most {own.max_attempts} attempt{'s' if own.max_attempts != 1 else ''}")
    if own.attempt_timeout:
        parts.append(f"{duration(own.attempt_timeout)} per attempt")
    if own.backoff_initial or own.backoff_maximum or own.backoff_multiplier:
        backoff = (
            f"backoff from {duration(own.backoff_initial)}" if own.backoff_initial else "backoff"
        )
        if own.backoff_multiplier:
            backoff += f", times {own.backoff_multiplier:g} each retry"
        if own.backoff_maximum:
            backoff += f", at most {duration(own.backoff_maximum)}"
        parts.append(backoff)
    return "; ".join(parts) + " (the scheduler's settings for the rest)"


def status_name(number: int | None) -> str:
    if number is None:
        return ""
    try:
        return Status(number).name
    except ValueError:
        return str(number)


def outcome(call: Call) -> str:
    """What a badge says of the call: its final status once done, else its state."""
    return status_name(call.status) if call.done else call.state.value


def tone(call: Call) -> str:
    """The badge's colour class: ok, failed, or the state."""
    if call.done:
        return "ok" if call.status == Status.OK.value else "failed"
    return call.state.value


@dataclass(frozen=True)
class Shown:
    """A value as a page shows it: pretty JSON, or a description (``described``)."""

    text: str
    described: bool = False
    cut: bool = False


def shown_value(value: object) -> Shown:
    """A decoded value (``decoded``) for a page: JSON-like values as indented JSON,
    anything else described; cut at ``MAX_SHOWN_CHARS``."""
    made = plain(value)
    if made is value:
        text, described = json.dumps(made, indent=2, ensure_ascii=False), False
    else:
        text, described = str(made), True
    if len(text) > MAX_SHOWN_CHARS:
        return Shown(text[:MAX_SHOWN_CHARS], described, cut=True)
    return Shown(text, described)


def shown_any(data: bytes) -> Shown | None:
    """A serialized ``Any`` for a page; None when there is none."""
    if not data:
        return None
    value = any_pb2.Any()
    try:
        value.ParseFromString(data)
    except Exception:  # a damaged value is described, never a failed page
        return Shown(f"<{len(data)} bytes that are not a protobuf Any>", described=True)
    return shown_value(decoded(value))


@dataclass(frozen=True)
class Result:
    """A call's stored result: its output or its error."""

    output: Shown | None = None
    error_type: str = ""
    error_message: str = ""


def read_result(data: bytes) -> Result:
    if not data:
        return Result()
    result = call_pb2.CallResult()
    try:
        result.ParseFromString(data)
    except Exception:
        return Result(error_type="unreadable", error_message="the stored result cannot be read")
    if result.HasField("error"):
        message = result.error.message
        if len(message) > MAX_SHOWN_CHARS:
            message = message[:MAX_SHOWN_CHARS] + " ..."
        return Result(error_type=result.error.type, error_message=message)
    if result.HasField("output"):
        return Result(output=shown_value(decoded(result.output)))
    return Result()


def one_line(words: str, limit: int = 120) -> str:
    words = " ".join(words.split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


@dataclass(frozen=True)
class Row:
    """One call in a table."""

    call: Call
    depth: int = 0

    @property
    def outcome(self) -> str:
        return outcome(self.call)

    @property
    def tone(self) -> str:
        return tone(self.call)

    @property
    def created(self) -> str:
        return moment(self.call.created_at)

    @property
    def created_iso(self) -> str:
        return iso(self.call.created_at)

    @property
    def took(self) -> str:
        call = self.call
        return "" if call.finished_at is None else duration(call.finished_at - call.created_at)

    @property
    def error(self) -> str:
        """The error a summary carries, on one short line."""
        result = read_result(self.call.result)
        if not result.error_type:
            return ""
        return one_line(f"{result.error_type}: {result.error_message}")

    @property
    def indent(self) -> int:
        return min(self.depth, MAX_DEPTH_SHOWN)


# --- the calls page's filters --------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The calls page's query: what the store's list is asked."""

    status: str = ""
    """A state (ready, running, waiting, done), ``failed``, or a final status's name."""
    function: str = ""
    root: str = ""
    after: str = ""
    size: int = PAGE_SIZES[0]
    search: str = ""
    """A dispatch id looked for (exact)."""
    created_from: str = ""
    """The calls created at or after this time, in UTC (a ``datetime-local`` value)."""
    created_before: str = ""

    def store_filters(self) -> dict[str, Any]:
        """The keyword arguments of ``Store.list`` for these filters."""
        found: dict[str, Any] = {
            "function": self.function or None,
            "root_id": self.root or None,
            "newest_first": True,
            "after": self.after or None,
            "created_after": utc_seconds(self.created_from),
            "created_before": utc_seconds(self.created_before),
        }
        if self.status == FAILED:
            found["failed"] = True
        elif self.status in STATES:
            found["state"] = State(self.status)
        elif self.status:
            found["status"] = Status[self.status].value
        return found

    def query(self, **changed: str) -> dict[str, str]:
        """The query string's fields for these filters (``changed`` replacing some),
        without the empty ones: a link to another page or filter."""
        fields = {
            "status": self.status,
            "function": self.function,
            "root": self.root,
            "created_from": self.created_from,
            "created_before": self.created_before,
            "after": self.after,
            "size": "" if self.size == PAGE_SIZES[0] else str(self.size),
        }
        fields.update(changed)
        return {name: value for name, value in fields.items() if value}

    def query_string(self, **changed: str) -> str:
        """``query`` as a URL's query (``?...``), or nothing."""
        fields = self.query(**changed)
        return f"?{urllib.parse.urlencode(fields)}" if fields else ""


STATES = tuple(state.value for state in State)
FINAL_STATUSES = tuple(s.name for s in Status if s is not Status.UNSPECIFIED)
STATUS_CHOICES = (*STATES, FAILED, *FINAL_STATUSES)
_MAX_FIELD = 256


def read_filters(query: Mapping[str, str]) -> Filters:
    """The filters of the calls page's query; ``InvalidArgument`` naming a bad one."""

    def field_of(name: str) -> str:
        value = query.get(name, "").strip()
        if len(value) > _MAX_FIELD:
            raise InvalidArgument(f"{name} is longer than {_MAX_FIELD} characters")
        return value

    status = field_of("status")
    if status and status not in STATUS_CHOICES:
        status = status.upper() if status.upper() in FINAL_STATUSES else status.lower()
        if status not in STATUS_CHOICES:
            raise InvalidArgument(
                f"unknown status {status[:40]!r}: one of {', '.join(STATUS_CHOICES)}"
            )
    size_text = field_of("size")
    size = PAGE_SIZES[0]
    if size_text:
        if not size_text.isdigit() or int(size_text) not in PAGE_SIZES:
            raise InvalidArgument(f"size must be one of {', '.join(map(str, PAGE_SIZES))}")
        size = int(size_text)
    return Filters(
        status=status,
        function=field_of("function"),
        root=field_of("root"),
        after=field_of("after"),
        size=size,
        search=field_of("id"),
        created_from=local_time(field_of("created_from"), "created_from"),
        created_before=local_time(field_of("created_before"), "created_before"),
    )


def local_time(text: str, name: str) -> str:
    """A time of the page's query as a ``datetime-local`` input shows it (UTC, to the
    minute or the second), or ``InvalidArgument``; empty stays empty."""
    if not text:
        return ""
    try:
        found = datetime.datetime.fromisoformat(text)
        if found.tzinfo is not None:
            found = found.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{name} {text[:40]!r} is not a time: write it as 2026-12-05T18:30 (UTC)"
        ) from None
    return found.isoformat(timespec="seconds" if found.second else "minutes")


def utc_seconds(shown: str) -> float | None:
    """A ``local_time`` as seconds since the epoch (None when empty)."""
    if not shown:
        return None
    found = datetime.datetime.fromisoformat(shown).replace(tzinfo=datetime.timezone.utc)
    return found.timestamp()


# --- a call's tree and a workflow's steps ---------------------------------------------


def tree_rows(calls: Sequence[Call], root_id: str) -> list[Row]:
    """The calls of one tree (in creation order) depth first from its root, each under
    its parent; a call whose parent is not among them is placed under the root."""
    children: dict[str, list[Call]] = {}
    known = {call.dispatch_id for call in calls}
    root = None
    for call in calls:
        if call.dispatch_id == root_id:
            root = call
            continue
        parent = call.parent_id if call.parent_id in known else root_id
        children.setdefault(parent or root_id, []).append(call)
    rows: list[Row] = []
    # Depth first without recursion: a tree may be deep.
    stack: list[tuple[Call, int]] = [] if root is None else [(root, 0)]
    if root is None:
        stack = [(call, 0) for call in reversed(children.get(root_id, []))]
    while stack:
        call, depth = stack.pop()
        rows.append(Row(call, depth))
        for child in reversed(children.get(call.dispatch_id, [])):
            stack.append((child, depth + 1))
    return rows


@dataclass(frozen=True)
class Step:
    """One step of a workflow's journal, with the child call that ran it if known."""

    slot: int
    kind: str
    name: str
    state: str
    output: Shown | None = None
    error: str = ""
    wake_at: str = ""
    child: Row | None = None
    inline: bool = False
    """Run inside the workflow's own run (an inline function): it has no child call."""

    @property
    def wakes(self) -> str:
        """When a timer step fires, as the page shows times."""
        if not self.wake_at:
            return ""
        return moment(datetime.datetime.fromisoformat(self.wake_at).timestamp())


def coroutine_state(call: Call) -> any_pb2.Any | None:
    """The coroutine state of the call's last suspension, if it keeps one: a suspended
    workflow's, or the journal a failed one kept to be resumed from."""
    if not call.poll:
        return None
    poll = poll_pb2.Poll.FromString(call.poll)
    return poll.typed_coroutine_state if poll.HasField("typed_coroutine_state") else None


def journal_steps(
    state: any_pb2.Any | None, children: Sequence[Call]
) -> tuple[dict[str, Any] | None, list[Step]]:
    """A suspended workflow's journal (``read_journal``) and its steps, each call step
    with the child that ran it (correlation id: the slot plus one; the latest such child
    when a restart ran it again)."""
    if state is None:
        return None, []
    journal = read_journal(state)
    if journal is None:
        return None, []
    by_correlation = {child.correlation_id: child for child in children}
    steps = []
    for step in journal["steps"]:
        inline = bool(step.get("inline"))
        ran = step["kind"] in ("call", "receive") and not inline
        child = by_correlation.get(step["slot"] + 1) if ran else None
        error = step.get("error")
        steps.append(
            Step(
                slot=step["slot"],
                kind=step["kind"],
                name=step.get("function") or step.get("name") or step.get("topic") or "",
                state=step["state"],
                output=shown_value(step["output"]) if "output" in step else None,
                error=f"{error['type']}: {error['message']}" if error else "",
                wake_at=step.get("wake_at", ""),
                child=None if child is None else Row(child),
                inline=inline,
            )
        )
    return journal, steps


def message_value(text: str) -> any_pb2.Any:
    """A message typed in the send form, encoded as the CLI's ``calls send`` does: JSON
    when it parses, else the text itself; an empty field sends no value (None)."""
    if not text.strip():
        return to_any(None)
    try:
        value: object = json.loads(text)
    except ValueError:
        value = text
    return to_any(value)


def attempt_rows(history: AttemptHistory) -> list[dict[str, Any]]:
    """The attempts table's rows: a call's history, oldest first."""
    return [
        {
            "#": str(attempt.number),
            "Started": moment(attempt.started_at),
            "Duration": duration(attempt.duration),
            "Status": status_name(attempt.status),
            "Function": attempt.function,
            "Error": one_line(f"{attempt.error_type}: {attempt.error_message}")
            if attempt.error_type or attempt.error_message
            else "",
        }
        for attempt in history.attempts
    ]


@dataclass
class CallPage:
    """Everything the call page shows of one call."""

    call: Call
    input: Shown | None
    result: Result
    tree: list[Row]
    tree_cut: bool
    journal: dict[str, Any] | None
    steps: list[Step]
    state_description: str = ""
    attempts_history: list[dict[str, Any]] = field(default_factory=list)
    """Rows of the attempts table, when the scheduler keeps them."""
    limits: str = ""
    """The call's concurrency and rate limits, in words (empty: none)."""
    held_by: str = ""
    """The limit that holds the call back now, when it is due and one does."""

    @property
    def row(self) -> Row:
        return Row(self.call)

    @property
    def last_status(self) -> str:
        """The latest attempt's status, while the call is not done."""
        return status_name(self.call.status)

    @property
    def policy(self) -> str:
        """The call's own retry policy (empty: the scheduler's settings)."""
        return policy_text(self.call.policy)

    @property
    def times(self) -> list[tuple[str, str, str]]:
        """(name, shown, iso) of each of the call's times that applies."""
        call = self.call
        times = [("Created", call.created_at)]
        if call.state is State.READY:
            if not call.attempts and not call.poll and call.ready_at > call.created_at:
                times.append(("Starts at", call.ready_at))  # a delayed call
            else:
                times.append(("Next attempt" if call.attempts else "Ready at", call.ready_at))
        if call.finished_at is not None:
            times.append(("Finished", call.finished_at))
        times.append(("Expires", call.expires_at))
        return [(name, moment(when), iso(when)) for name, when in times]
