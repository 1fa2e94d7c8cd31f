"""The overview page's content: sections of named figures, made by a function of the
API (``Overview``), so that richer figures plug in as another such function."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..metrics import stats
from ..store import COUNT_CAP, State

if TYPE_CHECKING:
    from ..api import Api

Sections = dict[str, dict[str, str]]
"""Section title -> figure name -> figure, in order."""
Overview = Callable[["Api"], Awaitable[Sections]]


def _count(count: int) -> str:
    return f"{count:,}+" if count >= COUNT_CAP else f"{count:,}"


async def queue_overview(api: Api) -> Sections:
    """The queue by state (every process of the store), and this process's attempts by
    outcome and its concurrency limit per destination."""
    counts = await api.store.count_by_state()
    snapshot = stats(api.engine)
    return {
        "Calls by state": {state.value: _count(counts.get(state, 0)) for state in State},
        "Attempts made by this process, by outcome": {
            name: f"{count:,}" for name, count in sorted(snapshot.attempts.items())
        }
        | {"in flight now": f"{snapshot.in_flight:,}"},
        "Concurrency limit by destination (this process)": {
            key: f"{limit:,}" for key, limit in sorted(snapshot.limits.items())
        },
    }
