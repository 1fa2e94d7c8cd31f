"""What the scheduler tells of its work at ``/metrics``, in the Prometheus text format
(the official ``prometheus_client``), for one engine: each engine has its own registry,
so that several schedulers in one process (tests) keep their own counts.

Counters and histograms are this process's, since it started; the queue's depth is the
store's (every process on it), read at a scrape at most once every ``QUEUE_TTL``
seconds, so that scrapes cannot load the database. Function and destination labels
are bounded: the first ``MAX_LABELS`` of each seen get their own value, any other is
counted as ``other``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..core.status import Status
from .concurrency import Limiter
from .store import QueueStats, Store

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The exposition's media type, with its version."""
MAX_LABELS = 100
"""Functions (and destinations) that get a label value of their own; the others are
counted under ``OTHER``."""
OTHER = "other"
QUEUE_TTL = 5.0
"""How long, in seconds, a reading of the queue's depth serves scrapes."""

ATTEMPT_SERIES = 4096
"""How many (function, status) pairs ``Metrics.attempted`` keeps the series of."""
# Attempts last from milliseconds to the attempt timeout (minutes).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# A store call: a fraction of a millisecond (SQLite) to seconds (a database away).
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Labels:
    """A bounded set of label values: the first ``most`` names given keep theirs, any
    later one is ``OTHER``."""

    def __init__(self, most: int = MAX_LABELS) -> None:
        self.most = most
        self._kept: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._kept:
            return name
        if len(self._kept) < self.most:
            self._kept.add(name)
            return name
        return OTHER


class Running(Protocol):
    """What the metrics read of an engine at a scrape."""

    limiter: Limiter

    @property
    def in_flight(self) -> int: ...


class Metrics:
    """One engine's metrics and their registry (``Engine.metrics``). What other parts of
    the scheduler count goes through it: ``retention_deleted.inc(n)`` for the calls a
    retention pass deleted, ``ended(status, n)`` for calls ended outside an attempt."""

    def __init__(self, *, max_labels: int = MAX_LABELS, queue_ttl: float = QUEUE_TTL) -> None:
        self.queue_ttl = queue_ttl
        """How long, in seconds, a reading of the queue's depth serves scrapes."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.functions = Labels(max_labels)
        self.destinations = Labels(max_labels)
        r = self.registry
        self.attempts = Counter(
            "dispatchlet_attempts",
            "Attempts made by this process, by function and the run's status.",
            ["function", "status"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "dispatchlet_attempt_duration_seconds",
            "Seconds an attempt's run took (the endpoint's answer awaited), by function.",
            ["function"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.dispatched = Counter(
            "dispatchlet_calls_dispatched",
            "Calls accepted by Dispatch requests to this process (a repeated request's "
            "calls counted again).",
            registry=r,
        )
        self.finished = Counter(
            "dispatchlet_calls_finished",
            "Calls this process ended (an attempt's final outcome, an expiry, a cancel), "
            "by final status.",
            ["status"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "dispatchlet_store_operation_duration_seconds",
            "Seconds each store operation (one transaction) took, by operation.",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.retention_deleted = Counter(
            "dispatchlet_retention_deleted_calls",
            "Calls deleted by retention (finished call trees past the retention window).",
            registry=r,
        )
        self.schedule_ticks = Counter(
            "dispatchlet_schedule_ticks",
            "Ticks of schedules this process dispatched (each tick by one process).",
            registry=r,
        )
        self.queue = Gauge(
            "dispatchlet_queue_calls",
            "Calls not done in the store (every process's), by state: ready (due now), "
            "scheduled (ready later: a retry's backoff, a delay), running, waiting.",
            ["state"],
            registry=r,
        )
        self.oldest_ready = Gauge(
            "dispatchlet_queue_oldest_ready_age_seconds",
            "How long the oldest due call has waited for a claim.",
            registry=r,
        )
        self.limit = Gauge(
            "dispatchlet_function_limit",
            "The limits of the functions whose calls carry them (every process's, those "
            "with attempts in flight or recent starts), by function and kind: "
            "concurrency, concurrency_per_key, rate_count (starts per rate period).",
            ["function", "kind"],
            registry=r,
        )
        self.limit_used = Gauge(
            "dispatchlet_function_limit_used",
            "What those functions use of their limits now, by function and kind: "
            "in_flight (attempts), keys_in_flight, started (within the rate period).",
            ["function", "kind"],
            registry=r,
        )
        # Each (function, status)'s series, found once (a third of an attempt's cost
        # of counting), for as many as ATTEMPT_SERIES.
        self._attempt_series: dict[tuple[str, Status], tuple[Counter, Histogram]] = {}
        self._queue_read: float | None = None
        self.queue_stats: QueueStats | None = None

    # --- what the engine and the API tell ------------------------------------------------

    def attempted(self, function: str, status: Status, seconds: float) -> None:
        """An attempt of ``function`` ended with ``status`` after ``seconds``."""
        series = self._attempt_series.get((function, status))
        if series is None:
            label = self.functions(function)
            series = self.attempts.labels(label, status.name), self.attempt_seconds.labels(label)
            if len(self._attempt_series) < ATTEMPT_SERIES:
                self._attempt_series[(function, status)] = series
        count, duration = series
        count.inc()
        duration.observe(seconds)

    def ended(self, status: Status | int, count: int = 1) -> None:
        """``count`` calls ended with ``status``."""
        self.finished.labels(_status_name(status)).inc(count)

    # --- at a scrape -------------------------------------------------------------------

    def watch(self, engine: Running) -> None:
        """Read ``engine``'s attempts in flight and its destinations' limits at each
        scrape."""
        self.registry.register(_EngineCollector(engine, self.destinations))

    async def read_queue(self, store: Store, now: float) -> QueueStats:
        """The queue's depth: read from ``store`` when the last reading is older than
        ``queue_ttl`` seconds, else that one."""
        stamp = time.monotonic()
        if (
            self.queue_stats is None
            or self._queue_read is None
            or stamp - self._queue_read >= self.queue_ttl
        ):
            self.queue_stats = await store.queue_stats(now=now)
            self._queue_read = stamp
        stats = self.queue_stats
        for state in ("ready", "scheduled", "running", "waiting"):
            self.queue.labels(state).set(getattr(stats, state))
        # Its age now, though the reading may be a few seconds old.
        self.oldest_ready.set(stats.oldest_ready_age(now))
        return stats

    async def read_limits(self, store: Store, now: float) -> None:
        """The limited functions' limits and use, as the store tells them now (the
        series of a function no longer limited are dropped)."""
        self.limit.clear()
        self.limit_used.clear()
        for found in await store.limit_stats(now=now):
            label = self.functions(found.function)
            for kind, value in (
                ("concurrency", found.concurrency),
                ("concurrency_per_key", found.per_key),
                ("rate_count", found.rate_count),
            ):
                if value:
                    self.limit.labels(label, kind).set(value)
            self.limit_used.labels(label, "in_flight").set(found.in_flight)
            self.limit_used.labels(label, "keys_in_flight").set(found.keys_in_flight)
            if found.rate_count:
                self.limit_used.labels(label, "started").set(found.started)

    async def exposition(self, store: Store, now: float) -> bytes:
        """The text exposition of every metric, the queue read first (``read_queue``)."""
        await self.read_queue(store, now)
        await self.read_limits(store, now)
        return generate_latest(self.registry)

    def timed(self, store: Store) -> Store:
        """``store`` with each of its operations timed into ``store_seconds``."""
        if isinstance(store, TimedStore):
            return cast(Store, store)
        return cast(Store, TimedStore(store, self.store_seconds))


class _EngineCollector:
    """The engine's gauges, read when scraped: attempts in flight, and each destination's
    concurrency limit and attempts in flight (beyond the first ``MAX_LABELS``
    destinations, summed under ``other``)."""

    def __init__(self, engine: Running, destinations: Labels) -> None:
        self.engine = engine
        self.destinations = destinations

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (what a registry checks names by)."""
        return self._families({}, None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.engine.limiter.windows, self.engine.in_flight)

    def _families(self, windows: Mapping[str, Any], in_flight: int | None) -> Iterator[Metric]:
        total = GaugeMetricFamily(
            "dispatchlet_attempts_in_flight", "Attempts running now in this process."
        )
        if in_flight is not None:
            total.add_metric([], in_flight)
        limits = GaugeMetricFamily(
            "dispatchlet_destination_limit",
            "Attempts this process allows at once, by destination (adaptive).",
            labels=["destination"],
        )
        running = GaugeMetricFamily(
            "dispatchlet_destination_in_flight",
            "Attempts running now in this process, by destination.",
            labels=["destination"],
        )
        summed: dict[str, tuple[int, int]] = {}
        for key, window in sorted(windows.items()):
            label = self.destinations(key)
            limit, in_flight = summed.get(label, (0, 0))
            summed[label] = (limit + int(window.limit), in_flight + window.in_flight)
        for label, (limit, count) in summed.items():
            limits.add_metric([label], limit)
            running.add_metric([label], count)
        yield total
        yield limits
        yield running


class TimedStore:
    """A store whose operations (its coroutine methods) are timed, each into the
    histogram's series of its name; anything else passes through. A wrapper is made
    once per operation."""

    def __init__(self, store: Store, seconds: Histogram) -> None:
        self._store = store
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(found):
            return found
        observe = self._seconds.labels(name).observe
        clock = time.perf_counter

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return await found(*args, **kwargs)
            finally:
                observe(clock() - started)

        setattr(self, name, timed)  # found as an attribute from now on
        return timed


def _status_name(status: Status | int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return str(int(status))


__all__ = [
    "CONTENT_TYPE",
    "MAX_LABELS",
    "OTHER",
    "QUEUE_TTL",
    "Labels",
    "Metrics",
    "TimedStore",
]
