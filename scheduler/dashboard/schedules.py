"""The dashboard's schedules page (``/schedules``): every schedule with its next and last
tick and whether it is paused, its actions (pause, resume, delete) and a form that
creates one, each a POST checked as the call actions are (the session's CSRF token, a
page of this address) and run through the API's own handler of the RPC, so that a page
does what the CLI does; a schedule refused is said next to the form, which keeps what
was typed."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ...core.errors import InvalidArgument, refuses
from ...core.values import EncodeError, to_any
from ...proto.dispatchlet.scheduler.v1 import calls_pb2, options_pb2
from ..call_limits import LimitsInvalid, limits_of
from ..calls import planned
from ..schedule_api import DEFAULT_TIMEZONE, ScheduleApi
from ..store.limits import limits_text
from ..store.schedules import Schedule
from . import views

if TYPE_CHECKING:
    from .pages import Dashboard, Viewer


@dataclass(frozen=True)
class ScheduleAction:
    name: str
    label: str
    done: str
    danger: bool = False

    def applies(self, schedule: Schedule) -> bool:
        if self.name == "pause":
            return not schedule.paused
        if self.name == "resume":
            return schedule.paused
        return True


CREATE_FIELDS = ("name", "cron", "timezone", "function", "endpoint", "input")
"""The create form's fields, as the page names them."""
CREATED = "Created: it ticks from its next tick."


def form_spec(form: dict[str, str]) -> calls_pb2.ScheduleSpec:
    """The schedule the create form asks for (the RPC checks the rest): its input is
    JSON, or none when left empty; ``InvalidArgument`` when it is not JSON."""
    spec = calls_pb2.ScheduleSpec(
        name=form["name"],
        cron=form["cron"],
        timezone=form["timezone"] or DEFAULT_TIMEZONE,
        function=form["function"],
        endpoint=form["endpoint"],
    )
    text = form["input"]
    try:
        value: object = json.loads(text) if text.strip() else None
        spec.input.CopyFrom(to_any(value))
    except (ValueError, EncodeError) as exc:
        raise InvalidArgument(
            f"schedule {spec.name[:100]!r}: the input is not JSON: {exc}"
        ) from None
    return spec


SCHEDULE_ACTIONS = (
    ScheduleAction("pause", "Pause", "Paused: no tick until it is resumed."),
    ScheduleAction("resume", "Resume", "Resumed: it ticks again from its next tick."),
    ScheduleAction("delete", "Delete", "Deleted (its calls are kept).", danger=True),
)


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule as the page shows it."""

    schedule: Schedule
    next_tick: str
    next_tick_iso: str
    last_tick: str
    last_tick_iso: str
    actions: tuple[ScheduleAction, ...]
    each_call: str
    """What each tick's call carries, in words (empty: the scheduler's defaults)."""

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleRow:
        upcoming = None if schedule.paused else schedule.next_tick
        return cls(
            schedule=schedule,
            next_tick=views.moment(upcoming),
            next_tick_iso=views.iso(upcoming),
            last_tick=views.moment(schedule.last_tick),
            last_tick_iso=views.iso(schedule.last_tick),
            actions=tuple(a for a in SCHEDULE_ACTIONS if a.applies(schedule)),
            each_call=each_call(schedule),
        )


def each_call(schedule: Schedule) -> str:
    """The policy, limits and expiration each tick's call carries, in words."""
    parts = []
    if schedule.options:
        options = options_pb2.CallOptions.FromString(schedule.options)
        plan = planned(options, 0.0)
        if not isinstance(plan, str):
            parts.append(views.policy_text(plan.policy))
        with contextlib.suppress(LimitsInvalid):  # checked when stored
            parts.append(limits_text(limits_of(options)))
    if schedule.expiration:
        parts.append(f"given {views.duration(schedule.expiration)} to run")
    return "; ".join(part for part in parts if part)


class SchedulesPage:
    """The page and its actions, mounted on a dashboard."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.rpcs = ScheduleApi(dashboard.api)

    def mount(self, app: web.Application) -> None:
        page = self.dashboard.page
        app.router.add_get("/schedules", page(self.show))
        app.router.add_post("/schedules", page(self.create, form=True))
        app.router.add_post("/schedules/{name}/{action}", page(self.act, form=True))

    async def show(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        done = request.query.get("done", "")
        notice = CREATED if done == "create" else ""
        return await self.listing(
            viewer, done=next((a.done for a in SCHEDULE_ACTIONS if a.name == done), notice)
        )

    async def listing(
        self,
        viewer: Viewer,
        *,
        done: str = "",
        problem: str = "",
        typed: dict[str, str] | None = None,
        answer: int = 200,
    ) -> web.Response:
        schedules = await self.dashboard.api.store.schedules()
        return self.dashboard.render(
            viewer,
            "schedules.html",
            answer,
            path="/schedules",
            rows=[ScheduleRow.of(s) for s in schedules],
            now=views.moment(self.dashboard.api.clock()),
            done=done,
            problem=problem,
            typed=typed or {"timezone": DEFAULT_TIMEZONE},
        )

    async def create(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        """Create the form's schedule (``CreateSchedule``); a refusal is shown next to
        the form, with what was typed."""
        posted = await request.post()
        typed = {name: str(posted.get(name, "")).strip() for name in CREATE_FIELDS}
        try:
            await self.rpcs.create(calls_pb2.CreateScheduleRequest(schedule=form_spec(typed)))
        except Exception as exc:
            if not (refuses(exc) and exc.http_status < 500):
                raise
            return await self.listing(viewer, problem=str(exc), typed=typed, answer=exc.http_status)
        raise web.HTTPSeeOther("/schedules?done=create")

    async def act(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        from .pages import NotFoundPage

        name = request.match_info["name"]
        action = request.match_info["action"]
        if action == "pause":
            await self.rpcs.pause(calls_pb2.PauseScheduleRequest(name=name))
        elif action == "resume":
            await self.rpcs.resume(calls_pb2.ResumeScheduleRequest(name=name))
        elif action == "delete":
            await self.rpcs.delete(calls_pb2.DeleteScheduleRequest(name=name))
        else:
            raise NotFoundPage(f"No action {action[:40]!r} here.")
        raise web.HTTPSeeOther(f"/schedules?{urllib.parse.urlencode({'done': action})}")
