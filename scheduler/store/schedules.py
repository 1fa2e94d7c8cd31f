"""Schedules (cron), the part every store shares: what a schedule is, its SQL, and the
decisions of a sync.

A schedule is kept in a table of its own (``{calls}_schedules``), beside the calls and
not tied to them: retention, which deletes calls, never deletes a schedule. Each tick
is dispatched by ``Store.tick_schedules``, in one transaction with the advance of the
schedule's next tick: the due schedules are locked (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``, so that the processes on one database take different ones and never wait on
each other; SQLite and memory: one writer), each tick's call is stored with the
idempotency key ``schedule:NAME:TICK``, and the next tick is set only where it is still
the one read (compare and set). A tick is therefore dispatched once, whichever process
claims it, and the key makes a second dispatch of it store nothing even so.

Ownership (``Store.sync_schedules``): a schedule created by hand (the CLI, the client,
``CreateSchedule``) has no owner; one created by a sync is owned by the endpoint URL it
was synced for. A sync for an endpoint creates the schedules declared, updates those it
owns, and deletes those it owns that are no longer declared; it never touches another's
schedule: a declared name already taken by a schedule created by hand or synced for
another endpoint is a conflict, and the sync changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...core.errors import DispatchletError, NotFound
from . import NewCall
from .statements import Dialect


@dataclass(frozen=True)
class NewSchedule:
    """A schedule to create (or, by a sync, to update)."""

    name: str
    cron: str
    timezone: str
    function: str
    endpoint: str
    input: bytes
    """A serialized ``google.protobuf.Any`` (empty: no input)."""
    next_tick: float
    """Its first tick after its creation."""
    owner: str = ""
    """The owner of the sync that manages it (its endpoint URL, unless the sync named
    another); empty: created by hand."""
    options: bytes = b""
    """A serialized ``CallOptions`` each tick's call carries (its policy); empty: none."""
    expiration: float = 0.0
    """Seconds each tick's call is given; 0: the scheduler's default."""


@dataclass(frozen=True)
class Schedule:
    """A stored schedule."""

    name: str
    cron: str
    timezone: str
    function: str
    endpoint: str
    input: bytes
    paused: bool
    next_tick: float
    """While not paused: when its next call is due."""
    last_tick: float | None
    """The latest tick dispatched (None: none yet)."""
    last_dispatch_id: str
    owner: str
    created_at: float
    updated_at: float
    options: bytes = b""
    expiration: float = 0.0

    def same_as(self, new: NewSchedule) -> bool:
        mine = (self.cron, self.timezone, self.function, self.endpoint, self.input)
        theirs = (new.cron, new.timezone, new.function, new.endpoint, new.input)
        return (*mine, self.options, self.expiration) == (*theirs, new.options, new.expiration)


@dataclass(frozen=True)
class TickPlan:
    """What a due schedule's tick comes to: the call to dispatch, which tick it is,
    and the schedule's next tick."""

    tick: float
    next_tick: float
    call: NewCall


@dataclass(frozen=True)
class Ticked:
    """One tick dispatched."""

    name: str
    tick: float
    dispatch_id: str


@dataclass(frozen=True)
class Synced:
    """What a sync did, by schedule name."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


Planner = Callable[[Schedule], "TickPlan | None"]
"""Given a due schedule, its tick's plan (None: leave it, it cannot be planned now)."""


class ScheduleExists(DispatchletError):
    """A schedule of that name exists already (Connect ``already_exists``)."""

    http_status = 409
    code = "already_exists"


class ScheduleNotFound(NotFound):
    """No schedule of that name."""


@dataclass(frozen=True)
class SyncPlan:
    """The changes of a sync: schedules to insert, to update (whole), to delete."""

    insert: tuple[NewSchedule, ...]
    update: tuple[NewSchedule, ...]
    delete: tuple[str, ...]
    synced: Synced


def sync_plan(owner: str, existing: Sequence[Schedule], wanted: Sequence[NewSchedule]) -> SyncPlan:
    """The changes that make the schedules owned by ``owner`` the ``wanted`` ones, given
    the schedules stored (``existing``). An update keeps the schedule's next tick (and
    its pause) unless its cron expression or time zone changed. A wanted name held by a
    schedule of another owner (or none: created by hand) raises ``ScheduleExists``."""
    stored = {schedule.name: schedule for schedule in existing}
    wanted_names = {new.name for new in wanted}
    insert: list[NewSchedule] = []
    update: list[NewSchedule] = []
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for new in wanted:
        old = stored.get(new.name)
        if old is None:
            insert.append(new)
            created.append(new.name)
        elif old.owner != owner:
            held = f"synced for {old.owner}" if old.owner else "created by hand"
            raise ScheduleExists(
                f"the schedule {new.name!r} exists already ({held}): delete it, or rename "
                "the function, for the sync to create its own"
            )
        elif old.same_as(new):
            unchanged.append(new.name)
        else:
            moved = (old.cron, old.timezone) != (new.cron, new.timezone)
            kept = new if moved else _with_next_tick(new, old.next_tick)
            update.append(kept)
            updated.append(new.name)
    delete = sorted(
        s.name for s in existing if s.owner == owner and owner and s.name not in wanted_names
    )
    synced = Synced(tuple(created), tuple(updated), tuple(delete), tuple(unchanged))
    return SyncPlan(tuple(insert), tuple(update), tuple(delete), synced)


def _with_next_tick(new: NewSchedule, next_tick: float) -> NewSchedule:
    return dataclasses.replace(new, next_tick=next_tick)


COLUMNS = (
    "name, cron, timezone, function, endpoint, input, paused, next_tick, last_tick, "
    "last_dispatch_id, owner, created_at, updated_at, options, expiration"
)


def schedule_from_row(row: Sequence[Any]) -> Schedule:
    """A stored schedule from its ``COLUMNS``."""
    return Schedule(
        name=row[0],
        cron=row[1],
        timezone=row[2],
        function=row[3],
        endpoint=row[4],
        input=bytes(row[5]),
        paused=bool(row[6]),
        next_tick=row[7],
        last_tick=row[8],
        last_dispatch_id=row[9],
        owner=row[10],
        created_at=row[11],
        updated_at=row[12],
        options=bytes(row[13]),
        expiration=row[14],
    )


def new_row(new: NewSchedule, now: float) -> dict[str, Any]:
    """The parameters of ``insert`` and ``update``."""
    return {
        "name": new.name,
        "cron": new.cron,
        "timezone": new.timezone,
        "function": new.function,
        "endpoint": new.endpoint,
        "input": new.input,
        "next_tick": new.next_tick,
        "owner": new.owner,
        "options": new.options,
        "expiration": new.expiration,
        "now": now,
    }


class ScheduleStatements:
    """The statements of schedules, in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        r = dialect.render
        table = "{calls}_schedules"
        self.insert = r(
            f"INSERT INTO {table} (name, cron, timezone, function, endpoint, input, "
            "next_tick, owner, created_at, updated_at, options, expiration) VALUES (:name, "
            ":cron, :timezone, :function, :endpoint, :input, :next_tick, :owner, :now, :now, "
            ":options, :expiration)"
        )
        self.update = r(
            f"UPDATE {table} SET cron = :cron, timezone = :timezone, function = :function, "
            "endpoint = :endpoint, input = :input, next_tick = :next_tick, owner = :owner, "
            "options = :options, expiration = :expiration, updated_at = :now "
            "WHERE name = :name"
        )
        self.all = r(f"SELECT {COLUMNS} FROM {table} ORDER BY name")
        self.one = r(f"SELECT {COLUMNS} FROM {table} WHERE name = :name")
        self.set_paused = r(
            f"UPDATE {table} SET paused = :paused, next_tick = coalesce(:next_tick, next_tick), "
            "updated_at = :now "
            "WHERE name = :name"
        )
        self.delete = r(f"DELETE FROM {table} WHERE name = :name")
        lock = " FOR UPDATE SKIP LOCKED" if dialect.name == "postgres" else ""
        self.due = r(
            f"SELECT {COLUMNS} FROM {table} WHERE paused = 0 AND next_tick <= :now "
            f"ORDER BY next_tick LIMIT :limit{lock}"
        )
        # Compare and set: only where the next tick is still the one read.
        self.advance = r(
            f"UPDATE {table} SET next_tick = :next_tick, last_tick = :tick, "
            "last_dispatch_id = :dispatch_id WHERE name = :name AND next_tick = :was "
            "AND paused = 0"
        )
        self.earliest = r(f"SELECT min(next_tick) FROM {table} WHERE paused = 0")


def advance_row(schedule: Schedule, plan: TickPlan, dispatch_id: str) -> dict[str, Any]:
    """The parameters of ``advance``."""
    return {
        "name": schedule.name,
        "was": schedule.next_tick,
        "next_tick": plan.next_tick,
        "tick": plan.tick,
        "dispatch_id": dispatch_id,
    }
