"""What the scheduler tells of its work at ``/metrics``: a snapshot of one process's
engine (``stats``), and its Prometheus text exposition."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .concurrency import Limiter


class Running(Protocol):
    """What ``stats`` reads of an engine."""

    attempts: dict[str, int]
    limiter: Limiter

    @property
    def in_flight(self) -> int: ...


@dataclass(frozen=True)
class Stats:
    attempts: Mapping[str, int]
    """Attempts made by this process, by outcome status name."""
    in_flight: int
    """Attempts running now."""
    limits: Mapping[str, int]
    """Attempts allowed at once, by destination."""


def stats(engine: Running) -> Stats:
    """A snapshot of ``engine``'s counters and limits."""
    return Stats(
        attempts=dict(engine.attempts),
        in_flight=engine.in_flight,
        limits={key: int(window.limit) for key, window in engine.limiter.windows.items()},
    )


def prometheus_text(snapshot: Stats) -> str:
    """``snapshot`` in the Prometheus text exposition format: attempts by outcome,
    attempts in flight, and each destination's current concurrency limit."""
    lines = [
        "# HELP dispatchlet_attempts_total Attempts made, by outcome status.",
        "# TYPE dispatchlet_attempts_total counter",
    ]
    lines += [
        f'dispatchlet_attempts_total{{status="{name}"}} {count}'
        for name, count in sorted(snapshot.attempts.items())
    ]
    lines += [
        "# HELP dispatchlet_attempts_in_flight Attempts running now.",
        "# TYPE dispatchlet_attempts_in_flight gauge",
        f"dispatchlet_attempts_in_flight {snapshot.in_flight}",
        "# HELP dispatchlet_destination_limit Attempts allowed at once, by destination.",
        "# TYPE dispatchlet_destination_limit gauge",
    ]
    for key, limit in sorted(snapshot.limits.items()):
        label = key.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'dispatchlet_destination_limit{{destination="{label}"}} {limit}')
    return "\n".join(lines) + "\n"
