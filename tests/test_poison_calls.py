"""A poison call never loops: an outcome the store fails to record (an error that is not
the database being away) is counted, and after a few the call ends with that error; a
call whose attempts keep lapsing with no outcome recorded ends after ``max_attempts``;
the database being away for a moment is neither."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.rules import MAX_UNSTORED
from dispatchlet.scheduler.store import Call, Lease, NewCall, StoreError
from dispatchlet.scheduler.store.memory import MemoryStore

ENDPOINT = "http://endpoint.test"
BOUND = 30.0
POISON = b"a value this database cannot hold"


class RefusingStore(MemoryStore):
    """Refuses to record an outcome carrying ``POISON`` (as a database refuses a value
    out of its range), and, when told, to count such failures, or is away once."""

    def __init__(self, *, counting: bool = True, away_once: bool = False) -> None:
        super().__init__()
        self.counting = counting
        self.away_once = away_once

    async def finish(self, lease: Lease, status: int, result: bytes, **options: Any) -> bool:
        if self.away_once:
            self.away_once = False
            raise StoreError("the database is restarting")
        if POISON in result:
            raise ValueError("value out of range for this column")
        return await super().finish(lease, status, result, **options)

    async def count_unstored(self, lease: Lease) -> int | None:
        if not self.counting:
            raise ValueError("value out of range for this column")
        return await super().count_unstored(lease)


class Caller:
    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        self.runs[request.function] = self.runs.get(request.function, 0) + 1
        response = function_pb2.RunResponse(status=Status.OK.value)
        output = POISON if request.function == "poison" else b"fine"
        response.exit.result.output.value = output
        return Outcome(Status.OK, response)

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def running(store: MemoryStore, **options: Any) -> AsyncIterator[Engine]:
    options.setdefault("policy", RetryPolicy(base=0.01, cap=0.02, max_attempts=10))
    engine = Engine(store, Caller(), idle_interval=0.01, **options)
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        engine.stop()
        await asyncio.wait_for(task, BOUND)


async def dispatched(store: MemoryStore, engine: Engine, function: str) -> str:
    now = time.time()
    (dispatch_id,) = await store.dispatch([NewCall(function, ENDPOINT, b"", now + 3600)], now=now)
    engine.wake()
    return dispatch_id


async def done(store: MemoryStore, engine: Engine, dispatch_id: str) -> Call:
    deadline = time.monotonic() + BOUND
    with engine.watching(dispatch_id) as changed:
        while True:
            found = await store.get(dispatch_id)
            assert found is not None
            if found.done:
                return found
            assert time.monotonic() < deadline, f"{dispatch_id} never ended: {found}"
            await changed(0.05)


def error_of(call: Call) -> tuple[str, str]:
    error = call_pb2.CallResult.FromString(call.result).error
    return error.type, error.message


def test_an_outcome_that_cannot_be_stored_ends_its_call_after_a_few_runs() -> None:
    async def scenario() -> tuple[Call, Call, dict[str, int]]:
        store = RefusingStore()
        async with running(store) as engine:
            poison = await dispatched(store, engine, "poison")
            fine = await dispatched(store, engine, "fine")
            return (
                await done(store, engine, poison),
                await done(store, engine, fine),
                (
                    engine.caller.runs  # type: ignore[attr-defined]
                ),
            )

    poison, fine, runs = asyncio.run(scenario())
    assert poison.status == Status.PERMANENT_ERROR
    assert error_of(poison) == (
        "OutcomeNotStored",
        f"its outcome could not be stored {MAX_UNSTORED} times: "
        "ValueError: value out of range for this column",
    )
    assert runs["poison"] == MAX_UNSTORED  # run again each time, then no more
    assert fine.status == Status.OK


def test_a_call_whose_attempts_keep_lapsing_ends_after_max_attempts() -> None:
    """Not even the count of failures can be stored: each lease lapses, and the claim
    after the last attempt ends the call."""

    async def scenario() -> tuple[Call, dict[str, int]]:
        store = RefusingStore(counting=False)
        policy = RetryPolicy(base=0.01, cap=0.02, max_attempts=3)
        async with running(store, policy=policy, attempt_timeout=0.2, lease_margin=0.1) as e:
            poison = await dispatched(store, e, "poison")
            return await done(store, e, poison), e.caller.runs  # type: ignore[attr-defined]

    poison, runs = asyncio.run(scenario())
    assert poison.status == Status.PERMANENT_ERROR
    assert error_of(poison) == (
        "AttemptsLapsed",
        "3 attempts started, at most 3 (--max-attempts): the last ended with no outcome "
        "recorded (its scheduler stopped, or could not store it)",
    )
    assert runs["poison"] == 3


def test_the_database_away_for_a_moment_is_not_a_poison_call() -> None:
    async def scenario() -> Call:
        store = RefusingStore(away_once=True)
        async with running(store) as engine:
            return await done(store, engine, await dispatched(store, engine, "fine"))

    fine = asyncio.run(scenario())
    # Recorded once the database is back, from the same attempt: not run again.
    assert (fine.status, fine.attempts) == (Status.OK, 1)
