"""Schedules and what their ticks' calls carry, in process: a declared schedule's time
zone (``CRON_TZ=``) pushed by a sync, the function's policy and limits on each tick's
call, and the policy given to a schedule created by the client or the CLI."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from dispatchlet import Endpoint
from dispatchlet.client import Client
from dispatchlet.client.schedules import schedule_spec
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.cron import Cron
from dispatchlet.scheduler.store import Call
from dispatchlet.scheduler.store.limits import Limits
from dispatchlet.scheduler.ticker import Ticker
from scheduler_harness import API_KEY, ENDPOINT, Harness, harness
from test_cron import FixedClock

CREATE = "/dispatchlet.scheduler.v1.CallService/CreateSchedule"


def scenario(tmp_path: Path, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def run() -> None:
        async with harness(tmp_path, running=False) as h:
            await body(h)

    asyncio.run(run())


def client(h: Harness) -> Client:
    return Client(h.url, API_KEY, retries=0)


async def tick(h: Harness, name: str) -> Call:
    """Tick schedule ``name`` once, at its next tick, and the call it made."""
    schedule = await h.store.get_schedule(name)
    assert schedule is not None, name
    ticked = await Ticker(h.store, FixedClock(schedule.next_tick), expiration=3600)._tick_once()
    assert ticked >= 0
    after = await h.store.get_schedule(name)
    assert after is not None
    assert after.last_dispatch_id, f"{name} did not tick"
    made = await h.store.get(after.last_dispatch_id)
    assert made is not None
    return made


def test_a_declared_schedule_ticks_in_the_zone_it_starts_with(tmp_path: Path) -> None:
    endpoint = Endpoint(endpoint_url=ENDPOINT)

    @endpoint.function(schedule="CRON_TZ=Europe/Paris 0 9 * * *")
    def paris() -> None: ...

    @endpoint.function(schedule="TZ=America/New_York  30 8 * * 1-5")
    def new_york() -> None: ...

    @endpoint.function(schedule="0 9 * * *")
    def utc() -> None: ...

    async def body(h: Harness) -> None:
        synced = await asyncio.to_thread(lambda: client(h).sync_schedules(endpoint))
        assert synced.created == ("new_york", "paris", "utc")
        found = {s.name: s for s in await h.store.schedules()}
        assert {n: (s.cron, s.timezone) for n, s in found.items()} == {
            "paris": ("0 9 * * *", "Europe/Paris"),
            "new_york": ("30 8 * * 1-5", "America/New_York"),
            "utc": ("0 9 * * *", "UTC"),
        }
        for name, schedule in found.items():
            cron = Cron(schedule.cron, schedule.timezone)
            assert schedule.next_tick == cron.next_after(schedule.updated_at), name
        # 09:00 in Paris is 07:00 or 08:00 UTC, never 09:00.
        assert found["paris"].next_tick % 86400 in (7 * 3600, 8 * 3600)
        assert found["utc"].next_tick % 86400 == 9 * 3600
        # Synced again unchanged: nothing to do.
        again = await asyncio.to_thread(lambda: client(h).sync_schedules(endpoint))
        assert again.unchanged == ("new_york", "paris", "utc")

    scenario(tmp_path, body)


def test_a_sync_refuses_an_unknown_declared_zone_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "from dispatchlet import Endpoint\n"
        "endpoint = Endpoint(endpoint_url='http://endpoint.test')\n"
        "@endpoint.function(schedule='0 3 * * *')\n"
        "def fine() -> None: ...\n"
        "@endpoint.function(schedule='CRON_TZ=Europe/Pariss 0 9 * * *')\n"
        "def nightly() -> None: ...\n"
    )

    async def body(h: Harness) -> None:
        from dispatchlet.cli.main import main

        monkeypatch.setenv("DISPATCH_API_URL", h.url)
        monkeypatch.setenv("DISPATCH_API_KEY", API_KEY)
        status = await asyncio.to_thread(main, ["schedules", "sync", str(app)])
        captured = capsys.readouterr()
        assert status == 2, captured
        assert captured.out == ""
        assert captured.err.count("\n") == 1, captured.err
        assert "invalid_argument: schedule 'nightly': unknown time zone 'Europe/Pariss'" in (
            captured.err
        )
        # Nothing of the sync is kept.
        assert await h.store.schedules() == []

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("CRON_TZ= 0 9 * * *", "no time zone after CRON_TZ="),
        ("CRON_TZ=Europe/Paris", "no cron expression after CRON_TZ=Europe/Paris"),
        ("TZ=UTC   ", "no cron expression after TZ=UTC"),
    ],
)
def test_a_zone_prefix_without_a_zone_or_an_expression_is_refused_at_once(
    schedule: str, message: str
) -> None:
    endpoint = Endpoint(endpoint_url=ENDPOINT)
    with pytest.raises(ValueError, match=message):

        @endpoint.function(schedule=schedule)
        def nightly() -> None: ...


def test_a_tick_of_a_synced_schedule_carries_its_functions_policy_and_limits(
    tmp_path: Path,
) -> None:
    endpoint = Endpoint(endpoint_url=ENDPOINT)

    @endpoint.function(
        schedule="* * * * *",
        concurrency=2,
        rate_limit=(5, 60),
        max_attempts=3,
        timeout=30,
        expiration=600,
    )
    def limited() -> None: ...

    @endpoint.function(schedule="* * * * *")
    def plain() -> None: ...

    async def body(h: Harness) -> None:
        await asyncio.to_thread(lambda: client(h).sync_schedules(endpoint))
        made = await tick(h, "limited")
        assert made.limits == Limits(concurrency=2, rate_count=5, rate_period=60.0)
        assert made.policy is not None
        assert (made.policy.max_attempts, made.policy.attempt_timeout) == (3, 30.0)
        assert made.expires_at == pytest.approx(made.created_at + 600)
        other = await tick(h, "plain")
        assert not other.limits.limited
        assert other.policy is None
        listed = {s.name: s for s in await asyncio.to_thread(client(h).list_schedules)}
        shown = listed["limited"]
        assert (shown.max_attempts, shown.concurrency) == (3, 2)
        assert shown.rate_limit == (5, datetime.timedelta(seconds=60))
        assert (shown.timeout, shown.expiration) == (
            datetime.timedelta(seconds=30),
            datetime.timedelta(seconds=600),
        )
        plain = listed["plain"]
        assert (plain.max_attempts, plain.timeout, plain.concurrency, plain.rate_limit) == (
            None,
            None,
            None,
            None,
        )

    scenario(tmp_path, body)


def test_the_client_gives_a_schedules_ticks_a_policy_and_limits(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        created = await asyncio.to_thread(
            lambda: client(h).create_schedule(
                "report",
                "*/5 * * * *",
                "report",
                {"team": "ops"},
                endpoint=ENDPOINT,
                max_attempts=2,
                timeout=15,
                expiration=900,
                concurrency=1,
            )
        )
        assert created.name == "report"
        assert (created.max_attempts, created.timeout, created.expiration) == (
            2,
            datetime.timedelta(seconds=15),
            datetime.timedelta(seconds=900),
        )
        assert (created.concurrency, created.rate_limit) == (1, None)
        made = await tick(h, "report")
        assert made.policy is not None
        assert (made.policy.max_attempts, made.policy.attempt_timeout) == (2, 15.0)
        assert made.limits == Limits(concurrency=1)
        assert made.expires_at == pytest.approx(made.created_at + 900)
        # Checked before anything is sent, as options(...) checks them.
        with pytest.raises(ValueError, match="max_attempts must be at least 1"):
            client(h).create_schedule(
                "bad", "* * * * *", "report", endpoint=ENDPOINT, max_attempts=0
            )
        # And by the scheduler, for any client.
        spec = schedule_spec("zero", "* * * * *", "report", None, endpoint=ENDPOINT, timezone="UTC")
        spec.options.rate_limit.count = 0
        spec.options.rate_limit.period.FromSeconds(60)
        request = calls_pb2.CreateScheduleRequest(schedule=spec).SerializeToString()
        status, answer = await h.post(CREATE, request)
        assert status == 400, answer
        message = json.loads(answer)["message"]
        assert message.startswith("schedule 'zero': a rate limit of 0 calls per period"), message
        assert [s.name for s in await h.store.schedules()] == ["report"]

    scenario(tmp_path, body)


def test_the_cli_creates_a_schedule_with_a_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def body(h: Harness) -> None:
        from dispatchlet.cli.main import main

        monkeypatch.setenv("DISPATCH_API_URL", h.url)
        monkeypatch.setenv("DISPATCH_API_KEY", API_KEY)
        arguments = [
            "schedules", "create", "digest", "0 9 * * *", "send_digest", '{"team": "ops"}',
            "--endpoint", ENDPOINT, "--timezone", "Europe/Paris",
            "--max-attempts", "4", "--timeout", "2m", "--expiration", "3600",
            "--concurrency", "1", "--rate-limit", "10/1h", "--backoff", "30s",
        ]  # fmt: skip
        status = await asyncio.to_thread(main, arguments)
        captured = capsys.readouterr()
        assert status == 0, captured
        assert captured.out.startswith("created digest: next tick ")
        made = await tick(h, "digest")
        assert made.policy is not None
        assert (made.policy.max_attempts, made.policy.attempt_timeout) == (4, 120.0)
        assert made.expires_at == pytest.approx(made.created_at + 3600)
        assert made.limits == Limits(concurrency=1, rate_count=10, rate_period=3600.0)
        listed = await asyncio.to_thread(main, ["schedules", "list", "--json"])
        assert listed == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["name"], shown["timezone"]) == ("digest", "Europe/Paris")
        # The policy and limits of each tick's call, as given.
        assert {k: shown[k] for k in ("max_attempts", "timeout", "expiration")} == {
            "max_attempts": 4,
            "timeout": 120.0,
            "expiration": 3600.0,
        }
        assert shown["concurrency"] == 1
        assert shown["rate_limit"] == {"count": 10, "period": 3600.0}
        assert shown["backoff"] == {"initial": 30.0, "maximum": None, "multiplier": 2.0}
        assert made.policy.backoff_initial == 30.0

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-attempts", "0"], "0 is not in 1.."),
        (["--timeout", "0"], "an attempt's timeout must be positive"),
        (["--expiration", "-5"], "is not a positive number of seconds"),
        (["--concurrency", "0"], "0 is not in 1.."),
        (["--rate-limit", "5"], "'5' is not COUNT/PERIOD"),
    ],
)
def test_the_cli_refuses_a_bad_policy_for_a_schedule(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatchlet.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["schedules", "create", "digest", "0 9 * * *", "send_digest", *option])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
