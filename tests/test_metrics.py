"""``/metrics``: scraped from a scheduler in this process after calls that succeeded,
failed and were retried, and parsed with ``prometheus_client``'s own parser."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler.concurrency import Limiter
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.metrics import MAX_LABELS, OTHER, Metrics
from dispatchlet.scheduler.store.memory import MemoryStore
from prometheus_client.parser import text_string_to_metric_families
from scheduler_harness import API_KEY, Answer, Harness, call, harness, raised, returned

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parsed(text: str) -> Samples:
    """Every sample of the exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (found, labels), v in samples.items() if found == name}


async def scrape(h: Harness) -> Samples:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with h.session.get(h.url + "/metrics", headers=headers) as answer:
        text = await answer.text()
        assert answer.status == 200, text
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
    return parsed(text)


def flaky_answers() -> Answer:
    """``ok`` returns, ``fails`` raises (a permanent error), ``flaky`` fails once with a
    temporary error and then returns."""
    failed: set[str] = set()

    def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
        if request.function == "fails":
            return raised("ValueError", "no", Status.PERMANENT_ERROR)
        if request.function == "flaky" and request.dispatch_id not in failed:
            failed.add(request.dispatch_id)
            return raised("ConnectionError", "later", Status.TEMPORARY_ERROR)
        return returned("done")

    return answer


def test_metrics_count_attempts_calls_and_store_operations(tmp_path: Path) -> None:
    async def scenario() -> Samples:
        async with harness(tmp_path, flaky_answers()) as h:
            ids = await h.dispatch(call("ok"), call("fails"), call("flaky"))
            for dispatch_id in ids:
                await h.done(dispatch_id)
            return await scrape(h)

    samples = asyncio.run(scenario())
    attempts = series(samples, "dispatchlet_attempts_total")
    assert attempts == {
        frozenset({("function", "ok"), ("status", "OK")}): 1,
        frozenset({("function", "fails"), ("status", "PERMANENT_ERROR")}): 1,
        frozenset({("function", "flaky"), ("status", "TEMPORARY_ERROR")}): 1,
        frozenset({("function", "flaky"), ("status", "OK")}): 1,
    }
    histogram = "dispatchlet_attempt_duration_seconds"
    assert value(samples, f"{histogram}_count", function="flaky") == 2
    assert value(samples, f"{histogram}_count", function="ok") == 1
    assert value(samples, f"{histogram}_bucket", function="flaky", le="+Inf") == 2
    assert value(samples, "dispatchlet_calls_dispatched_total") == 3
    assert series(samples, "dispatchlet_calls_finished_total") == {
        frozenset({("status", "OK")}): 2,
        frozenset({("status", "PERMANENT_ERROR")}): 1,
    }
    # Each store operation is timed: the engine's and the API's.
    store = "dispatchlet_store_operation_duration_seconds_count"
    assert value(samples, store, operation="dispatch") == 1
    assert value(samples, store, operation="finish") == 3
    assert value(samples, store, operation="retry") == 1
    assert value(samples, store, operation="queue_stats") == 1
    assert value(samples, store, operation="claim") >= 1
    # Nothing is left to do; the destination's window is there, empty.
    for state in ("ready", "scheduled", "running", "waiting"):
        assert value(samples, "dispatchlet_queue_calls", state=state) == 0
    assert value(samples, "dispatchlet_queue_oldest_ready_age_seconds") == 0
    assert value(samples, "dispatchlet_attempts_in_flight") == 0
    destination = "http://endpoint.test"
    assert value(samples, "dispatchlet_destination_in_flight", destination=destination) == 0
    assert value(samples, "dispatchlet_destination_limit", destination=destination) >= 1
    assert value(samples, "dispatchlet_retention_deleted_calls_total") == 0


def test_the_queue_depth_is_the_stores_read_once_in_a_while(tmp_path: Path) -> None:
    async def scenario() -> list[Samples]:
        # No engine running: the calls stay ready.
        async with harness(tmp_path, running=False) as h:
            h.engine.metrics.queue_ttl = 3600.0
            await h.dispatch(call("a"), call("b"))
            scraped = [await scrape(h)]
            await h.dispatch(call("c"))
            scraped.append(await scrape(h))  # the reading of a moment ago
            h.engine.metrics.queue_ttl = 0.0
            scraped.append(await scrape(h))
            return scraped

    first, cached, fresh = asyncio.run(scenario())
    depth = "dispatchlet_queue_calls"
    assert value(first, depth, state="ready") == 2
    assert value(first, depth, state="running") == 0
    assert value(first, "dispatchlet_queue_oldest_ready_age_seconds") >= 0
    assert value(cached, depth, state="ready") == 2
    assert value(fresh, depth, state="ready") == 3
    store = "dispatchlet_store_operation_duration_seconds_count"
    assert value(fresh, store, operation="queue_stats") == 2


def test_a_store_out_of_reach_makes_a_scrape_unavailable_not_an_internal_error(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[int, dict[str, str]]:
        async with harness(tmp_path, store=MemoryStore(), running=False) as h:
            await h.store.close()  # as a database that went away
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with h.session.get(h.url + "/metrics", headers=headers) as answer:
                return answer.status, await answer.json()

    status, error = asyncio.run(scenario())
    assert status == 503
    assert error["code"] == "unavailable"
    assert "database" in error["message"]


def test_functions_beyond_the_label_cap_are_counted_as_other(tmp_path: Path) -> None:
    extra = 5

    async def scenario() -> Samples:
        async with harness(tmp_path, store=MemoryStore()) as h:
            names = [f"f{n:03d}" for n in range(MAX_LABELS + extra)]
            for dispatch_id in await h.dispatch(*(call(name) for name in names)):
                await h.done(dispatch_id)
            return await scrape(h)

    samples = asyncio.run(scenario())
    attempts = series(samples, "dispatchlet_attempts_total")
    functions = {dict(labels)["function"] for labels in attempts}
    assert len(functions) == MAX_LABELS + 1
    assert OTHER in functions
    assert sum(attempts.values()) == MAX_LABELS + extra
    assert value(samples, "dispatchlet_attempts_total", function=OTHER, status="OK") == extra
    assert value(samples, "dispatchlet_attempt_duration_seconds_count", function=OTHER) == extra


class Running:
    """An engine as the metrics read it."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.in_flight = 2


def gauges(metrics: Metrics) -> Samples:
    from prometheus_client import generate_latest

    return parsed(generate_latest(metrics.registry).decode())


def test_destinations_are_escaped_and_capped() -> None:
    limiter = Limiter()
    metrics = Metrics(max_labels=2)
    metrics.watch(Running(limiter))
    for key in ('http://a"b', "http://b", "http://c", "http://d"):
        assert limiter.acquire(key) is not None
    samples = gauges(metrics)
    in_flight: Mapping[frozenset[tuple[str, str]], float] = series(
        samples, "dispatchlet_destination_in_flight"
    )
    assert in_flight == {
        frozenset({("destination", 'http://a"b')}): 1,
        frozenset({("destination", "http://b")}): 1,
        frozenset({("destination", OTHER)}): 2,
    }
    limits = series(samples, "dispatchlet_destination_limit")
    assert limits[frozenset({("destination", OTHER)})] == 2 * limiter.initial
    assert value(samples, "dispatchlet_attempts_in_flight") == 2


def test_two_schedulers_in_one_process_keep_their_own_counts() -> None:
    first, second = Metrics(), Metrics()
    first.attempted("f", Status.OK, 0.1)
    first.retention_deleted.inc(3)
    assert value(gauges(first), "dispatchlet_attempts_total", function="f", status="OK") == 1
    assert value(gauges(first), "dispatchlet_retention_deleted_calls_total") == 3
    assert series(gauges(second), "dispatchlet_attempts_total") == {}
    assert value(gauges(second), "dispatchlet_retention_deleted_calls_total") == 0


def test_endpoints_never_import_the_metrics_library() -> None:
    """An endpoint's cold start (Lambda, Cloud Functions, WSGI) pays nothing for the
    scheduler's metrics."""
    code = (
        "import sys, dispatchlet, dispatchlet.adapters.wsgi, dispatchlet.adapters.aws_lambda,"
        " dispatchlet.adapters.cloud_functions, dispatchlet.client\n"
        "from dispatchlet import Endpoint\n"
        "Endpoint(insecure=True)\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
