"""Concurrency and rate limits, decided the same way by every store when a claim is to
start attempts.

A call may carry limits (``CallOptions``: ``concurrency``, ``concurrency_key`` with
``concurrency_per_key``, ``rate_limit``); they are stored with it. When one of its
attempts is to start, the limits *of that call* apply, counted over every attempt in
flight of its function whose call carries a limit (and, per key, of those with its
``concurrency_key``): calls of one function dispatched from Python carry the same limits
(the decorator's), and a call that carries none (a plain Dispatch client's) neither
waits nor counts. A call over a limit is passed over by the claim: it stays ready, loses
no attempt, and the claim goes on to the calls after it, of other functions or keys.

In flight means leased and the lease in force: a lease that lapsed (its scheduler died)
frees its slot at once, and the call is claimable again within the limit. A suspended
workflow (waiting for its children) holds no slot. Each start of a rate-limited call is
recorded (``{calls}_starts``: its function and time), and a start is allowed while fewer
than ``count`` were recorded within the call's ``period`` before it; a claim deletes the
records older than that.

Across PostgreSQL processes, a claim that has limited candidates takes a transaction
advisory lock per limited function (in the order of their keys, so that two claims
never wait on each other crosswise) before it counts, and holds it until its leases are
committed: the next claim of that function counts them. Chosen over a counter kept by
the transactions that start and finish attempts because a counter cannot see a lease
lapse (it would need a sweeper, and a dead process's slots would stay taken until it
ran) and would add a write to every finish; over a limits row locked ``FOR UPDATE``
because that row has to exist before the first claim (an upsert in every dispatch).
Counting costs one read of a partial index that holds only the running limited calls
(``{calls}_limited_running``). Measured with ``bench/scheduler.py``'s no-op calls on
this 2-core machine (shared, so within about 10%): calls carrying ``concurrency=64``
(never reached) ran at 406 to 449 calls/s against 507 to 511 without (SQLite), and 435
against 499 to 576 with 3 PostgreSQL processes: the lock, the count and the limits read
per claim; with ``concurrency=8`` (always reached) 160 and 176 to 196 calls/s. The
window a claim reads tells of each candidate only whether it has limits (one column);
their limits are read for those that do. A claim without limited candidates takes no
lock and reads nothing more, and an unlimited call is in no index of its own.

A claim reads a bounded window of the oldest claimable calls (``claims``). When held
calls fill it (a backlog of one rate-limited function, of one busy key), the claim reads
it again without the functions and keys it found held (``Held``, up to ``HELD_ROUNDS``
times), so that the calls behind them start: that read passes over the held calls in
the index of ready calls, a cost paid only while such a backlog exists. A held call
starts at the next claim after a slot frees: at once in the process whose attempt
ended, within the engine's idle interval (0.25 s) in the others."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Limits:
    """The limits a call carries (zero: none)."""

    concurrency: int = 0
    """Attempts of the function in flight."""
    key: str = ""
    """The call's concurrency key (empty: none)."""
    per_key: int = 0
    """Attempts of the function in flight with the same key."""
    rate_count: int = 0
    """Attempts of the function started per ``rate_period`` seconds."""
    rate_period: float = 0.0

    @property
    def limited(self) -> bool:
        """Whether the call has any limit (and counts toward its function's)."""
        return self.concurrency > 0 or self.keyed or self.rate_count > 0

    @property
    def keyed(self) -> bool:
        return self.per_key > 0 and bool(self.key)


NO_LIMITS = Limits()

LIMITED = "(concurrency > 0 OR concurrency_per_key > 0 OR rate_count > 0)"
"""The SQL that tells a limited call (as the partial index of running ones says it)."""

LIMIT_COLUMNS = (
    "function, concurrency, concurrency_key, concurrency_per_key, rate_count, rate_period"
)
"""A call's limits as a claim reads them beside its candidates (``limits_from_row``)."""


def limits_from_row(row: Sequence[Any]) -> tuple[str, Limits]:
    """A call's function and limits from its ``LIMIT_COLUMNS``."""
    return row[0], Limits(int(row[1]), row[2], int(row[3]), int(row[4]), float(row[5]))


def limited_ids(rows: Sequence[Sequence[Any]], at: int) -> list[str]:
    """The limited calls among a claim's candidate rows (dispatch id first, whether the
    call has limits at column ``at``): the only ones whose limits the claim reads."""
    return [row[0] for row in rows if row[at]]


def limits_by_id(rows: Sequence[Sequence[Any]]) -> dict[str, tuple[str, Limits]]:
    """The function and limits of each call from its ``(dispatch_id, LIMIT_COLUMNS)``."""
    found = {}
    for row in rows:
        function, lim = limits_from_row(row[1:])
        if lim.limited:
            found[row[0]] = (function, lim)
    return found


@dataclass
class Usage:
    """What the limited functions of a claim's candidates use now, every process's."""

    running: dict[str, int] = field(default_factory=dict)
    """Limited attempts in flight per function."""
    running_by_key: dict[tuple[str, str], int] = field(default_factory=dict)
    """Limited attempts in flight per function and key."""
    started: dict[tuple[str, float], int] = field(default_factory=dict)
    """Starts per function within each period before now (one entry per period asked)."""

    def add_running(self, function: str, key: str, count: int) -> None:
        self.running[function] = self.running.get(function, 0) + count
        if key:
            by_key = (function, key)
            self.running_by_key[by_key] = self.running_by_key.get(by_key, 0) + count


@dataclass
class Admitted:
    """What ``within_limits`` let through, and what it found full."""

    candidates: list[tuple[str, str]]
    full_functions: set[str] = field(default_factory=set)
    """Functions whose calls were held back by their concurrency or rate limit."""
    full_keys: set[tuple[str, str]] = field(default_factory=set)
    """(function, key) whose calls were held back by their limit per key."""


def rate_periods(limits: Mapping[str, tuple[str, Limits]]) -> set[tuple[str, float]]:
    """The (function, period) whose starts a claim must count."""
    return {(f, lim.rate_period) for f, lim in limits.values() if lim.rate_count > 0}


def within_limits(
    candidates: Sequence[tuple[str, str]],
    limits: Mapping[str, tuple[str, Limits]],
    usage: Usage,
) -> Admitted:
    """Of ``(dispatch_id, destination)`` candidates in order, those whose limits (the
    function and limits of each limited one in ``limits``) let them start given
    ``usage``, each one let through counted as started (``usage`` is updated)."""
    admitted = Admitted([])
    for candidate in candidates:
        found = limits.get(candidate[0])
        if found is None:
            admitted.candidates.append(candidate)
            continue
        function, lim = found
        by_key = (function, lim.key)
        if lim.concurrency > 0 and usage.running.get(function, 0) >= lim.concurrency:
            admitted.full_functions.add(function)
            continue
        if lim.rate_count > 0 and usage.started.get((function, lim.rate_period), 0) >= (
            lim.rate_count
        ):
            admitted.full_functions.add(function)
            continue
        if lim.keyed and usage.running_by_key.get(by_key, 0) >= lim.per_key:
            admitted.full_keys.add(by_key)
            continue
        usage.add_running(function, lim.key, 1)
        for window in usage.started:
            if window[0] == function:
                usage.started[window] += 1
        admitted.candidates.append(candidate)
    return admitted


HELD_ROUNDS = 8
"""How many times one claim reads its window again without the functions and keys it
found held back by a limit, when they filled it (each time without more of them)."""


@dataclass
class Held:
    """The functions and keys a claim found held back by their limits (``Admitted``),
    which its next read of the window leaves out."""

    functions: set[str] = field(default_factory=set)
    keys: set[tuple[str, str]] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.functions or self.keys)

    def holds(self, function: str, key: str) -> bool:
        """Whether the calls of ``function`` with ``key`` are held back."""
        return function in self.functions or (function, key) in self.keys

    def add(self, admitted: Admitted) -> bool:
        """Add what ``admitted`` found full; whether any of it is new."""
        new = not (admitted.full_functions <= self.functions and admitted.full_keys <= self.keys)
        self.functions |= admitted.full_functions
        self.keys |= admitted.full_keys
        return new

    def params(self, *, as_json: bool) -> dict[str, Any]:
        """The parameters that name them (``:held_functions``, ``:held_keys``): lists,
        or JSON arrays (SQLite's ``json_each``)."""
        functions = sorted(self.functions)
        keys = sorted(f"{function} {key}" for function, key in self.keys)
        if as_json:
            return {"held_functions": json.dumps(functions), "held_keys": json.dumps(keys)}
        return {"held_functions": functions, "held_keys": keys}


def room_as_read(room: Callable[[str], int] | None) -> Callable[[str], int] | None:
    """``room`` as a claim first read it for each destination. Attempts that end while
    the claim awaits the store free more, and a claim's decisions must agree with one
    another: one its full destination left short, finding room there by its next
    reading, would read its whole window of calls again for nothing."""
    if room is None:
        return None
    read: dict[str, int] = {}

    def first(where: str) -> int:
        if where not in read:
            read[where] = room(where)
        return read[where]

    return first


def room_left(
    room: Callable[[str], int] | None, taken: Counter[str]
) -> Callable[[str], int] | None:
    """``room`` less the calls of each destination a claim took already."""
    if room is None or not taken:
        return room
    return lambda where: room(where) - taken[where]


@dataclass(frozen=True)
class LimitStats:
    """A limited function now (``Store.limit_stats``): the limits its running or lately
    started calls carry (the largest, where they differ; 0: none) and what it uses."""

    function: str
    concurrency: int = 0
    per_key: int = 0
    in_flight: int = 0
    keys_in_flight: int = 0
    rate_count: int = 0
    rate_period: float = 0.0
    started: int = 0
    """Starts within the last ``rate_period``."""


def limit_stats_of(
    running: Sequence[Sequence[Any]], rates: Sequence[Sequence[Any]]
) -> list[LimitStats]:
    """The limited functions from their ``(function, concurrency, per_key, keys in
    flight, in flight)`` rows and their ``(function, rate_count, rate_period, started)``
    rows (the latest start's limit), by name; a function with nothing in flight and no
    start within its period left out."""
    found: dict[str, LimitStats] = {}
    for function, concurrency, per_key, keys, in_flight in running:
        found[function] = LimitStats(
            function, int(concurrency), int(per_key), int(in_flight), int(keys)
        )
    for function, count, period, started in rates:
        if not started:
            continue
        base = found.get(function, LimitStats(function))
        found[function] = replace(
            base, rate_count=int(count), rate_period=float(period), started=int(started)
        )
    return [found[f] for f in sorted(found)]


def limits_text(limits: Limits) -> str:
    """A call's limits in a few words (empty: none)."""
    parts = []
    if limits.concurrency:
        parts.append(f"at most {limits.concurrency} of its function in flight")
    if limits.keyed:
        parts.append(f"at most {limits.per_key} in flight with the key {limits.key!r}")
    if limits.rate_count:
        parts.append(f"at most {limits.rate_count} starts per {limits.rate_period:g} s")
    return "; ".join(parts)


def holding(limits: Limits, stats: LimitStats | None) -> str:
    """Which of a due call's ``limits`` holds it back, given its function's ``stats``
    now (empty: none that they tell; a key's use they do not)."""
    if stats is None:
        return ""
    if limits.concurrency and stats.in_flight >= limits.concurrency:
        return f"its concurrency limit: {stats.in_flight} of {limits.concurrency} in flight"
    if limits.rate_count and stats.started >= limits.rate_count:
        return (
            f"its rate limit: {stats.started} of {limits.rate_count} starts in the last "
            f"{limits.rate_period:g} s"
        )
    return ""


def limit_problem(limits: Limits) -> str | None:
    """Why no call can have ``limits``, or None."""
    period, count, key = limits.rate_period, limits.rate_count, limits.key
    if period < 0:
        return "a negative rate limit period"
    if count == 0 and period > 0:
        return "a rate limit of 0 calls per period: give a count of at least 1"
    if count > 0 and period == 0:
        return f"a rate limit of {count} calls without a period: give a period above 0"
    if period > MAX_RATE_PERIOD:
        return f"a rate limit period beyond {MAX_RATE_PERIOD:.0f} seconds (a day)"
    if len(key) > MAX_CONCURRENCY_KEY_LENGTH:
        return f"a concurrency key longer than {MAX_CONCURRENCY_KEY_LENGTH} characters"
    if not key.isprintable():
        # NUL above all: PostgreSQL's text cannot hold it.
        return f"a concurrency key with a control character: {key[:100]!r}"
    return None


MAX_RATE_PERIOD = 86_400.0
"""The longest rate limit period, in seconds: the starts of one are kept that long."""

MAX_CONCURRENCY_KEY_LENGTH = 256
"""The longest concurrency key, in characters."""
