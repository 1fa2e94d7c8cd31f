"""The overview (``CallService/Overview``): what the calls came to in the last hour, by
minute and final status and by function, its slowest and most failing functions, and
the work now: the queue's depth and the limited functions (the whole store's), and the
destinations of this process's limiter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from google.protobuf import duration_pb2

from ..proto.dispatchlet.scheduler.v1 import calls_pb2
from .calls import timestamp
from .concurrency import Limiter
from .store import Finished, LimitStats, QueueStats, Store

OVERVIEW_WINDOW = 3600.0
"""How far back, in seconds, the overview counts finished calls."""
TOP = 5
"""How many functions the slowest and the most failing each name."""
DESTINATIONS = 100
"""How many destinations the overview tells of (the most attempts in flight first)."""
RECENT_TTL = 5.0
"""How long, in seconds, a reading of the last hour's finished calls serves overviews:
it reads every call finished in the hour (about 1 s for 200,000 on SQLite), so that a
dashboard's refreshes, however many, cost one such read every few seconds."""


class Recent:
    """The last hour's finished calls (``Store.finished_stats``), read at most once every
    ``ttl`` seconds; overviews asked meanwhile share the reading (or the one under way)."""

    def __init__(self, ttl: float = RECENT_TTL) -> None:
        self.ttl = ttl
        self._lock = asyncio.Lock()
        self._read: float | None = None
        self._found: Finished | None = None

    async def read(self, store: Store, now: float) -> Finished:
        async with self._lock:
            stamp = time.monotonic()
            if self._found is None or self._read is None or stamp - self._read >= self.ttl:
                self._found = await store.finished_stats(since=now - OVERVIEW_WINDOW, now=now)
                self._read = stamp
            return self._found


def seconds_duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(max(0.0, seconds) * 1e9))
    return duration


def overview_message(
    now: float,
    finished: Finished,
    queue: QueueStats,
    limiter: Limiter,
    limits: Sequence[LimitStats] = (),
) -> calls_pb2.OverviewResponse:
    """The Overview answer at ``now``."""
    answer = calls_pb2.OverviewResponse(window=seconds_duration(OVERVIEW_WINDOW))
    answer.now.CopyFrom(timestamp(now))
    for counted in finished.per_minute:
        minute = answer.finished.add(status=counted.status, count=counted.count)
        minute.minute.CopyFrom(timestamp(counted.minute * 60.0))
    for function in finished.functions:
        answer.functions.add(
            function=function.function,
            calls=function.calls,
            failed=function.failed,
            p50=seconds_duration(function.p50),
            p99=seconds_duration(function.p99),
        )
    slowest = sorted(finished.functions, key=lambda f: (-f.p99, f.function))
    answer.slowest.extend(f.function for f in slowest[:TOP])
    failing = sorted(
        (f for f in finished.functions if f.failed),
        key=lambda f: (-f.failed, -f.failed / f.calls, f.function),
    )
    answer.most_failing.extend(f.function for f in failing[:TOP])
    busiest = sorted(limiter.windows.items(), key=lambda kv: (-kv[1].in_flight, kv[0]))
    for key, window in busiest[:DESTINATIONS]:
        answer.destinations.add(
            destination=key, limit=int(window.limit), in_flight=window.in_flight
        )
    for limited in limits:
        answer.limits.add(
            function=limited.function,
            concurrency=limited.concurrency,
            concurrency_per_key=limited.per_key,
            in_flight=limited.in_flight,
            keys_in_flight=limited.keys_in_flight,
            rate_count=limited.rate_count,
            rate_period=seconds_duration(limited.rate_period),
            started=limited.started,
        )
    answer.queue.CopyFrom(
        calls_pb2.OverviewQueue(
            ready=queue.ready,
            scheduled=queue.scheduled,
            running=queue.running,
            waiting=queue.waiting,
            oldest_ready_age=seconds_duration(queue.oldest_ready_age(now)),
        )
    )
    return answer
