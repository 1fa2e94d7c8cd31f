"""The dashboard's schedules page (``/schedules``): every schedule with its next and last
tick and whether it is paused, and its actions (pause, resume, delete), each a POST
checked as the call actions are (the session's CSRF token, a page of this address) and
run through the API's own handler of the RPC, so that a page does what the CLI does."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ...proto.dispatchlet.scheduler.v1 import calls_pb2
from ..schedule_api import ScheduleApi
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
        )


class SchedulesPage:
    """The page and its actions, mounted on a dashboard."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.rpcs = ScheduleApi(dashboard.api)

    def mount(self, app: web.Application) -> None:
        page = self.dashboard.page
        app.router.add_get("/schedules", page(self.show))
        app.router.add_post("/schedules/{name}/{action}", page(self.act, form=True))

    async def show(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        schedules = await self.dashboard.api.store.schedules()
        done = request.query.get("done", "")
        return self.dashboard.render(
            viewer,
            "schedules.html",
            path="/schedules",
            rows=[ScheduleRow.of(s) for s in schedules],
            now=views.moment(self.dashboard.api.clock()),
            done=next((a.done for a in SCHEDULE_ACTIONS if a.name == done), ""),
        )

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
