"""Cron schedules' ticks: when a schedule's calls are due, in its time zone.

Expressions are croniter's: five fields (minute, hour, day of month, month, day of
week), or six with a sixth for seconds (``* * * * * */10``: every ten seconds), and
its aliases (``@daily``, ``@hourly``, ...). Ticks are computed in the schedule's time
zone (an IANA name, ``zoneinfo``) and stored as seconds since the epoch, so that
"09:00 in Europe/Paris" stays 09:00 there across changes of daylight saving time. A
wall time that a change skips (02:30 on the night clocks go forward) ticks at the
change (03:00, as croniter has it); one that a change repeats (02:30 on the night they
go back) ticks once, at its first occurrence.

Catch-up: when a schedule's next tick is found past (no scheduler ran then, or it
was paused), the ticks missed are not each dispatched; the latest of them is, once
(``due``), and the schedule moves on to its first tick after now.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from dataclasses import dataclass

from croniter import croniter

from ..core.errors import InvalidArgument

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
"""A schedule's name: it is part of its calls' idempotency keys (``tick_key``)."""
NAME_RULE = "1 to 100 letters, digits, '_', '.' or '-', starting with a letter or digit"
MAX_CRON_LENGTH = 200
SEARCH = 4000
"""Ticks of croniter's looked through for one that exists in the time zone: in the hour
a change of offset repeats, the wall times already passed (up to 3,600 of a schedule in
seconds) are stepped over."""


class InvalidSchedule(InvalidArgument):
    """A schedule's name, cron expression or time zone that cannot be used."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a schedule, or None."""
    if NAME.fullmatch(name):
        return None
    return f"invalid schedule name {name[:120]!r}: {NAME_RULE}"


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The time zone ``name`` (an IANA name such as ``Europe/Paris``, or ``UTC``)."""
    try:
        # Only names: a path ('../x') is not looked up as a file.
        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(
            f"unknown time zone {name[:100]!r}: expected an IANA name such as UTC, "
            "Europe/Paris or America/New_York"
        ) from None


_RANDOM = re.compile(r"(?:^|[\s,])[RrHh](?:$|[\s,/(])")


def check_cron(expression: str) -> str:
    """``expression`` stripped, or ``InvalidSchedule`` saying why croniter refuses it."""
    text = " ".join(expression.split())
    fields = len(text.split(" "))
    if not text or len(text) > MAX_CRON_LENGTH or not text.isprintable():
        raise InvalidSchedule(f"invalid cron expression {expression[:100]!r}")
    if not text.startswith("@") and fields not in (5, 6):
        raise InvalidSchedule(
            f"invalid cron expression {text!r}: expected 5 fields (minute hour day month "
            "weekday), or 6 with seconds last"
        )
    if _RANDOM.search(text):
        # croniter's R (random) and H (hashed) pick a value anew each time the expression
        # is read: the next tick would move between processes and restarts.
        raise InvalidSchedule(
            f"invalid cron expression {text!r}: R and H (random and hashed values) are not "
            "supported; give the minute, hour, ... explicitly"
        )
    try:
        valid = croniter.is_valid(text)
    except Exception:  # croniter raises a few kinds on odd input
        valid = False
    if not valid:
        raise InvalidSchedule(
            f"invalid cron expression {text!r}: expected 5 fields (minute hour day month "
            "weekday), or 6 with seconds last, e.g. '0 9 * * *' or '*/5 * * * *'"
        )
    return text


@dataclass(frozen=True)
class Cron:
    """A cron expression in a time zone."""

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        object.__setattr__(self, "expression", check_cron(self.expression))
        zone(self.timezone)

    def next_after(self, after: float) -> float:
        """The first tick strictly after ``after`` (seconds since the epoch)."""
        return self._search(after, forward=True)

    def _search(self, moment: float, *, forward: bool) -> float:
        """The first tick after ``moment`` (before it, unless ``forward``) that is a
        wall time of the time zone at its first occurrence."""
        tz = zone(self.timezone)
        never = InvalidSchedule(f"the cron expression {self.expression!r} never ticks")
        try:
            ticks = croniter(self.expression, datetime.datetime.fromtimestamp(moment, tz))
            for _ in range(SEARCH):
                found: datetime.datetime = (
                    ticks.get_next(datetime.datetime)
                    if forward
                    else ticks.get_prev(datetime.datetime)
                )
                beyond = found.timestamp() > moment if forward else found.timestamp() < moment
                if beyond and _real(found, tz):
                    return found.timestamp()
                # A wall time skipped or repeated that night (or one already passed, in
                # the hour a change repeats): the next one.
        except Exception:  # a date that never comes (February 30th): croniter gives up
            raise never from None
        raise never

    def due(self, next_tick: float, now: float) -> tuple[float, float] | None:
        """When a schedule whose next tick is ``next_tick`` is due at ``now``: the tick
        to dispatch (the latest that is due: missed ticks are caught up once) and the
        next tick after it; None when it is not due yet."""
        if next_tick > now:
            return None
        following = self.next_after(now)
        latest = next_tick
        # The latest tick at or before now: step on from the stored one, a few at most
        # (the schedule is on time); after a long stop, found from now backwards.
        for _ in range(8):
            after = self.next_after(latest)
            if after > now:
                return latest, following
            latest = after
        return max(latest, self._latest_before(following)), following

    def _latest_before(self, before: float) -> float:
        """The latest tick strictly before ``before``."""
        return self._search(before, forward=False)


def _real(found: datetime.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    """Whether croniter's ``found`` is a wall time that exists in ``tz``, at its first
    occurrence: not a time a change of offset skips, nor the repeat of one it repeats."""
    wall = found.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0)
    round_trip = first.astimezone(datetime.timezone.utc).astimezone(tz).replace(tzinfo=None)
    if round_trip != wall:
        return False  # skipped: no such time that day
    return abs(first.timestamp() - found.timestamp()) < 1


def iso_tick(tick: float) -> str:
    """A tick as an ISO 8601 UTC time: ``2026-12-05T09:00:00Z``."""
    moment = datetime.datetime.fromtimestamp(round(tick), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of schedule ``name``'s call of ``tick``."""
    return f"schedule:{name}:{iso_tick(tick)}"
