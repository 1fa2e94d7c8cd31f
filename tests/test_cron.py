"""Cron schedules' ticks (``scheduler/cron.py``) and the ticker's decisions
(``scheduler/ticker.py``), in process: time zones and daylight saving time, seconds,
catch-up of missed ticks, and refusals."""

from __future__ import annotations

import asyncio
import datetime
import re

import pytest
from dispatchlet.scheduler.cron import Cron, InvalidSchedule, iso_tick, name_problem, tick_key
from dispatchlet.scheduler.store.memory import MemoryStore
from dispatchlet.scheduler.store.schedules import NewSchedule
from dispatchlet.scheduler.ticker import MAX_SLEEP, Ticker


def at(text: str) -> float:
    """Seconds since the epoch of an ISO time with its offset."""
    return datetime.datetime.fromisoformat(text).timestamp()


def ticks(cron: Cron, after: str, count: int) -> list[str]:
    found = []
    moment = at(after)
    for _ in range(count):
        moment = cron.next_after(moment)
        found.append(iso_tick(moment))
    return found


def test_a_daily_tick_keeps_its_wall_time_across_daylight_saving_changes() -> None:
    paris = Cron("0 9 * * *", "Europe/Paris")
    # Clocks go forward on 2026-03-29: 09:00 is 08:00 UTC before, 07:00 UTC after.
    assert ticks(paris, "2026-03-27T12:00:00+01:00", 3) == [
        "2026-03-28T08:00:00Z",
        "2026-03-29T07:00:00Z",
        "2026-03-30T07:00:00Z",
    ]
    new_york = Cron("30 8 * * 1-5", "America/New_York")
    # Friday, then Monday after the change of 2026-03-08 (EST -5 to EDT -4).
    assert ticks(new_york, "2026-03-06T00:00:00-05:00", 2) == [
        "2026-03-06T13:30:00Z",
        "2026-03-09T12:30:00Z",
    ]
    assert ticks(Cron("0 9 * * *"), "2026-03-28T12:00:00+00:00", 1) == ["2026-03-29T09:00:00Z"]


def test_a_wall_time_the_change_skips_ticks_at_the_change_and_a_repeated_one_ticks_once() -> None:
    nightly = Cron("30 2 * * *", "Europe/Paris")
    # 2026-03-29 02:30 does not exist in Paris: that night's tick is at 03:00 CEST.
    assert ticks(nightly, "2026-03-28T12:00:00+01:00", 2) == [
        "2026-03-29T01:00:00Z",
        "2026-03-30T00:30:00Z",
    ]
    # 2026-10-25 02:30 happens twice: one tick, at the first (CEST, 00:30 UTC).
    assert ticks(nightly, "2026-10-24T12:00:00+02:00", 2) == [
        "2026-10-25T00:30:00Z",
        "2026-10-26T01:30:00Z",
    ]


def test_a_sixth_field_gives_seconds() -> None:
    every_ten = Cron("* * * * * */10")
    assert ticks(every_ten, "2026-01-01T00:00:05+00:00", 3) == [
        "2026-01-01T00:00:10Z",
        "2026-01-01T00:00:20Z",
        "2026-01-01T00:00:30Z",
    ]
    every_second = Cron("* * * * * *")
    assert every_second.next_after(100.0) == 101.0
    assert every_second.next_after(100.5) == 101.0


def test_missed_ticks_are_caught_up_once_with_the_latest() -> None:
    hourly = Cron("0 * * * *")
    stored = at("2026-01-01T00:00:00+00:00")
    # Due on time: that tick, then the next.
    assert hourly.due(stored, stored + 0.2) == (stored, stored + 3600)
    # Not due yet.
    assert hourly.due(stored, stored - 1) is None
    # Three hours and a half late: the 03:00 tick alone, then 04:00.
    late = at("2026-01-01T03:30:00+00:00")
    assert hourly.due(stored, late) == (
        at("2026-01-01T03:00:00+00:00"),
        at("2026-01-01T04:00:00+00:00"),
    )
    # A year late, every second: still one tick, the latest.
    every_second = Cron("* * * * * *")
    assert every_second.due(1000.0, 1000.0 + 366 * 86400 + 0.5) == (
        1000.0 + 366 * 86400,
        1001.0 + 366 * 86400,
    )


@pytest.mark.parametrize(
    ("expression", "timezone", "reason"),
    [
        ("", "UTC", "invalid cron expression"),
        ("every day", "UTC", "invalid cron expression 'every day'"),
        ("* * * *", "UTC", "expected 5 fields"),
        ("* * * * * * * *", "UTC", "expected 5 fields"),
        ("60 * * * *", "UTC", "invalid cron expression"),
        # Random and hashed values would tick at another moment after each restart.
        ("R * * * *", "UTC", "R and H (random and hashed values) are not supported"),
        ("H/5 * * * *", "UTC", "R and H (random and hashed values) are not supported"),
        ("0 H(0-5) * * *", "UTC", "R and H (random and hashed values) are not supported"),
        ("0 9 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("0 9 * * *", "/etc/localtime", "unknown time zone"),
        ("0 9 * * *", "", "unknown time zone"),
    ],
)
def test_bad_expressions_and_time_zones_are_refused(
    expression: str, timezone: str, reason: str
) -> None:
    with pytest.raises(InvalidSchedule, match=re.escape(reason)):
        Cron(expression, timezone)


def test_month_and_weekday_names_are_no_random_values() -> None:
    assert Cron("0 9 * MAR THU").expression == "0 9 * MAR THU"


def test_an_expression_that_never_ticks_is_refused() -> None:
    with pytest.raises(InvalidSchedule, match="never ticks"):
        Cron("0 0 30 2 *").next_after(0.0)


def test_names_and_keys() -> None:
    assert name_problem("nightly-report.v2") is None
    assert name_problem("x" * 100) is None
    for bad in ("", "-x", "a b", "a:b", "x" * 101, "é"):
        assert name_problem(bad) is not None, bad
    assert tick_key("nightly", at("2026-12-05T09:00:00+00:00")) == (
        "schedule:nightly:2026-12-05T09:00:00Z"
    )


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def wall_skew(self) -> float:
        return 0.0

    async def close(self) -> None:
        pass


def test_the_ticker_dispatches_a_missed_schedule_once_and_moves_it_past_now() -> None:
    """A schedule whose ticks passed while no scheduler ran: one call, keyed by the
    latest missed tick, then its next tick after now."""
    hourly_at = at("2026-01-01T00:00:00+00:00")
    now = at("2026-01-01T05:10:00+00:00")

    async def run() -> tuple[list[str], float, float | None]:
        store = MemoryStore()
        await store.create_schedule(
            NewSchedule("hourly", "0 * * * *", "UTC", "report", "http://e.test", b"", hourly_at),
            now=hourly_at - 60,
        )
        ticker = Ticker(store, FixedClock(now), expiration=3600)
        delay = await ticker._tick_once()
        again = await ticker._tick_once()  # nothing more is due
        calls = await store.list(limit=10)
        found = await store.get_schedule("hourly")
        assert found is not None
        assert found.last_tick == at("2026-01-01T05:00:00+00:00")
        # The next look is the ticker's longest sleep away (the next tick is 50 min off).
        assert delay == again == MAX_SLEEP
        return [c.function for c in calls], found.next_tick, calls[0].expires_at if calls else None

    functions, next_tick, expires = asyncio.run(run())
    assert functions == ["report"]
    assert next_tick == at("2026-01-01T06:00:00+00:00")
    assert expires == now + 3600


def test_a_tick_carries_its_schedules_retry_policy_and_expiration() -> None:
    from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2

    options = options_pb2.CallOptions(max_attempts=3)
    options.attempt_timeout.FromSeconds(20)
    now = at("2026-01-01T00:00:00.500+00:00")  # Python 3.10 reads 3 or 6 digits

    async def run() -> list[object]:
        store = MemoryStore()
        for name, chosen, expiration in (("own", options, 90.0), ("plain", None, 0.0)):
            new = NewSchedule(
                name,
                "* * * * * *",
                "UTC",
                "report",
                "http://e.test",
                b"",
                now - 0.5,
                options=b"" if chosen is None else chosen.SerializeToString(),
                expiration=expiration,
            )
            await store.create_schedule(new, now=now - 1)
        await Ticker(store, FixedClock(now), expiration=3600)._tick_once()
        return [await store.get(s.last_dispatch_id) for s in await store.schedules()]

    own, plain = asyncio.run(run())
    assert own.policy is not None  # type: ignore[attr-defined]
    assert plain.policy is None  # type: ignore[attr-defined]
    assert own.policy.max_attempts == 3  # type: ignore[attr-defined]
    assert own.policy.attempt_timeout == 20  # type: ignore[attr-defined]
    assert own.expires_at == now + 90  # type: ignore[attr-defined]
    assert plain.expires_at == now + 3600  # type: ignore[attr-defined]


def test_in_the_hour_a_change_repeats_the_passed_wall_times_do_not_tick_again() -> None:
    every_minute = Cron("* * * * *", "Europe/Paris")
    every_second = Cron("* * * * * *", "Europe/Paris")
    # 2026-10-25 02:10 CET (01:10 UTC): the second 02:10 in Paris that night. The wall
    # times up to 03:00 ticked in the first pass (CEST): the next tick is 03:00 CET.
    second_pass = at("2026-10-25T02:10:00+01:00")
    assert iso_tick(every_minute.next_after(second_pass)) == "2026-10-25T02:00:00Z"
    assert iso_tick(every_second.next_after(second_pass)) == "2026-10-25T02:00:00Z"
    # A schedule due then is caught up once, then ticks from 03:00 CET.
    stored = at("2026-10-25T02:09:00+01:00")
    assert every_minute.due(stored, second_pass) == (stored, at("2026-10-25T03:00:00+01:00"))
    # In the first pass, every minute ticks.
    first_pass = at("2026-10-25T02:10:00+02:00")
    assert iso_tick(every_minute.next_after(first_pass)) == "2026-10-25T00:11:00Z"


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["nightly", "0 3 * *", "report"], "schedule 'nightly': invalid cron expression"),
        (["nightly", "0 3 * * *", "report", "--timezone", "Paris"], "unknown time zone 'Paris'"),
        (["night:ly", "0 3 * * *", "report"], "invalid schedule name 'night:ly'"),
    ],
)
def test_the_cli_refuses_a_bad_schedule_before_asking_the_scheduler(
    arguments: list[str],
    reason: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dispatchlet.cli.main import main
    from postgres_server import free_port

    # Nothing listens there: a request would be retried, then fail otherwise.
    monkeypatch.setenv("DISPATCH_API_URL", f"http://127.0.0.1:{free_port()}")
    assert main(["schedules", "create", *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dispatchlet schedules: error: invalid_argument: ")
    assert reason in captured.err
    assert captured.err.count("\n") == 1, captured.err
