"""Schedules as the client shows them (``Client.list_schedules`` and its neighbours),
and the schedules an app declares in code (``@endpoint.function(schedule="0 9 * * *")``),
which ``Client.sync_schedules`` pushes."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from ..core import values
from ..core.declared_schedule import read_schedule
from ..core.dispatch_options import Backoff, Seconds, settings
from ..core.endpoint import Endpoint
from ..proto.dispatchlet.scheduler.v1 import calls_pb2
from .policies import policy_fields


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule the scheduler holds."""

    name: str
    cron: str
    timezone: str
    function: str
    endpoint: str
    input: object
    """The input of each tick's call, decoded (None: none)."""
    paused: bool
    next_tick: datetime.datetime | None
    """When its next call is due (while not paused), in UTC."""
    last_tick: datetime.datetime | None
    """The latest tick dispatched (None: none yet)."""
    last_dispatch_id: str
    """That tick's call."""
    synced_for: str
    """The endpoint URL whose sync manages it; empty for one created by hand."""
    created_at: datetime.datetime | None
    updated_at: datetime.datetime | None
    # What each tick's call carries (None: the scheduler's default, or no limit).
    max_attempts: int | None = None
    timeout: datetime.timedelta | None = None
    """How long one attempt may run."""
    backoff: Backoff | None = None
    """The wait before retries (its times in seconds)."""
    expiration: datetime.timedelta | None = None
    """How long the scheduler may take to run the call."""
    concurrency: int | None = None
    rate_limit: tuple[int, datetime.timedelta] | None = None
    """At most this many attempts start per this period."""

    @classmethod
    def from_proto(cls, info: calls_pb2.ScheduleInfo) -> ScheduleInfo:
        spec = info.spec
        policy = policy_fields(spec.options)
        data: object = None
        if spec.HasField("input"):
            try:
                data = values.from_any(spec.input)
            except values.DecodeError:
                data = spec.input
        return cls(
            name=spec.name,
            cron=spec.cron,
            timezone=spec.timezone,
            function=spec.function,
            endpoint=spec.endpoint,
            input=data,
            paused=info.paused,
            next_tick=_time(info, "next_tick"),
            last_tick=_time(info, "last_tick"),
            last_dispatch_id=info.last_dispatch_id,
            synced_for=info.synced_for,
            created_at=_time(info, "created_at"),
            updated_at=_time(info, "updated_at"),
            expiration=spec.expiration.ToTimedelta() if spec.HasField("expiration") else None,
            max_attempts=policy["max_attempts"],
            timeout=policy["timeout"],
            backoff=policy["backoff"],
            concurrency=policy["concurrency"],
            rate_limit=policy["rate_limit"],
        )


def _time(info: calls_pb2.ScheduleInfo, field: str) -> datetime.datetime | None:
    if not info.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(info, field)
    return stamp.ToDatetime(datetime.timezone.utc)


@dataclass(frozen=True)
class SyncResult:
    """What a sync did, by schedule name."""

    created: tuple[str, ...]
    updated: tuple[str, ...]
    deleted: tuple[str, ...]
    unchanged: tuple[str, ...]

    @classmethod
    def from_proto(cls, answer: calls_pb2.SyncSchedulesResponse) -> SyncResult:
        return cls(
            tuple(answer.created),
            tuple(answer.updated),
            tuple(answer.deleted),
            tuple(answer.unchanged),
        )


def declared_schedules(endpoint: Endpoint) -> list[calls_pb2.ScheduleSpec]:
    """The schedules ``endpoint``'s functions declare (``schedule=`` of
    ``@endpoint.function``), each named after its function, ticking in the time zone
    its expression starts with (``CRON_TZ=Europe/Paris 0 9 * * *``), else in UTC, its
    call without arguments and with the function's defaults (retry policy, expiration,
    limits)."""
    declared = []
    for name, function in sorted(endpoint.functions.items()):
        if not function.schedule:
            continue
        schedule = read_schedule(function.schedule)
        spec = calls_pb2.ScheduleSpec(
            name=name, cron=schedule.cron, timezone=schedule.timezone, function=name
        )
        spec.input.CopyFrom(values.to_any(None))
        # Each tick's call carries the function's defaults, as a call from Python does.
        defaults = function.defaults
        options = defaults.to_proto()
        # Each tick's own: its key, and its time.
        options.ClearField("key")
        options.ClearField("delay")
        options.ClearField("start_at")
        if options.ByteSize():
            spec.options.CopyFrom(options)
        if defaults.expiration is not None:
            spec.expiration.FromNanoseconds(round(defaults.expiration * 1e9))
        declared.append(spec)
    return declared


def schedule_spec(
    name: str,
    cron: str,
    function: str,
    input: object,
    *,
    endpoint: str,
    timezone: str,
    max_attempts: int | None = None,
    timeout: Seconds | None = None,
    backoff: Backoff | Seconds | None = None,
    expiration: Seconds | None = None,
    concurrency: int | None = None,
    rate_limit: tuple[int, Seconds] | None = None,
) -> calls_pb2.ScheduleSpec:
    """The schedule ``Client.create_schedule`` asks for: its ticks' calls with these
    options (checked here as ``options(...)`` checks them: ``TypeError`` or
    ``ValueError``)."""
    given = settings(
        f"schedule {name}",
        max_attempts=max_attempts,
        timeout=timeout,
        backoff=backoff,
        expiration=expiration,
        concurrency=concurrency,
        rate_limit=rate_limit,
    )
    spec = calls_pb2.ScheduleSpec(
        name=name, cron=cron, timezone=timezone, function=function, endpoint=endpoint
    )
    spec.input.CopyFrom(values.to_any(input))
    options = given.to_proto()
    if options.ByteSize():
        spec.options.CopyFrom(options)
    if given.expiration is not None:
        spec.expiration.FromNanoseconds(round(given.expiration * 1e9))
    return spec
