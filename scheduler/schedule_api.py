"""The CallService's schedule RPCs (CreateSchedule, ListSchedules, PauseSchedule,
ResumeSchedule, DeleteSchedule, SyncSchedules): each schedule checked whole before
anything is stored, a bad one a 400 that names it and the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import InvalidArgument
from ..proto.dispatch.sdk.v1 import call_pb2
from ..proto.dispatchlet.scheduler.v1 import calls_pb2
from .call_limits import LimitsInvalid, limits_of
from .calls import (
    MAX_EXPIRATION,
    call_problem,
    duration_seconds,
    endpoint_problem,
    oversized_input,
    planned,
    timestamp,
)
from .cron import Cron, InvalidSchedule, name_problem
from .store.schedules import NewSchedule, Schedule, ScheduleNotFound

if TYPE_CHECKING:
    from .api import Api

MAX_SYNCED = 1000
"""The most schedules one sync may declare."""
MAX_OWNER = 500
"""The longest owner of synced schedules, in characters."""
DEFAULT_TIMEZONE = "UTC"


class ScheduleApi:
    """The schedule RPCs, over the API's store, engine and clock."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[tuple[str, object, type]]:
        """``(name, handler, request type)`` of each RPC."""
        return [
            ("CreateSchedule", self.create, calls_pb2.CreateScheduleRequest),
            ("ListSchedules", self.list_schedules, calls_pb2.ListSchedulesRequest),
            ("PauseSchedule", self.pause, calls_pb2.PauseScheduleRequest),
            ("ResumeSchedule", self.resume, calls_pb2.ResumeScheduleRequest),
            ("DeleteSchedule", self.delete, calls_pb2.DeleteScheduleRequest),
            ("SyncSchedules", self.sync, calls_pb2.SyncSchedulesRequest),
        ]

    def _changed(self) -> None:
        if self.api.ticker is not None:
            self.api.ticker.changed()

    def new_schedule(
        self, spec: calls_pb2.ScheduleSpec, now: float, *, owner: str = "", endpoint: str = ""
    ) -> NewSchedule:
        """The schedule ``spec`` asks for, first ticking after ``now``; ``InvalidArgument``
        naming it and the reason when it cannot be."""
        problem = name_problem(spec.name)
        if problem is not None:
            raise InvalidSchedule(problem)

        def invalid(reason: str) -> InvalidSchedule:
            return InvalidSchedule(f"schedule {spec.name!r}: {reason}")

        endpoint = (spec.endpoint or endpoint).rstrip("/")
        call = call_pb2.Call(function=spec.function, endpoint=endpoint)
        problem = call_problem(call) or self.api.engine.unsupported(endpoint)
        if problem is not None:
            raise invalid(problem)
        data = spec.input.SerializeToString() if spec.HasField("input") else b""
        problem = oversized_input(len(data), self.api.max_input_size)
        if problem is not None:
            raise invalid(f"{problem} (--max-input-size)")
        options = b""
        if spec.HasField("options"):
            chosen = spec.options
            if chosen.key or chosen.HasField("delay") or chosen.HasField("start_at"):
                raise invalid(
                    "a schedule's calls take no key, delay or start time in their options "
                    "(each tick's call has its own key)"
                )
            plan = planned(chosen, now)
            if isinstance(plan, str):
                raise invalid(plan)
            try:
                limits_of(chosen)
            except LimitsInvalid as exc:
                raise invalid(str(exc)) from None
            options = chosen.SerializeToString(deterministic=True)
        expiration = 0.0
        if spec.HasField("expiration"):
            expiration = duration_seconds(spec.expiration)
            if not 0 <= expiration <= MAX_EXPIRATION:
                raise invalid(f"an expiration must be 0 to {MAX_EXPIRATION:.0f} seconds (a year)")
        timezone = spec.timezone or DEFAULT_TIMEZONE
        try:
            cron = Cron(spec.cron, timezone)
            next_tick = cron.next_after(now)
        except InvalidSchedule as exc:
            raise invalid(str(exc)) from None
        return NewSchedule(
            name=spec.name,
            cron=cron.expression,
            timezone=timezone,
            function=spec.function,
            endpoint=endpoint,
            input=data,
            next_tick=next_tick,
            owner=owner,
            options=options,
            expiration=expiration,
        )

    async def create(
        self, request: calls_pb2.CreateScheduleRequest
    ) -> calls_pb2.CreateScheduleResponse:
        now = self.api.clock()
        new = self.new_schedule(request.schedule, now)
        created = await self.api.store.create_schedule(new, now=now)
        self._changed()
        return calls_pb2.CreateScheduleResponse(schedule=schedule_info(created))

    async def list_schedules(
        self, request: calls_pb2.ListSchedulesRequest
    ) -> calls_pb2.ListSchedulesResponse:
        found = await self.api.store.schedules()
        return calls_pb2.ListSchedulesResponse(schedules=[schedule_info(s) for s in found])

    async def _set_paused(self, name: str, paused: bool) -> Schedule:
        if not name:
            raise InvalidArgument("missing name")
        now = self.api.clock()
        next_tick = None
        if not paused:
            found = await self.api.store.get_schedule(name)
            if found is None:
                raise ScheduleNotFound(f"no schedule {name[:100]!r}")
            if not found.paused:
                return found  # resumed already: its next tick stays
            next_tick = Cron(found.cron, found.timezone).next_after(now)
        changed = await self.api.store.pause_schedule(
            name, paused=paused, next_tick=next_tick, now=now
        )
        if changed is None:
            raise ScheduleNotFound(f"no schedule {name[:100]!r}")
        self._changed()
        return changed

    async def pause(
        self, request: calls_pb2.PauseScheduleRequest
    ) -> calls_pb2.PauseScheduleResponse:
        paused = await self._set_paused(request.name, True)
        return calls_pb2.PauseScheduleResponse(schedule=schedule_info(paused))

    async def resume(
        self, request: calls_pb2.ResumeScheduleRequest
    ) -> calls_pb2.ResumeScheduleResponse:
        resumed = await self._set_paused(request.name, False)
        return calls_pb2.ResumeScheduleResponse(schedule=schedule_info(resumed))

    async def delete(
        self, request: calls_pb2.DeleteScheduleRequest
    ) -> calls_pb2.DeleteScheduleResponse:
        if not request.name:
            raise InvalidArgument("missing name")
        if not await self.api.store.delete_schedule(request.name):
            raise ScheduleNotFound(f"no schedule {request.name[:100]!r}")
        return calls_pb2.DeleteScheduleResponse()

    async def sync(
        self, request: calls_pb2.SyncSchedulesRequest
    ) -> calls_pb2.SyncSchedulesResponse:
        endpoint = request.endpoint.rstrip("/")
        problem = endpoint_problem(endpoint) if endpoint else "missing endpoint"
        if problem is not None:
            raise InvalidArgument(problem)
        owner = request.owner or endpoint
        if len(owner) > MAX_OWNER or not owner.isprintable():
            raise InvalidArgument(f"invalid owner {owner[:100]!r}: at most {MAX_OWNER} characters")
        if len(request.schedules) > MAX_SYNCED:
            raise InvalidArgument(
                f"{len(request.schedules)} schedules in one sync: at most {MAX_SYNCED}"
            )
        names = [spec.name for spec in request.schedules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InvalidArgument(f"schedule names given twice: {', '.join(repeated)}")
        now = self.api.clock()
        wanted = [
            self.new_schedule(spec, now, owner=owner, endpoint=endpoint)
            for spec in request.schedules
        ]
        synced = await self.api.store.sync_schedules(owner, wanted, now=now)
        self._changed()
        return calls_pb2.SyncSchedulesResponse(
            created=synced.created,
            updated=synced.updated,
            deleted=synced.deleted,
            unchanged=synced.unchanged,
        )


def schedule_info(schedule: Schedule) -> calls_pb2.ScheduleInfo:
    """What the CallService tells of ``schedule``."""
    spec = calls_pb2.ScheduleSpec(
        name=schedule.name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        function=schedule.function,
        endpoint=schedule.endpoint,
    )
    if schedule.input:
        spec.input.ParseFromString(schedule.input)
    if schedule.options:
        spec.options.ParseFromString(schedule.options)
    if schedule.expiration:
        spec.expiration.FromNanoseconds(round(schedule.expiration * 1e9))
    info = calls_pb2.ScheduleInfo(
        spec=spec,
        paused=schedule.paused,
        last_dispatch_id=schedule.last_dispatch_id,
        synced_for=schedule.owner,
    )
    info.next_tick.CopyFrom(timestamp(schedule.next_tick))
    if schedule.last_tick is not None:
        info.last_tick.CopyFrom(timestamp(schedule.last_tick))
    info.created_at.CopyFrom(timestamp(schedule.created_at))
    info.updated_at.CopyFrom(timestamp(schedule.updated_at))
    return info
