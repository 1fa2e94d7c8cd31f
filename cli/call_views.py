"""How ``dispatchlet dispatch`` and ``dispatchlet calls`` show calls: table rows, the
lines of ``calls show``, JSON objects, a failed attempt, a workflow's journal decoded.

Values (inputs, outputs, a journal's results) are decoded with ``core.value_views``; a
pickle is described, never unpickled."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from google.protobuf import any_pb2

from ..client import AttemptInfo, CallInfo
from ..core.dispatch_options import Backoff
from ..core.status import Status
from ..core.value_views import describe_any, plain, read_journal, text

_ERROR_WIDTH = 100  # characters of an error message in a table row


def moment(when: datetime.datetime | None) -> str:
    """A time in UTC, to the second: 2026-12-05T14:50:20Z."""
    if when is None:
        return "-"
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _one_line(words: str, limit: int | None = None) -> str:
    words = " ".join(words.split())
    if limit is not None and len(words) > limit:
        return words[: limit - 3] + "..."
    return words


def error_text(info: CallInfo, limit: int | None = None) -> str:
    if info.error is None:
        return ""
    return _one_line(f"{info.error.type}: {info.error.message}", limit)


def status_name(info: CallInfo) -> str:
    return info.status.name if info.status is not None else "-"


# --- a failed attempt, as `--wait` reports it ----------------------------------------


def attempt_line(info: CallInfo, now: datetime.datetime | None = None) -> str:
    """attempt 2 failed: TCP_ERROR ConnectionRefusedError: ...; next try in 0.4s"""
    status = info.last_status.name if info.last_status is not None else "error"
    line = f"attempt {info.attempts} failed: {status}"
    if info.error is not None:
        line += f" {error_text(info)}"
    if info.ready_at is not None:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        line += f"; next try in {duration((info.ready_at - now).total_seconds())}"
    return line


# --- calls list ------------------------------------------------------------------------

_HEADER = ("DISPATCH ID", "CREATED", "STATE", "STATUS", "ATTEMPTS", "DURATION", "FUNCTION")


def unlisted_result(info: CallInfo) -> bool:
    """Whether a call's summary (what List gives) leaves out a result it has: the
    output of a call done OK, or an error too large to list."""
    return (info.done and info.status is Status.OK) or _unlisted_error(info) != ""


def _unlisted_error(info: CallInfo) -> str:
    """Where to read the error of a failed call that List left out (too large)."""
    status = info.status if info.done else info.last_status
    if status is None or status is Status.OK or info.error is not None:
        return ""
    return f"(see: dispatchlet calls show {info.dispatch_id})"


def table(calls: Iterable[CallInfo]) -> list[str]:
    """A header and one row per call; the error last, cut to one short line."""
    rows = [
        (
            info.dispatch_id,
            moment(info.created_at),
            info.state,
            status_name(info),
            str(info.attempts),
            duration((info.finished_at - info.created_at).total_seconds())
            if info.finished_at is not None
            else "-",
            info.function,
            error_text(info, _ERROR_WIDTH) or _unlisted_error(info),
        )
        for info in calls
    ]
    widths = [max(len(row[i]) for row in [(*_HEADER, ""), *rows]) for i in range(len(_HEADER))]
    lines = []
    for row in [(*_HEADER, "ERROR"), *rows]:
        cells = [
            row[i].rjust(width) if i == 4 else row[i].ljust(width) for i, width in enumerate(widths)
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


# --- JSON ----------------------------------------------------------------------------


def policy_text(info: CallInfo) -> str:
    """The call's own retry policy in words (empty: the scheduler's settings)."""
    parts = []
    if info.max_attempts is not None:
        parts.append(f"at most {info.max_attempts} attempt{'s' if info.max_attempts != 1 else ''}")
    if info.timeout is not None:
        parts.append(f"{duration(info.timeout.total_seconds())} per attempt")
    backoff = info.backoff
    if backoff is not None:
        waits = f"backoff from {duration(backoff.initial)}, times {backoff.multiplier:g} each retry"
        if backoff.maximum is not None:
            waits += f", at most {duration(backoff.maximum)}"
        parts.append(waits)
    return ", ".join(parts)


def limits_text(info: CallInfo) -> str:
    """The call's concurrency and rate limits in words (empty: none)."""
    parts = []
    if info.concurrency is not None:
        parts.append(f"{info.concurrency} of {info.function} at once")
    if info.concurrency_per_key is not None:
        parts.append(f"{info.concurrency_per_key} at once with key {info.concurrency_key!r}")
    if info.rate_limit is not None:
        count, period = info.rate_limit
        parts.append(f"{count} starts per {duration(period.total_seconds())}")
    return ", ".join(parts)


def seconds_or_none(value: datetime.timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def backoff_dict(backoff: Backoff | None) -> dict[str, Any] | None:
    """A backoff as JSON: its first wait and cap in seconds, and its multiplier."""
    if backoff is None:
        return None
    return {
        "initial": backoff.initial,
        "maximum": backoff.maximum,
        "multiplier": backoff.multiplier,
    }


def rate_limit_dict(rate_limit: tuple[int, datetime.timedelta] | None) -> dict[str, Any] | None:
    """A rate limit as JSON: its count and period (seconds)."""
    if rate_limit is None:
        return None
    return {"count": rate_limit[0], "period": rate_limit[1].total_seconds()}


def as_dict(info: CallInfo, *, history: bool = False) -> dict[str, Any]:
    """A call as JSON can carry it: names for statuses, ISO 8601 times, decoded values,
    a workflow's journal decoded; ``history``: its attempts too (a whole call's)."""
    state = info.coroutine_state
    shown = {
        "dispatch_id": info.dispatch_id,
        "function": info.function,
        "endpoint": info.endpoint,
        "state": info.state,
        "done": info.done,
        "status": info.status.name if info.status is not None else None,
        "attempts": info.attempts,
        "last_status": info.last_status.name if info.last_status is not None else None,
        "input": plain(info.input),
        "output": plain(info.output),
        "error": {"type": info.error.type, "message": info.error.message}
        if info.error is not None
        else None,
        "parent_dispatch_id": info.parent_dispatch_id or None,
        "root_dispatch_id": info.root_dispatch_id,
        "rerun_of": info.rerun_of or None,
        "created_at": info.created_at.isoformat(),
        "finished_at": info.finished_at.isoformat() if info.finished_at is not None else None,
        "expires_at": info.expires_at.isoformat(),
        "ready_at": info.ready_at.isoformat() if info.ready_at is not None else None,
        "coroutine_state": None if state is None else _state_dict(state),
        "max_attempts": info.max_attempts,
        "timeout": seconds_or_none(info.timeout),
        "backoff": backoff_dict(info.backoff),
        "concurrency": info.concurrency,
        "concurrency_key": info.concurrency_key or None,
        "concurrency_per_key": info.concurrency_per_key,
        "rate_limit": rate_limit_dict(info.rate_limit),
    }
    if history:
        shown["attempts_total"] = info.attempts_total
        shown["attempts_history"] = [_attempt_dict(a) for a in info.attempts_history]
    return shown


def _attempt_dict(attempt: AttemptInfo) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "function": attempt.function,
        "started_at": attempt.started_at.isoformat(),
        "duration_seconds": attempt.duration.total_seconds(),
        "status": attempt.status.name if attempt.status is not None else None,
        "error": {"type": attempt.error.type, "message": attempt.error.message}
        if attempt.error is not None
        else None,
    }


def _state_dict(state: any_pb2.Any) -> dict[str, Any]:
    shown: dict[str, Any] = {"type_url": state.type_url, "size": len(state.value)}
    journal = read_journal(state)
    if journal is not None:
        shown["journal"] = journal
    return shown


# --- a workflow's journal ------------------------------------------------------------


def journal_lines(journal: dict[str, Any]) -> list[str]:
    """The journal's steps, one line each: slot, kind and function, state, outcome."""
    lines = [
        f"journal      {journal['function']}: {len(journal['steps'])} step(s), "
        f"{journal['outcomes']} outcome(s) arrived"
    ]
    names = [
        step.get("function") or step.get("name") or step.get("topic") or ""
        for step in journal["steps"]
    ]
    width = max(map(len, names), default=0)
    for step, name in zip(journal["steps"], names, strict=True):
        line = f"  slot {step['slot']:<3} {step['kind']:<5} {name:<{width}}  {step['state']}"
        if "output" in step:
            line += f": {text(step['output'])}"
        elif "error" in step:
            line += f": {_one_line(step['error']['type'] + ': ' + step['error']['message'])}"
        elif step["kind"] == "sleep":
            wake_at = datetime.datetime.fromisoformat(step["wake_at"])
            line += f" until {moment(wake_at)}" if step["state"] == "sleeping" else ""
        lines.append(line)
    return lines


# --- calls show --------------------------------------------------------------------------


def describe(info: CallInfo) -> list[str]:
    """``calls show``: the call's fields, one per line, then its journal when it is a
    suspended dispatchlet workflow."""
    fields = [
        ("dispatch id", info.dispatch_id),
        ("function", info.function),
        ("endpoint", info.endpoint),
        ("state", info.state),
        ("status", status_name(info)),
        ("attempts", str(info.attempts)),
    ]
    if info.last_status is not None and not info.done:
        fields.append(("last status", info.last_status.name))
    fields.append(("created", moment(info.created_at)))
    if info.finished_at is not None:
        took = duration((info.finished_at - info.created_at).total_seconds())
        fields.append(("finished", f"{moment(info.finished_at)} (after {took})"))
    if info.ready_at is not None and not info.done:
        fields.append(("next try", moment(info.ready_at)))
    fields.append(("expires", moment(info.expires_at)))
    if info.parent_dispatch_id:
        fields.append(("parent", info.parent_dispatch_id))
    if info.root_dispatch_id and info.root_dispatch_id != info.dispatch_id:
        fields.append(("root", info.root_dispatch_id))
    if info.rerun_of:
        fields.append(("re-run of", info.rerun_of))
    policy, limits = policy_text(info), limits_text(info)
    if policy:
        fields.append(("policy", policy))
    if limits:
        fields.append(("limits", limits))
    fields.append(("input", text(info.input)))
    if info.done and info.error is None:
        fields.append(("output", text(info.output)))
    if info.error is not None:
        fields.append(("error", error_text(info)))
    lines = [f"{name:<12} {value}" for name, value in fields]
    lines.extend(history_lines(info))
    state = info.coroutine_state
    if state is not None:
        journal = read_journal(state)
        if journal is None:
            lines.append(f"{'state':<12} {describe_any(state)}")
        else:
            lines.extend(journal_lines(journal))
    return lines


_HISTORY_HEADER = ("#", "STARTED", "DURATION", "STATUS", "FUNCTION")


def history_lines(info: CallInfo) -> list[str]:
    """The call's attempts as a table, oldest first, under how many there were in all
    (the history keeps the latest): nothing when none was recorded."""
    if not info.attempts_history:
        return []
    kept = len(info.attempts_history)
    total = info.attempts_total
    more = f", the latest {kept} kept" if total > kept else ""
    rows = [
        (
            str(attempt.number),
            moment(attempt.started_at),
            duration(attempt.duration.total_seconds()),
            attempt.status.name if attempt.status is not None else "-",
            attempt.function,
            _one_line(f"{attempt.error.type}: {attempt.error.message}", _ERROR_WIDTH)
            if attempt.error is not None
            else "",
        )
        for attempt in info.attempts_history
    ]
    header = (*_HISTORY_HEADER, "ERROR")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(_HISTORY_HEADER))]
    lines = [f"{'history':<12} {total} attempt(s){more}"]
    for row in [header, *rows]:
        cells = [
            row[i].rjust(width) if i == 0 else row[i].ljust(width) for i, width in enumerate(widths)
        ]
        lines.append(("  " + "  ".join([*cells, row[-1]])).rstrip())
    return lines
