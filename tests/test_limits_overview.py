"""The limited functions as operators see them, in process: the overview
(``CallService/Overview``, ``Client.overview``, ``dispatchlet calls stats``' text), the
dashboard's overview page and ``/metrics`` tell each limited function's limits and what
it uses of them, every process's."""

from __future__ import annotations

import asyncio
import html
import time
from pathlib import Path

from dispatchlet import Client
from dispatchlet.cli.overview_views import overview_lines
from dispatchlet.core.call_options import set_call_options
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2, options_pb2
from dispatchlet.scheduler.store.limits import Limits
from google.protobuf import duration_pb2
from scheduler_harness import API_KEY, Harness, call, harness

OVERVIEW = "/dispatchlet.scheduler.v1.CallService/Overview"


def limited(function: str, **options: object) -> call_pb2.Call:
    built = call(function)
    set_call_options(built, options_pb2.CallOptions(**options))
    return built


async def started(h: Harness) -> None:
    """charge: 2 of 2 in flight (a third waits); per_customer: 2 keys in flight of 3
    calls; rated: 2 starts of 3 per minute; plain: no limits."""
    rate = options_pb2.RateLimit(count=3, period=duration_pb2.Duration(seconds=60))
    await h.dispatch(
        *[limited("charge", concurrency=2) for _ in range(3)],
        *[
            limited("per_customer", concurrency_key=key, concurrency_per_key=1)
            for key in ("c1", "c1", "c2")
        ],
        *[limited("rated", rate_limit=rate) for _ in range(2)],
        call("plain"),
    )
    claimed = await h.store.claim(owner="t", now=time.time(), limit=20, lease_seconds=600)
    assert len(claimed) == 7


def test_the_overview_tells_each_limited_functions_limits_and_use(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            await started(h)
            answer = await h.rpc(OVERVIEW, calls_pb2.OverviewRequest(), calls_pb2.OverviewResponse)
            found = {limit.function: limit for limit in answer.limits}
            assert sorted(found) == ["charge", "per_customer", "rated"]
            charge, per_customer, rated = found["charge"], found["per_customer"], found["rated"]
            assert (charge.concurrency, charge.in_flight) == (2, 2)
            assert (per_customer.concurrency_per_key, per_customer.in_flight) == (1, 2)
            assert per_customer.keys_in_flight == 2
            assert (rated.rate_count, rated.rate_period.seconds, rated.started) == (3, 60, 2)
            client = Client(h.url, API_KEY)
            try:
                overview = await asyncio.to_thread(client.overview)
            finally:
                client.close()
            lines = overview_lines(overview)
            assert "  charge  2 of 2 in flight" in lines
            assert "  per_customer  2 in flight; at most 1 per key, 2 keys in flight" in lines
            assert "  rated  2 in flight; 2 of 3 starts per 1m00s" in lines

    asyncio.run(scenario())


def test_the_dashboard_and_metrics_show_the_limited_functions(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str]:
        async with harness(tmp_path, running=False) as h:
            await started(h)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with h.session.get(h.url + "/overview", headers=headers) as page:
                assert page.status == 200
                shown = html.unescape(await page.text())
            async with h.session.get(h.url + "/metrics", headers=headers) as scraped:
                assert scraped.status == 200
                metrics = await scraped.text()
            return shown, metrics

    page, metrics = asyncio.run(scenario())
    assert "Limited functions (every process)" in page
    assert "2 of 2 in flight" in page
    assert "2 of 3 starts per 60.0 s" in page
    lines = metrics.splitlines()
    assert 'dispatchlet_function_limit{function="charge",kind="concurrency"} 2.0' in lines
    assert 'dispatchlet_function_limit_used{function="charge",kind="in_flight"} 2.0' in lines
    assert 'dispatchlet_function_limit{function="rated",kind="rate_count"} 3.0' in lines
    assert 'dispatchlet_function_limit_used{function="rated",kind="started"} 2.0' in lines
    assert not any('function="plain"' in line and "limit" in line for line in lines)


def test_a_held_calls_page_says_which_limit_it_waits_for(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str]:
        async with harness(tmp_path, running=False) as h:
            await started(h)
            held = [c for c in await h.store.list(function="charge") if c.state.value == "ready"]
            assert len(held) == 1
            assert held[0].limits == Limits(concurrency=2)
            running = await h.store.list(function="charge", state=held[0].state.RUNNING)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            pages = []
            for found in (held[0], running[0]):
                url = f"{h.url}/calls/{found.dispatch_id}"
                async with h.session.get(url, headers=headers) as page:
                    assert page.status == 200
                    pages.append(html.unescape(await page.text()))
            return pages[0], pages[1]

    waiting, running = asyncio.run(scenario())
    assert "at most 2 of its function in flight" in waiting
    assert "Waits for its concurrency limit: 2 of 2 in flight" in waiting
    assert "at most 2 of its function in flight" in running
    assert "Waits for" not in running
