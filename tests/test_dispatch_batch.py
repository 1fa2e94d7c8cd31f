"""A Dispatch of many calls stores each as given, in the order given (PostgreSQL writes
a batch's rows in one statement, one array per column), on every store."""

from __future__ import annotations

from typing import Any

from dispatchlet.scheduler.store import CallPolicy, Store
from dispatchlet.scheduler.store.limits import Limits
from test_store_contract import NOW, call, open_store, with_store

__all__ = ["open_store"]  # the fixture, for pytest


def test_a_batch_of_calls_is_stored_as_given_in_order(open_store: Any) -> None:
    calls = [
        call("plain"),
        call(
            "full",
            input=b"\x00\xff binary",
            version="v2",
            correlation_id=(1 << 64) - 1,  # a uint64 kept in a signed column
            trace_context="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
            limits=Limits(concurrency=3, key="k", per_key=1, rate_count=5, rate_period=2.5),
            policy=CallPolicy(4, 45.0, 2.0, 60.0, 3.0),
            ready_at=NOW + 30,
        ),
        *[call(f"f{n}", input=bytes([n])) for n in range(20)],
    ]

    async def body(store: Store) -> None:
        ids = await store.dispatch(calls, now=NOW)
        stored = [await store.get(dispatch_id) for dispatch_id in ids]
        for given, found in zip(calls, stored, strict=True):
            assert found is not None
            assert (found.function, found.input, found.version) == (
                given.function,
                given.input,
                given.version,
            )
            assert found.correlation_id == given.correlation_id
            assert found.trace_context == given.trace_context
            assert found.policy == given.policy
            assert found.parent_id is None
            assert found.root_id == found.dispatch_id
        full = stored[1]
        assert full is not None
        assert full.ready_at == NOW + 30
        # Claimed oldest first: the batch's own order among calls ready at once.
        ready = [
            dispatch_id for dispatch_id, c in zip(ids, calls, strict=True) if c.ready_at is None
        ]
        claimed = await store.claim(owner="p", now=NOW + 1, limit=30, lease_seconds=30.0)
        assert [c.call.dispatch_id for c in claimed] == ready

    with_store(open_store, body)
