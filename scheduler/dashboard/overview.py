"""The overview page's content: a chart and sections of named figures, made by a
function of the API (``Overview``), so that richer figures plug in as another such
function. The default is the ``CallService/Overview`` answer (the last hour by minute and
status, the queue, this process's destinations) with the counts of calls by state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...proto.dispatchlet.scheduler.v1 import calls_pb2
from ..store import COUNT_CAP, State
from .chart import Chart, minute_chart, status_name

if TYPE_CHECKING:
    from google.protobuf import duration_pb2

    from ..api import Api

Sections = dict[str, dict[str, str]]
"""Section title -> figure name -> figure, in order."""


@dataclass(frozen=True)
class OverviewPage:
    sections: Sections
    chart: Chart | None = None
    """The calls finished per minute by status, drawn above the sections."""


Overview = Callable[["Api"], Awaitable[OverviewPage]]


def _count(count: int) -> str:
    return f"{count:,}+" if count >= COUNT_CAP else f"{count:,}"


def _seconds(duration: duration_pb2.Duration) -> str:
    seconds = duration.seconds + duration.nanos / 1e9
    return f"{seconds * 1000:,.0f} ms" if seconds < 1 else f"{seconds:,.1f} s"


def _limit(limit: calls_pb2.OverviewLimit) -> str:
    """A limited function's limits and what it uses of them, in a few words."""
    parts = []
    if limit.concurrency:
        parts.append(f"{limit.in_flight:,} of {limit.concurrency:,} in flight")
    elif limit.in_flight:
        parts.append(f"{limit.in_flight:,} in flight")
    if limit.concurrency_per_key:
        parts.append(
            f"at most {limit.concurrency_per_key:,} per key, "
            f"{limit.keys_in_flight:,} keys in flight"
        )
    if limit.rate_count:
        parts.append(
            f"{limit.started:,} of {limit.rate_count:,} starts per {_seconds(limit.rate_period)}"
        )
    return "; ".join(parts)


async def queue_overview(api: Api) -> OverviewPage:
    """The last hour's finished calls per minute and status (the chart), then the calls
    by state (every process of the store), the queue and the last hour's finished calls
    as ``CallService/Overview`` tells them, and this process's concurrency limit per
    destination."""
    counts = await api.store.count_by_state()
    answer = await api.overview(calls_pb2.OverviewRequest())
    queue = answer.queue
    finished = Counter[str]()
    for minute in answer.finished:
        finished[status_name(minute.status)] += minute.count
    sections: Sections = {
        "Calls by state": {state.value: _count(counts.get(state, 0)) for state in State},
        "Queue now": {
            "ready (due)": f"{queue.ready:,}",
            "scheduled (due later)": f"{queue.scheduled:,}",
            "running": f"{queue.running:,}",
            "waiting for children": f"{queue.waiting:,}",
            "oldest ready call's wait": _seconds(queue.oldest_ready_age),
        },
        "Finished in the last hour, by status": {
            name: f"{count:,}" for name, count in finished.most_common()
        },
        "Functions in the last hour (calls, failed, p50, p99 from creation to finish)": {
            f.function: (
                f"{f.calls:,} calls, {f.failed:,} failed, p50 {_seconds(f.p50)}, "
                f"p99 {_seconds(f.p99)}"
            )
            for f in answer.functions
        },
        "Slowest functions (p99)": {
            f"{rank}.": name for rank, name in enumerate(answer.slowest, start=1)
        },
        "Most failing functions": {
            f"{rank}.": name for rank, name in enumerate(answer.most_failing, start=1)
        },
        "Limited functions (every process)": {
            limit.function: _limit(limit) for limit in answer.limits
        },
        "Concurrency limit by destination (this process)": {
            d.destination: f"limit {d.limit:,}, {d.in_flight:,} in flight"
            for d in answer.destinations
        },
    }
    return OverviewPage(sections, minute_chart(answer))
