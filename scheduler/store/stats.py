"""What the stores tell of their calls as a whole: the queue's depth (``/metrics``, the
overview) and the calls that finished lately (the overview). Every store computes them
in its own terms (SQL on SQLite and PostgreSQL, each query served by an index); the
percentiles are nearest-rank, so that all stores agree to the row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ...core.status import Status

OVERVIEW_FUNCTIONS = 100
"""The most functions an overview tells of (those with the most calls first)."""


@dataclass(frozen=True)
class QueueStats:
    """The calls not done, by state, at one time."""

    ready: int
    """Ready and due: waiting for a claim."""
    scheduled: int
    """Ready but due later (a retry's backoff, a delayed call)."""
    running: int
    waiting: int
    """Suspended by a Poll."""
    oldest_ready: float | None
    """When the oldest ready call became due (None: none is due)."""

    def oldest_ready_age(self, now: float) -> float:
        """How long, at ``now``, the oldest due call has waited for a claim, in seconds."""
        return 0.0 if self.oldest_ready is None else max(0.0, now - self.oldest_ready)


@dataclass(frozen=True)
class FinishedCount:
    """How many calls finished with ``status`` in one minute."""

    minute: int
    """The minute's start, in minutes since the epoch."""
    status: int
    count: int


@dataclass(frozen=True)
class FunctionStats:
    """The calls of one function that finished within a window."""

    function: str
    calls: int
    failed: int
    """Finished with a status other than OK."""
    p50: float
    """Median seconds from creation to finish (nearest rank)."""
    p99: float


@dataclass(frozen=True)
class Finished:
    """The calls that finished within a window (``Store.finished_stats``)."""

    per_minute: tuple[FinishedCount, ...]
    """By minute and status, oldest minute first."""
    functions: tuple[FunctionStats, ...]
    """By function, most calls first (at most ``OVERVIEW_FUNCTIONS``)."""


def nearest_rank(sorted_values: Sequence[float], percent: int) -> float:
    """The ``percent`` percentile of ``sorted_values`` (ascending, not empty): the value
    at rank ceil(percent * n / 100), counting from 1, as the SQL stores compute it."""
    rank = max(1, -(-percent * len(sorted_values) // 100))
    return sorted_values[rank - 1]


def finished_of(
    rows: Iterable[tuple[str, int, float, float]], limit: int = OVERVIEW_FUNCTIONS
) -> Finished:
    """``Finished`` from ``(function, status, created_at, finished_at)`` of each call
    finished within the window (the memory store's way)."""
    minutes: dict[tuple[int, int], int] = {}
    durations: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    for function, status, created_at, finished_at in rows:
        key = (int(finished_at // 60), status)
        minutes[key] = minutes.get(key, 0) + 1
        durations.setdefault(function, []).append(finished_at - created_at)
        failures[function] = failures.get(function, 0) + (status != Status.OK.value)
    functions = []
    for function, seconds in durations.items():
        seconds.sort()
        functions.append(
            FunctionStats(
                function,
                len(seconds),
                failures[function],
                nearest_rank(seconds, 50),
                nearest_rank(seconds, 99),
            )
        )
    functions.sort(key=lambda f: (-f.calls, f.function))
    return Finished(
        per_minute=tuple(FinishedCount(m, s, n) for (m, s), n in sorted(minutes.items())),
        functions=tuple(functions[:limit]),
    )


def finished_from_rows(
    minutes: Iterable[Sequence[Any]], functions: Iterable[Sequence[Any]]
) -> Finished:
    """``Finished`` from the rows of the SQL stores' ``finished_per_minute`` and
    ``finished_by_function`` statements."""
    return Finished(
        per_minute=tuple(FinishedCount(int(m), int(s), int(n)) for m, s, n in minutes),
        functions=tuple(
            FunctionStats(str(f), int(n), int(failed), float(p50), float(p99))
            for f, n, failed, p50, p99 in functions
        ),
    )
