"""How a claim chooses among claimable calls, the same for every store: a bounded window
of the oldest, dealt in turns across root dispatches (round-robin), within each
destination's cap and this process's room."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def claim_window(limit: int) -> int:
    """How many of the oldest claimable calls of each state a claim of ``limit`` reads:
    a bounded window, so that a claim costs the same whatever the backlog."""
    return max(1024, 16 * limit)


def claim_candidates(limit: int) -> tuple[int, int]:
    """How many candidates a claim of ``limit`` deals among: a few times ``limit`` first;
    then, if destinations at their limit or share left it short (hung ones, whose calls
    stay the oldest), the whole window, so that they do not hide every other
    destination's calls behind theirs."""
    return 4 * limit, claim_window(limit)


def needs_root_heads(ready: int, roots: int, window: int, limit: int) -> bool:
    """Whether a claim must also read the oldest ready call of each root, given how many
    ``ready`` calls and how many ``roots`` its window held: when ready calls fill the
    window (more wait beyond it) and it holds too few roots to deal every turn of the
    claim. Otherwise every root outside the window has its oldest call after the
    window's, so the window alone gives the round-robin order."""
    return ready >= window and roots < 4 * limit


APART_SKIPS = 8
"""How many claims after one whose oldest calls did not decide it read their window at
once, rather than try the oldest first again (a fan-out of one root, limits)."""


def oldest_apart(rows: Sequence[Sequence[Any]]) -> list[tuple[str, str]] | None:
    """The round-robin order of a claim's window, from the oldest :count claimable
    ``(dispatch_id, root_id, destination, ready_at, seq, state, limited)`` rows of each
    state, as ``(dispatch_id, destination)``; when these alone decide its first :count:
    all ready (none lapsed or due, whose own order is not ``ready_at``), none with
    limits, each of another root. Then each is its root's oldest, so first in its turn,
    and every other root's oldest comes after them. None when they do not (the whole
    window is read)."""
    if any(row[5] != "ready" or row[6] for row in rows):
        return None
    if len({row[1] for row in rows}) < len(rows):
        return None
    return [(row[0], row[2]) for row in sorted(rows, key=lambda row: (row[3], row[4]))]


def in_turns(rows: Iterable[Sequence[Any]], count: int) -> list[tuple[str, str]]:
    """Of claimable ``(dispatch_id, root_id, destination, ready_at, seq)`` rows, the first
    ``count`` as ``(dispatch_id, destination)`` in round-robin order: each root's oldest
    call, then each root's second, and so on; oldest first within a turn."""
    unique = {row[0]: row for row in rows}.values()
    turns: dict[str, int] = {}
    ranked = []
    for row in sorted(unique, key=lambda r: (r[3], r[4])):
        turn = turns.get(row[1], 0)
        turns[row[1]] = turn + 1
        ranked.append((turn, row[3], row[4], row[0], row[2]))
    return [(r[3], r[4]) for r in heapq.nsmallest(count, ranked)]


def fitting(
    candidates: Sequence[Sequence[Any]],
    *,
    cap: int | None,
    running: dict[str, int],
    room: Callable[[str], int] | None,
) -> list[str]:
    """Of ``(dispatch_id, destination)`` candidates in order, those this process may
    start now: within ``cap`` leases in force per destination (``running`` counts them,
    every process's), and within the ``room`` its own limiter has per destination. Dealt
    in turns across destinations (each one's first, then each one's second, ...; in
    order within a destination), so that a claim cut short shares its batch among them
    rather than filling it with the destinations that come first."""
    chosen: list[tuple[int, int, str]] = []
    taken: dict[str, int] = {}
    allowance: dict[str, int] = {}
    for dispatch_id, where in candidates:
        if where not in allowance:
            allowed = room(where) if room is not None else len(candidates)
            if cap is not None:
                allowed = min(allowed, cap - running.get(where, 0))
            allowance[where] = allowed
        turn = taken.get(where, 0)
        if turn < allowance[where]:
            taken[where] = turn + 1
            chosen.append((turn, len(chosen), dispatch_id))
    return [dispatch_id for *_, dispatch_id in sorted(chosen)]


def may_find_more(
    candidates: Sequence[Sequence[Any]],
    chosen: Sequence[str],
    destinations: int,
    *,
    cap: int | None,
    running: dict[str, int],
    room: Callable[[str], int] | None,
) -> bool:
    """Whether a claim that ``fitting`` left short with ``chosen`` of its ``(dispatch_id,
    destination)`` candidates may find more among its whole window, which holds calls of
    ``destinations`` destinations: when some of them are not among the candidates (their
    calls hidden behind those of full ones), or one among them has room left (more of
    its calls may follow). Else every destination the window holds is full, and reading
    it again would only deal calls that are left."""
    seen = {where for _, where in candidates}
    if len(seen) < destinations:
        return True
    picked = set(chosen)
    taken = Counter(where for dispatch_id, where in candidates if dispatch_id in picked)
    for where in seen:
        allowed = room(where) if room is not None else len(candidates) + 1
        if cap is not None:
            allowed = min(allowed, cap - running.get(where, 0))
        if taken[where] < allowed:
            return True
    return False
