"""The overview's chart of calls finished per minute: one bar per minute of the window,
stacked by final status, laid out here as figures the template draws as an inline SVG
(no script: the pages allow none inline) with a table of the same figures beside it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ...core.status import Status
from ...proto.dispatchlet.scheduler.v1 import calls_pb2

HEIGHT = 100.0
"""The chart's height in SVG units (the page stretches it to its CSS height)."""
SLOT = 10.0
"""Each minute's width in SVG units; its bar leaves a gap of ``SLOT - BAR_WIDTH``."""
BAR_WIDTH = 8.0

# One colour per status, told apart on white and by most colour-blind viewers for the
# common ones (OK, the errors an endpoint returns); OK is stacked at the bottom.
COLOURS = {
    Status.OK: "#1a7f37",
    Status.PERMANENT_ERROR: "#c62828",
    Status.TEMPORARY_ERROR: "#ef8c00",
    Status.TIMEOUT: "#6a1b9a",
    Status.THROTTLED: "#9e7a00",
    Status.INVALID_ARGUMENT: "#d81b60",
    Status.INVALID_RESPONSE: "#f06292",
    Status.INCOMPATIBLE_STATE: "#6d4c41",
    Status.DNS_ERROR: "#0277bd",
    Status.TCP_ERROR: "#4fc3f7",
    Status.TLS_ERROR: "#00897b",
    Status.HTTP_ERROR: "#283593",
    Status.UNAUTHENTICATED: "#546e7a",
    Status.PERMISSION_DENIED: "#263238",
    Status.NOT_FOUND: "#9e9e9e",
    Status.UNSPECIFIED: "#bdbdbd",
}
UNKNOWN_COLOUR = "#000000"


@dataclass(frozen=True)
class Segment:
    """One status's part of a minute's bar, in SVG units (y grows downwards)."""

    status: str
    count: int
    colour: str
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    minute: str
    """The minute's start in UTC, ``HH:MM``."""
    x: float
    total: int
    segments: tuple[Segment, ...]

    @property
    def left(self) -> float:
        """Where the bar starts, centred in its minute's slot."""
        return self.x + (SLOT - BAR_WIDTH) / 2

    @property
    def label(self) -> str:
        """What the bar says to a pointer or a screen reader."""
        if not self.total:
            return f"{self.minute} UTC: none"
        parts = ", ".join(f"{s.count:,} {s.status}" for s in self.segments)
        return f"{self.minute} UTC: {self.total:,} ({parts})"

    def count(self, status: str) -> int:
        return sum(s.count for s in self.segments if s.status == status)


@dataclass(frozen=True)
class Legend:
    status: str
    colour: str
    total: int


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    legend: tuple[Legend, ...]
    """The statuses shown, in the order they are stacked (bottom first)."""
    top: int
    """The calls a minute the chart's top line stands for."""
    total: int

    @property
    def half(self) -> str:
        """The calls a minute the chart's middle line stands for."""
        return f"{self.top // 2:,}" if self.top % 2 == 0 else f"{self.top / 2:,.1f}"

    @property
    def bar_width(self) -> float:
        return BAR_WIDTH

    @property
    def width(self) -> float:
        return len(self.bars) * SLOT

    @property
    def busy(self) -> tuple[Bar, ...]:
        """The minutes with calls, for the table of figures."""
        return tuple(bar for bar in self.bars if bar.total)

    @property
    def ticks(self) -> tuple[str, ...]:
        """The minutes named under the chart: the first, the middle and the last."""
        if not self.bars:
            return ()
        middle = self.bars[len(self.bars) // 2]
        return (self.bars[0].minute, middle.minute, self.bars[-1].minute)


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return str(status)


def _colour(status: int) -> str:
    try:
        return COLOURS.get(Status(status), UNKNOWN_COLOUR)
    except ValueError:
        return UNKNOWN_COLOUR


def _stack_order(status: int) -> tuple[int, int]:
    """OK at the bottom, then the failures in the order of their numbers."""
    return (0 if status == Status.OK else 1, status)


def nice_top(largest: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at least ``largest`` (at least 1)."""
    if largest <= 1:
        return 1
    power = 1
    while power * 10 <= largest:
        power *= 10
    for step in (1, 2, 5):
        if step * power >= largest:
            return step * power
    return 10 * power


def _hh_mm(minute: int) -> str:
    moment = datetime.datetime.fromtimestamp(minute * 60, datetime.timezone.utc)
    return moment.strftime("%H:%M")


def minute_chart(answer: calls_pb2.OverviewResponse) -> Chart:
    """The chart of the Overview ``answer``: a bar for every minute its window covers
    (empty ones too, so that the bars keep time), each stacked by status."""
    now = answer.now.seconds
    first = (now - answer.window.seconds) // 60
    last = now // 60
    counts: dict[int, dict[int, int]] = {}
    for counted in answer.finished:
        minute = counted.minute.seconds // 60
        first, last = min(first, minute), max(last, minute)
        by_status = counts.setdefault(minute, {})
        by_status[counted.status] = by_status.get(counted.status, 0) + counted.count
    statuses = sorted({s for found in counts.values() for s in found}, key=_stack_order)
    top = nice_top(max((sum(found.values()) for found in counts.values()), default=0))
    bars = []
    for slot, minute in enumerate(range(first, last + 1)):
        found = counts.get(minute, {})
        segments = []
        base = HEIGHT
        for status in statuses:
            count = found.get(status, 0)
            if not count:
                continue
            height = count / top * HEIGHT
            base -= height
            segments.append(
                Segment(
                    status_name(status), count, _colour(status), round(base, 3), round(height, 3)
                )
            )
        bars.append(Bar(_hh_mm(minute), slot * SLOT, sum(found.values()), tuple(segments)))
    legend = tuple(
        Legend(
            status_name(status),
            _colour(status),
            sum(found.get(status, 0) for found in counts.values()),
        )
        for status in statuses
    )
    return Chart(tuple(bars), legend, top, sum(item.total for item in legend))
