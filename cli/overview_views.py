"""``dispatchlet calls stats``: the scheduler's overview as text, or as JSON."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from ..client.overview import LimitOverview, Overview
from .call_views import duration


def overview_lines(overview: Overview) -> list[str]:
    """The overview for people: the queue, the last hour's calls by status and minute,
    by function, the slowest and most failing, and the answering process's
    destinations."""
    queue = overview.queue
    oldest = f" (oldest waiting {duration(queue.oldest_ready_age)})" if queue.ready else ""
    lines = [
        f"queue: {queue.ready} ready{oldest}, {queue.scheduled} scheduled, "
        f"{queue.running} running, {queue.waiting} waiting",
    ]
    window = duration(overview.window)
    totals: dict[str, int] = {}
    for counted in overview.finished:
        name = _name(counted.status)
        totals[name] = totals.get(name, 0) + counted.count
    finished = sum(totals.values())
    by_status = ", ".join(f"{count} {name}" for name, count in sorted(totals.items()))
    detail = f" ({by_status})" if by_status else ""
    lines.append(f"finished in the last {window}: {finished}{detail}")
    if overview.finished:
        statuses = sorted(totals)
        minutes: dict[datetime.datetime, dict[str, int]] = {}
        for counted in overview.finished:
            minutes.setdefault(counted.minute, {})[_name(counted.status)] = counted.count
        rows = [["minute (UTC)", *statuses]]
        for minute, counts in minutes.items():
            rows.append([minute.strftime("%H:%M"), *(str(counts.get(s, 0)) for s in statuses)])
        lines += ["", *_table(rows)]
    if overview.functions:
        rows = [["function", "calls", "failed", "p50", "p99"]]
        for f in overview.functions:
            rows.append([f.function, str(f.calls), str(f.failed), duration(f.p50), duration(f.p99)])
        lines += ["", *_table(rows), ""]
        lines.append("slowest (p99): " + ", ".join(overview.slowest))
        failing = {f.function: f for f in overview.functions}
        lines.append(
            "most failing: "
            + (
                ", ".join(
                    f"{name} ({failing[name].failed} of {failing[name].calls})"
                    for name in overview.most_failing
                )
                or "none"
            )
        )
    lines.append("")
    if overview.limits:
        lines.append("limited functions (every process): limits, now")
        for limit in overview.limits:
            lines.append(f"  {limit.function}  {limit_text(limit)}")
        lines.append("")
    if overview.destinations:
        lines.append("destinations (this scheduler process): limit, in flight")
        for d in overview.destinations:
            lines.append(f"  {d.destination}  {d.limit}  {d.in_flight}")
    else:
        lines.append("destinations (this scheduler process): none called yet")
    return lines


def limit_text(limit: LimitOverview) -> str:
    """A limited function's limits and what it uses of them, in a few words."""
    parts = []
    if limit.concurrency:
        parts.append(f"{limit.in_flight} of {limit.concurrency} in flight")
    elif limit.in_flight:
        parts.append(f"{limit.in_flight} in flight")
    if limit.concurrency_per_key:
        parts.append(
            f"at most {limit.concurrency_per_key} per key, {limit.keys_in_flight} keys in flight"
        )
    if limit.rate_count:
        parts.append(
            f"{limit.started} of {limit.rate_count} starts per {duration(limit.rate_period)}"
        )
    return "; ".join(parts)


def overview_dict(overview: Overview) -> dict[str, Any]:
    """The overview as JSON values (times in ISO 8601, durations in seconds)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime.datetime):
            return value.isoformat().replace("+00:00", "Z")
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    whole = dataclasses.asdict(overview)
    for minute, counted in zip(whole["finished"], overview.finished, strict=True):
        minute["status"] = _name(counted.status)
    return dict(plain(whole))


def _name(status: object) -> str:
    return getattr(status, "name", None) or "UNKNOWN"


def _table(rows: list[list[str]]) -> list[str]:
    """``rows`` in aligned columns: the first to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
