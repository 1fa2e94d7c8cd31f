"""A schedule declared in code (``@endpoint.function(schedule=...)``): a cron
expression, which may start with the time zone it is read in, as cronie and many
schedulers write it: ``CRON_TZ=Europe/Paris 0 9 * * *`` (``TZ=`` alike). Without one it
is read in UTC.

Read as plain text: an endpoint's cold start imports neither the cron parser nor the
zone database. The scheduler checks the expression and the zone when the schedule is
synced (``dispatchlet schedules sync``), and refuses an unknown zone there."""

from __future__ import annotations

from dataclasses import dataclass

ZONE_PREFIXES = ("CRON_TZ=", "TZ=")
DEFAULT_TIMEZONE = "UTC"


@dataclass(frozen=True)
class DeclaredSchedule:
    """A declared schedule's cron expression and the time zone it is read in."""

    cron: str
    timezone: str = DEFAULT_TIMEZONE


def read_schedule(text: object) -> DeclaredSchedule:
    """``text`` (a ``schedule=``) split into its expression and time zone: a
    ``TypeError`` for anything but a non-blank str, a ``ValueError`` for a zone prefix
    without a zone or without an expression after it."""
    if not (isinstance(text, str) and text.strip()):
        raise TypeError(f"schedule must be a cron expression (a str), got {text!r}")
    first, _, rest = text.strip().partition(" ")
    prefix = next((p for p in ZONE_PREFIXES if first.startswith(p)), None)
    if prefix is None:
        return DeclaredSchedule(text.strip())
    zone = first[len(prefix) :]
    if not zone:
        raise ValueError(
            f"schedule {text[:120]!r}: no time zone after {prefix} "
            "(write e.g. 'CRON_TZ=Europe/Paris 0 9 * * *')"
        )
    if not rest.strip():
        raise ValueError(
            f"schedule {text[:120]!r}: no cron expression after {first[:100]} "
            "(write e.g. 'CRON_TZ=Europe/Paris 0 9 * * *')"
        )
    return DeclaredSchedule(rest.strip(), zone)
