"""What ``Client.overview`` returns: the scheduler's ``CallService/Overview`` answer as
plain values (seconds as floats, times as UTC datetimes)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ..core.status import Status
from ..proto.dispatchlet.scheduler.v1 import calls_pb2


@dataclass(frozen=True)
class FinishedInMinute:
    """How many calls finished in one minute with one final status."""

    minute: datetime.datetime
    """The minute's start, in UTC."""
    status: Status | None
    """None for a status this client does not know."""
    count: int


@dataclass(frozen=True)
class FunctionOverview:
    """A function's calls that finished within the window."""

    function: str
    calls: int
    failed: int
    """Finished with a status other than OK."""
    p50: float
    """Median seconds from the call's creation to its finish (retries included)."""
    p99: float


@dataclass(frozen=True)
class DestinationOverview:
    """A destination of the answering scheduler process (its own limiter)."""

    destination: str
    limit: int
    """Attempts allowed at once now (adaptive)."""
    in_flight: int


@dataclass(frozen=True)
class LimitOverview:
    """A function whose calls carry concurrency or rate limits (every process's), with
    attempts in flight or recent starts: its limits (0: none) and what it uses now."""

    function: str
    concurrency: int
    concurrency_per_key: int
    in_flight: int
    keys_in_flight: int
    """Concurrency keys with attempts in flight."""
    rate_count: int
    rate_period: float
    """Seconds."""
    started: int
    """Starts within the last ``rate_period``."""


@dataclass(frozen=True)
class QueueDepth:
    """The calls not done, in the whole store."""

    ready: int
    """Ready and due: waiting for a claim."""
    scheduled: int
    """Ready later (a retry's backoff, a delayed call)."""
    running: int
    waiting: int
    """Suspended by a Poll."""
    oldest_ready_age: float
    """Seconds the oldest due call has waited for a claim."""


@dataclass(frozen=True)
class Overview:
    """The calls finished within ``window`` seconds before ``now`` (the last hour), and
    the work now."""

    now: datetime.datetime
    window: float
    finished: tuple[FinishedInMinute, ...]
    """By minute and status, oldest minute first."""
    functions: tuple[FunctionOverview, ...]
    """Most calls first (at most 100)."""
    slowest: tuple[str, ...]
    """Up to 5 functions, slowest (by p99) first."""
    most_failing: tuple[str, ...]
    """Up to 5 functions with failures, most first."""
    destinations: tuple[DestinationOverview, ...]
    queue: QueueDepth
    limits: tuple[LimitOverview, ...] = ()
    """The limited functions, by name."""

    @classmethod
    def from_proto(cls, answer: calls_pb2.OverviewResponse) -> Overview:
        utc = datetime.timezone.utc
        return cls(
            now=answer.now.ToDatetime(utc),
            window=answer.window.ToNanoseconds() / 1e9,
            finished=tuple(
                FinishedInMinute(m.minute.ToDatetime(utc), _status(m.status), m.count)
                for m in answer.finished
            ),
            functions=tuple(
                FunctionOverview(
                    f.function,
                    f.calls,
                    f.failed,
                    f.p50.ToNanoseconds() / 1e9,
                    f.p99.ToNanoseconds() / 1e9,
                )
                for f in answer.functions
            ),
            slowest=tuple(answer.slowest),
            most_failing=tuple(answer.most_failing),
            destinations=tuple(
                DestinationOverview(d.destination, d.limit, d.in_flight)
                for d in answer.destinations
            ),
            queue=QueueDepth(
                answer.queue.ready,
                answer.queue.scheduled,
                answer.queue.running,
                answer.queue.waiting,
                answer.queue.oldest_ready_age.ToNanoseconds() / 1e9,
            ),
            limits=tuple(
                LimitOverview(
                    limit.function,
                    limit.concurrency,
                    limit.concurrency_per_key,
                    limit.in_flight,
                    limit.keys_in_flight,
                    limit.rate_count,
                    limit.rate_period.ToNanoseconds() / 1e9,
                    limit.started,
                )
                for limit in answer.limits
            ),
        )


def _status(number: int) -> Status | None:
    try:
        return Status(number) if number else None
    except ValueError:
        return None
