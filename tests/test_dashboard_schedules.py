"""The schedule RPCs and the dashboard's schedules page, in process: bad schedules are
400s that say why, and the page lists each schedule with its next and last tick and
pauses, resumes and deletes it with CSRF-checked POSTs."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.core import values
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2, options_pb2
from google.protobuf import duration_pb2
from scheduler_harness import ENDPOINT, Harness, harness
from test_dashboard import get, log_in, post

SCHEDULES = "/dispatchlet.scheduler.v1.CallService/"


def scenario(tmp_path: Path, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def run() -> None:
        async with harness(tmp_path, running=False) as h:
            await body(h)

    asyncio.run(run())


def spec(name: str = "nightly", **fields: Any) -> calls_pb2.ScheduleSpec:
    fields.setdefault("cron", "0 3 * * *")
    fields.setdefault("function", "report")
    fields.setdefault("endpoint", ENDPOINT)
    made = calls_pb2.ScheduleSpec(name=name, **fields)
    made.input.CopyFrom(values.to_any("all"))
    return made


def negative_timeout() -> options_pb2.CallOptions:
    options = options_pb2.CallOptions()
    options.attempt_timeout.FromSeconds(-1)
    return options


async def create(h: Harness, made: calls_pb2.ScheduleSpec) -> tuple[int, bytes]:
    request = calls_pb2.CreateScheduleRequest(schedule=made)
    return await h.post(SCHEDULES + "CreateSchedule", request.SerializeToString())


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"cron": "0 25 * * *"}, "invalid cron expression '0 25 * * *'"),
        ({"cron": "* * * *"}, "expected 5 fields"),
        ({"cron": "0 0 30 2 *"}, "never ticks"),
        ({"timezone": "Europe/Nowhere"}, "unknown time zone 'Europe/Nowhere'"),
        ({"timezone": "../../etc/passwd"}, "unknown time zone"),
        ({"name": "a b"}, "invalid schedule name 'a b'"),
        ({"name": ""}, "invalid schedule name ''"),
        ({"function": "2fast"}, "invalid function name '2fast'"),
        ({"endpoint": "ftp://host"}, "invalid endpoint 'ftp://host'"),
        ({"options": options_pb2.CallOptions(key="k")}, "take no key, delay or start time"),
        ({"options": negative_timeout()}, "attempt_timeout must be 0 to"),
    ],
)
def test_a_bad_schedule_is_a_400_saying_why(
    tmp_path: Path, fields: dict[str, str], reason: str
) -> None:
    async def body(h: Harness) -> None:
        status, answer = await create(h, spec(**fields))
        assert status == 400, answer
        error = json.loads(answer)
        assert error["code"] == "invalid_argument"
        assert reason in error["message"]
        listed = await h.rpc(
            SCHEDULES + "ListSchedules",
            calls_pb2.ListSchedulesRequest(),
            calls_pb2.ListSchedulesResponse,
        )
        assert list(listed.schedules) == []

    scenario(tmp_path, body)


def test_a_declared_schedule_carries_its_functions_defaults() -> None:
    from dispatchlet import Endpoint
    from dispatchlet.client.schedules import declared_schedules

    endpoint = Endpoint(endpoint_url="http://app.test")

    @endpoint.function(schedule="0 3 * * *", max_attempts=4, timeout=30, expiration=600)
    def nightly() -> None: ...

    @endpoint.function(schedule="0 * * * *")
    def hourly() -> None: ...

    @endpoint.function
    def unscheduled() -> None: ...

    specs = {spec.name: spec for spec in declared_schedules(endpoint)}
    assert sorted(specs) == ["hourly", "nightly"]
    assert specs["nightly"].options.max_attempts == 4
    assert specs["nightly"].options.attempt_timeout.seconds == 30
    assert specs["nightly"].expiration.seconds == 600
    assert not specs["hourly"].HasField("options")
    assert not specs["hourly"].HasField("expiration")


def test_a_taken_name_is_already_exists_and_an_unknown_one_not_found(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        assert (await create(h, spec()))[0] == 200
        status, answer = await create(h, spec(cron="* * * * *"))
        assert (status, json.loads(answer)["code"]) == (409, "already_exists")
        for rpc, kind in (
            ("PauseSchedule", calls_pb2.PauseScheduleRequest),
            ("ResumeSchedule", calls_pb2.ResumeScheduleRequest),
            ("DeleteSchedule", calls_pb2.DeleteScheduleRequest),
        ):
            status, answer = await h.post(SCHEDULES + rpc, kind(name="nope").SerializeToString())
            assert (status, json.loads(answer)["code"]) == (404, "not_found"), rpc

    scenario(tmp_path, body)


def test_a_sync_refuses_a_name_given_twice_a_bad_endpoint_and_a_long_owner(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        twice = calls_pb2.SyncSchedulesRequest(endpoint=ENDPOINT, schedules=[spec(), spec()])
        status, answer = await h.post(SCHEDULES + "SyncSchedules", twice.SerializeToString())
        assert status == 400
        assert "schedule names given twice: nightly" in json.loads(answer)["message"]
        bad = calls_pb2.SyncSchedulesRequest(endpoint="nowhere", schedules=[spec()])
        status, answer = await h.post(SCHEDULES + "SyncSchedules", bad.SerializeToString())
        assert status == 400
        assert "invalid endpoint 'nowhere'" in json.loads(answer)["message"]
        long = calls_pb2.SyncSchedulesRequest(endpoint=ENDPOINT, owner="x" * 501)
        status, answer = await h.post(SCHEDULES + "SyncSchedules", long.SerializeToString())
        assert status == 400
        assert "invalid owner" in json.loads(answer)["message"]

    scenario(tmp_path, body)


def test_the_schedules_page_lists_pauses_resumes_and_deletes(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        token, csrf = await log_in(h)
        assert (await create(h, spec("nightly", timezone="Europe/Paris")))[0] == 200
        assert (await create(h, spec("hourly", cron="0 * * * *")))[0] == 200
        status, page, _ = await get(h, "/schedules", cookie=token)
        assert status == 200
        assert 'href="/schedules" aria-current="page"' in page
        assert "<code>0 3 * * *</code>" in page
        assert "Europe/Paris" in page
        nightly = await h.store.get_schedule("nightly")
        assert nightly is not None
        assert f'datetime="{_iso(nightly.next_tick)}"' in page
        assert page.count(">active<") == 2
        assert 'action="/schedules/nightly/pause"' in page
        assert 'action="/schedules/nightly/resume"' not in page

        path = "/schedules/nightly/pause"
        assert (await post(h, path, {}, cookie=token))[0] == 403
        assert (await post(h, path, {"csrf": csrf}, cookie=token, origin="http://evil"))[0] == 403
        still = await h.store.get_schedule("nightly")
        assert still is not None
        assert not still.paused
        status, _, _ = await post(h, path, {"csrf": csrf}, cookie=token)
        assert status == 303
        paused = await h.store.get_schedule("nightly")
        assert paused is not None
        assert paused.paused
        _, page, _ = await get(h, "/schedules?done=pause", cookie=token)
        assert "Paused: no tick until it is resumed." in page
        assert 'action="/schedules/nightly/resume"' in page
        assert ">paused<" in page

        resume = "/schedules/nightly/resume"
        assert (await post(h, resume, {"csrf": csrf}, cookie=token))[0] == 303
        resumed = await h.store.get_schedule("nightly")
        assert resumed is not None
        assert not resumed.paused
        delete = "/schedules/hourly/delete"
        assert (await post(h, delete, {"csrf": csrf}, cookie=token))[0] == 303
        assert await h.store.get_schedule("hourly") is None
        unknown = "/schedules/hourly/delete"
        assert (await post(h, unknown, {"csrf": csrf}, cookie=token))[0] == 404
        assert (await post(h, "/schedules/nightly/explode", {"csrf": csrf}, cookie=token))[0] == 404

    scenario(tmp_path, body)


def test_the_schedules_page_says_what_each_tick_call_carries(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        token, _ = await log_in(h)
        limited = spec("digest", expiration=duration_pb2.Duration(seconds=600))
        limited.options.max_attempts = 3
        limited.options.attempt_timeout.FromSeconds(30)
        limited.options.concurrency = 2
        limited.options.rate_limit.count = 5
        limited.options.rate_limit.period.FromSeconds(60)
        assert (await create(h, limited))[0] == 200
        assert (await create(h, spec("plain")))[0] == 200
        _, page, _ = await get(h, "/schedules", cookie=token)
        page = html.unescape(page)
        assert page.count("Each call: ") == 1
        assert (
            "Each call: at most 3 attempts; 30.0s per attempt (the scheduler's settings for "
            "the rest); at most 2 of its function in flight; at most 5 starts per 60 s; "
            "given 10m00s to run</div>"
        ) in page

    scenario(tmp_path, body)


def _iso(seconds: float) -> str:
    from dispatchlet.scheduler.dashboard import views

    return views.iso(seconds)


def test_schedules_are_managed_in_connect_json_too(tmp_path: Path) -> None:
    """As curl sends them: JSON bodies, JSON answers."""

    async def body(h: Harness) -> None:
        created = {
            "schedule": {
                "name": "nightly",
                "cron": "0 3 * * *",
                "timezone": "Europe/Paris",
                "function": "report",
                "endpoint": ENDPOINT,
            }
        }
        status, answer = await h.post(
            SCHEDULES + "CreateSchedule",
            json.dumps(created).encode(),
            content_type="application/json",
        )
        assert status == 200, answer
        shown = json.loads(answer)["schedule"]
        assert shown["spec"]["timezone"] == "Europe/Paris"
        assert shown["nextTick"].endswith(("T01:00:00Z", "T02:00:00Z"))
        status, answer = await h.post(
            SCHEDULES + "PauseSchedule", b'{"name": "nightly"}', content_type="application/json"
        )
        assert status == 200, answer
        assert json.loads(answer)["schedule"]["paused"] is True
        status, answer = await h.post(
            SCHEDULES + "ListSchedules", b"{}", content_type="application/json"
        )
        assert [s["spec"]["name"] for s in json.loads(answer)["schedules"]] == ["nightly"]

    scenario(tmp_path, body)


def _create_form(**fields: str) -> dict[str, str]:
    form = {
        "name": "digest",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Paris",
        "function": "send_digest",
        "endpoint": ENDPOINT,
        "input": '{"team": "ops"}',
    }
    form.update(fields)
    return form


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        ({"cron": "0 25 * * *"}, 400, "invalid cron expression &#39;0 25 * * *&#39;"),
        ({"timezone": "Europe/Nowhere"}, 400, "unknown time zone &#39;Europe/Nowhere&#39;"),
        ({"function": "2fast"}, 400, "invalid function name &#39;2fast&#39;"),
        ({"input": "{team: ops}"}, 400, "the input is not JSON"),
        ({"name": "taken"}, 409, "a schedule named &#39;taken&#39; exists already"),
    ],
)
def test_the_create_form_shows_the_apis_refusal_next_to_it(
    tmp_path: Path, fields: dict[str, str], status: int, reason: str
) -> None:
    async def body(h: Harness) -> None:
        token, csrf = await log_in(h)
        assert (await create(h, spec("taken")))[0] == 200
        form = _create_form(**fields)
        answer, page, _ = await post(h, "/schedules", {"csrf": csrf, **form}, cookie=token)
        assert answer == status, page
        problem = page.index('class="problem" role="alert"')
        # Next to the form, which keeps what was typed.
        assert reason in page[problem : page.index('action="/schedules"')]
        assert f'value="{form["cron"]}"' in page
        assert f'value="{form["timezone"]}"' in page
        assert [s.name for s in await h.store.schedules()] == ["taken"]

    scenario(tmp_path, body)


def test_the_create_form_creates_a_schedule_as_the_rpc_does(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        token, csrf = await log_in(h)
        status, page, _ = await get(h, "/schedules", cookie=token)
        assert status == 200
        assert 'action="/schedules"' in page
        assert f'name="csrf" value="{csrf}"' in page
        # Only from the dashboard's own pages, with the session's token.
        form = _create_form()
        assert (await post(h, "/schedules", form, cookie=token))[0] == 403
        evil = await post(h, "/schedules", {"csrf": csrf, **form}, cookie=token, origin="http://x")
        assert evil[0] == 403
        assert await h.store.schedules() == []

        status, _, _ = await post(h, "/schedules", {"csrf": csrf, **form}, cookie=token)
        assert status == 303
        made = await h.store.get_schedule("digest")
        assert made is not None
        assert (made.cron, made.timezone, made.function, made.endpoint) == (
            "0 9 * * 1-5",
            "Europe/Paris",
            "send_digest",
            ENDPOINT,
        )
        from dispatchlet.scheduler.cron import Cron

        # Its first tick is 09:00 in Paris on a weekday, as the RPC computes it.
        assert made.next_tick == Cron("0 9 * * 1-5", "Europe/Paris").next_after(made.created_at)
        shown = calls_pb2.ScheduleSpec()
        shown.input.ParseFromString(made.input)
        assert values.from_any(shown.input) == {"team": "ops"}
        _, page, _ = await get(h, "/schedules?done=create", cookie=token)
        assert "Created: it ticks from its next tick." in page
        assert 'action="/schedules/digest/pause"' in page

        # No input and no zone: none, and UTC.
        bare = _create_form(name="bare", timezone="", input="")
        assert (await post(h, "/schedules", {"csrf": csrf, **bare}, cookie=token))[0] == 303
        plain = await h.store.get_schedule("bare")
        assert plain is not None
        assert plain.timezone == "UTC"
        shown.input.ParseFromString(plain.input)
        assert values.from_any(shown.input) is None

    scenario(tmp_path, body)
