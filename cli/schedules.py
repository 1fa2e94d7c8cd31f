"""``dispatchlet schedules``: create, list, pause, resume, delete and sync the scheduler's
cron schedules."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from typing import Any

from ..client import Client, ScheduleInfo, SyncResult
from ..core.endpoint import ENDPOINT_URL_ENV
from ..core.values import EncodeError
from .call import parse_input, seconds
from .call_views import backoff_dict, moment, rate_limit_dict, seconds_or_none
from .dispatch import (
    add_backoff_arguments,
    add_limit_arguments,
    attempt_timeout,
    attempts,
    backoff_of,
    checked,
    client,
)
from .errors import EXIT_OK, CommandError
from .local_server import DEFAULT_ENDPOINT_URL, load_app

_SCHEDULES = f"""\
Cron schedules: the scheduler dispatches a call of FUNCTION at each tick, once, with the
idempotency key schedule:NAME:TICK (TICK the tick's UTC time), however many scheduler
processes share its database. Ticks missed while no scheduler ran are caught up once
(the latest of them); a paused schedule's ticks are skipped.

  create NAME CRON FUNCTION [INPUT]  a schedule; CRON has 5 fields (minute hour
          day-of-month month day-of-week), or 6 with seconds last ("*/10 * * * * *"),
          read in --timezone (an IANA name, default UTC). INPUT as for `dispatchlet
          call`. The endpoint is --endpoint, else {ENDPOINT_URL_ENV}, else
          {DEFAULT_ENDPOINT_URL}. Each tick's call takes --max-attempts N,
          --timeout DURATION (per attempt), --backoff DURATION (--backoff-cap
          DURATION), --expiration SECONDS, --concurrency N and --rate-limit
          COUNT/PERIOD, as `dispatchlet dispatch` does.
  list    one line per schedule: name, cron, time zone, function, paused, next tick,
          last tick, and the endpoint it was synced for (- when created by hand);
          --json for programs.
  pause NAME / resume NAME / delete NAME
  sync APP  push the schedules APP declares (@endpoint.function(schedule="0 9 * * *"),
          each named after its function, in UTC unless the expression starts with its
          zone, "CRON_TZ=Europe/Paris 0 9 * * *") for its endpoint URL (--endpoint,
          else its endpoint_url, else {DEFAULT_ENDPOINT_URL}): creates those missing,
          updates those changed, deletes those an earlier sync for that URL created
          and APP no longer declares. Schedules created by hand or synced for another
          URL are never changed: a declared name one of them holds is an error.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "schedules",
        help="create, list, pause, resume, delete or sync cron schedules",
        description=_SCHEDULES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a schedule: a call of FUNCTION at each tick")
    create.add_argument("name", metavar="NAME")
    create.add_argument("cron", metavar="CRON")
    create.add_argument("function", metavar="FUNCTION")
    create.add_argument("input", metavar="INPUT", nargs="?")
    create.add_argument("--string", action="store_true", help="send INPUT as a string")
    create.add_argument("--endpoint", metavar="URL", help="the endpoint's base URL")
    create.add_argument(
        "--timezone", default="UTC", metavar="ZONE", help="IANA time zone (default UTC)"
    )
    create.add_argument(
        "--max-attempts",
        type=attempts,
        metavar="N",
        help="each tick's call: at most N attempts, the first included",
    )
    create.add_argument(
        "--timeout",
        type=attempt_timeout,
        metavar="DURATION",
        help="each tick's call: how long one attempt may run (10, 30s, 5m)",
    )
    create.add_argument(
        "--expiration",
        type=seconds,
        metavar="SECONDS",
        help="each tick's call: give up on it after this",
    )
    add_backoff_arguments(create)
    add_limit_arguments(create, per_key=False)
    create.set_defaults(handler=run_create)
    listing = actions.add_parser("list", help="every schedule, with its next and last tick")
    listing.add_argument("--json", dest="use_json", action="store_true")
    listing.set_defaults(handler=run_list)
    for name, help_text in (
        ("pause", "stop a schedule's ticks until it is resumed"),
        ("resume", "tick again from the next tick (those of the pause are skipped)"),
        ("delete", "delete a schedule (its calls are kept)"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("name", metavar="NAME")
        action.set_defaults(handler=run_action)
    sync = actions.add_parser("sync", help="push the schedules an app declares in code")
    sync.add_argument("app", metavar="APP")
    sync.add_argument("--endpoint", metavar="URL", help="the endpoint URL they are synced for")
    sync.set_defaults(handler=run_sync)


def run_create(args: argparse.Namespace) -> int:
    check_schedule(args.name, args.cron, args.timezone)
    backoff = backoff_of(args)
    endpoint = args.endpoint or os.environ.get(ENDPOINT_URL_ENV) or DEFAULT_ENDPOINT_URL
    value = None
    if args.input is not None:
        value = args.input if args.string else parse_input(args.input)
    with client() as scheduler:
        try:
            created = checked(
                lambda: scheduler.create_schedule(
                    args.name,
                    args.cron,
                    args.function,
                    value,
                    endpoint=endpoint,
                    timezone=args.timezone,
                    max_attempts=args.max_attempts,
                    timeout=args.timeout,
                    backoff=backoff,
                    expiration=args.expiration,
                    concurrency=args.concurrency,
                    rate_limit=args.rate_limit,
                )
            )
        except EncodeError as exc:
            raise CommandError(f"cannot send INPUT: {exc}") from None
    print(f"created {created.name}: next tick {_when(created)}")
    return EXIT_OK


def check_schedule(name: str, cron: str, timezone: str) -> None:
    """Refuse a bad name, cron expression or time zone before the scheduler is asked
    (which checks them too): in the words of its answer."""
    from ..scheduler.cron import Cron, InvalidSchedule, name_problem

    problem = name_problem(name)
    if problem is None:
        try:
            Cron(cron, timezone).next_after(0.0)
        except InvalidSchedule as exc:
            problem = f"schedule {name!r}: {exc}"
    if problem is not None:
        raise CommandError(f"invalid_argument: {problem}")


def run_list(args: argparse.Namespace) -> int:
    with client() as scheduler:
        found = checked(scheduler.list_schedules)
    if args.use_json:
        for each in found:
            print(json.dumps(schedule_dict(each), ensure_ascii=False))
    elif found:
        print("\n".join(schedule_table(found)))
    return EXIT_OK


def run_action(args: argparse.Namespace) -> int:
    with client() as scheduler:
        if args.action == "pause":
            paused = checked(lambda: scheduler.pause_schedule(args.name))
            print(f"paused {paused.name}")
        elif args.action == "resume":
            resumed = checked(lambda: scheduler.resume_schedule(args.name))
            print(f"resumed {resumed.name}: next tick {_when(resumed)}")
        else:
            checked(lambda: scheduler.delete_schedule(args.name))
            print(f"deleted {args.name}")
    return EXIT_OK


def run_sync(args: argparse.Namespace) -> int:
    endpoint = load_app(args.app)
    url = args.endpoint or endpoint.endpoint_url or DEFAULT_ENDPOINT_URL
    with client() as scheduler:
        synced = sync(scheduler, endpoint, url)
    print(sync_line(synced, url))
    return EXIT_OK


def sync(scheduler: Client, endpoint: Any, url: str) -> SyncResult:
    """Push ``endpoint``'s declared schedules for ``url``; a refusal is the command's
    error."""
    try:
        return checked(lambda: scheduler.sync_schedules(endpoint, endpoint_url=url))
    except EncodeError as exc:
        raise CommandError(f"cannot sync the schedules: {exc}") from None


def sync_line(synced: SyncResult, url: str) -> str:
    """One line telling what a sync did."""
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (
            ("created", synced.created),
            ("updated", synced.updated),
            ("deleted", synced.deleted),
            ("unchanged", synced.unchanged),
        )
        if names
    ]
    return f"schedules for {url}: {'; '.join(parts) or 'none declared, none left'}"


def _when(info: ScheduleInfo) -> str:
    if info.paused:
        return "none (paused)"
    return moment(info.next_tick) if info.next_tick is not None else "-"


_HEADER = ("NAME", "CRON", "TIMEZONE", "FUNCTION", "STATE", "NEXT TICK", "LAST TICK", "SYNCED FOR")


def schedule_table(schedules: Iterable[ScheduleInfo]) -> list[str]:
    """A header and one row per schedule."""
    rows = [
        (
            s.name,
            s.cron,
            s.timezone,
            s.function,
            "paused" if s.paused else "active",
            "-" if s.paused or s.next_tick is None else moment(s.next_tick),
            moment(s.last_tick) if s.last_tick is not None else "-",
            s.synced_for or "-",
        )
        for s in schedules
    ]
    widths = [max(len(row[i]) for row in [_HEADER, *rows]) for i in range(len(_HEADER))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [_HEADER, *rows]
    ]


def schedule_dict(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule as JSON."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    shown = info.input
    try:
        json.dumps(shown)
    except (TypeError, ValueError):
        shown = repr(shown)
    return {
        "name": info.name,
        "cron": info.cron,
        "timezone": info.timezone,
        "function": info.function,
        "endpoint": info.endpoint,
        "input": shown,
        "paused": info.paused,
        "next_tick": None if info.paused else iso(info.next_tick),
        "last_tick": iso(info.last_tick),
        "last_dispatch_id": info.last_dispatch_id,
        "synced_for": info.synced_for,
        "max_attempts": info.max_attempts,
        "timeout": seconds_or_none(info.timeout),
        "backoff": backoff_dict(info.backoff),
        "expiration": seconds_or_none(info.expiration),
        "concurrency": info.concurrency,
        "rate_limit": rate_limit_dict(info.rate_limit),
    }


__all__ = ["add_parser", "sync", "sync_line"]
