"""The engine: claims ready calls from the store, runs each on its endpoint, and records
what came of it.

- An attempt sends a RunRequest carrying the call's dispatch id, parent, root, creation
  and expiration time; a retry and a tail call keep all of them, so the dispatch id is
  the user's idempotency key.
- A retryable outcome (``Status.retryable``) is tried again after a capped exponential
  backoff with jitter (or the endpoint's ``Retry-After``, if longer), until the call's
  expiration or ``max_attempts``; then the call is final with its last error. A call
  whose expiration passes ends TIMEOUT.
- A tail call hands the call over to another function (``Store.tail_call``).
- Calls are run at least once: a lease that lapses (this process died) makes the call
  claimable again, and an outcome is recorded only under the current lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import any_pb2, timestamp_pb2

from ..core.status import Status
from ..proto.dispatch.sdk.v1 import call_pb2, error_pb2, function_pb2
from .http_caller import HttpCaller, Outcome
from .retry import RetryPolicy
from .store import Call, Claimed, Lease, Store

logger = logging.getLogger("dispatchlet.scheduler")


@dataclass
class Engine:
    """Runs the store's calls; ``run()`` until ``stop()``."""

    store: Store
    caller: HttpCaller
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 128
    attempt_timeout: float = 300.0
    lease_margin: float = 30.0
    idle_interval: float = 0.25
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=lambda: f"scheduler-{uuid.uuid4().hex[:12]}")
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: set[asyncio.Task[None]] = set()
        self._finished: dict[str, list[asyncio.Future[None]]] = {}

    def wake(self) -> None:
        """Look for ready calls now (new calls were dispatched)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def finished(self, dispatch_id: str, timeout: float) -> None:
        """Return once this process ends the call, or after ``timeout`` seconds."""
        future = asyncio.get_running_loop().create_future()
        self._finished.setdefault(dispatch_id, []).append(future)
        try:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            waiters = self._finished.get(dispatch_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._finished.pop(dispatch_id, None)

    async def run(self) -> None:
        """Claim and run calls until ``stop()``; attempts in flight are finished first."""
        lease_seconds = self.attempt_timeout + self.lease_margin
        while not self._stopping:
            free = self.concurrency - len(self._running)
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await self.store.claim(
                        owner=self.owner,
                        now=self.clock(),
                        limit=free,
                        lease_seconds=lease_seconds,
                    )
                except Exception:
                    logger.exception("claiming calls failed; trying again")
            for item in claimed:
                task = asyncio.create_task(self._attempt(item))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if len(claimed) < free:
                # Nothing more ready: wait for a dispatch, a finished attempt or a timer.
                self._wake.clear()
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_interval)
            elif free <= 0:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
        if self._running:
            await asyncio.wait(self._running)

    async def _attempt(self, item: Claimed) -> None:
        call, lease = item.call, item.lease
        now = self.clock()
        started = time.perf_counter()
        if now >= call.expires_at:
            # Expired while it waited: it ends TIMEOUT with its last error, if it had one.
            outcome = Outcome(
                Status.TIMEOUT, error_type="DeadlineExceeded", message="the call expired"
            )
            try:
                await self._end(lease, Status.TIMEOUT, call.result or _error_result(outcome), now)
            except Exception:
                logger.exception("recording the expiration of %s failed", call.dispatch_id)
            return
        timeout = min(self.attempt_timeout, call.expires_at - now)
        try:
            outcome = await self.caller.run(call.endpoint, run_request(call), timeout=timeout)
        except Exception as exc:  # a bug of ours: the call is retried, not lost
            logger.exception("attempt of %s failed unexpectedly", call.dispatch_id)
            outcome = Outcome(Status.TEMPORARY_ERROR, error_type=type(exc).__name__)
        try:
            await self._record(call, lease, outcome)
        except Exception:
            # The lease lapses and another attempt runs: at least once.
            logger.exception("recording the outcome of %s failed", call.dispatch_id)
        finally:
            logger.info(
                "attempt %d of %s (%s) on %s: %s in %.1f ms",
                call.attempts,
                call.function,
                call.dispatch_id,
                call.endpoint,
                outcome.status.name,
                (time.perf_counter() - started) * 1000,
            )
            self._wake.set()

    async def _record(self, call: Call, lease: Lease, outcome: Outcome) -> None:
        now = self.clock()
        response = outcome.response
        if response is not None:
            directive = response.WhichOneof("directive")
            if directive == "exit" and response.exit.HasField("tail_call"):
                tail = response.exit.tail_call
                await self.store.tail_call(
                    lease,
                    tail.function,
                    tail.endpoint or call.endpoint,
                    tail.input.SerializeToString() if tail.HasField("input") else b"",
                    now=now,
                )
                return
            if directive == "poll":
                outcome = Outcome(
                    Status.PERMANENT_ERROR,
                    error_type="NotImplementedError",
                    message="this scheduler does not resume polls yet",
                )
                result = _error_result(outcome)
            else:
                result = response.exit.result.SerializeToString()
                outcome = Outcome(_status(response.status))
        else:
            result = _error_result(outcome)
        status = outcome.status
        if status.retryable:
            if call.attempts >= self.policy.max_attempts:
                await self._end(lease, status, result, now)
                return
            delay = self.policy.delay(call.attempts, self.rng)
            if outcome.retry_after is not None:
                delay = max(delay, outcome.retry_after)
            ready_at = now + delay
            if ready_at >= call.expires_at:
                # No attempt could start before the call expires.
                await self._end(lease, Status.TIMEOUT, result, now)
                return
            await self.store.retry(lease, status.value, result, ready_at=ready_at, now=now)
            return
        await self._end(lease, status, result, now)

    async def _end(self, lease: Lease, status: Status, result: bytes, now: float) -> None:
        if await self.store.finish(lease, status.value, result, now=now):
            for future in self._finished.pop(lease.dispatch_id, []):
                if not future.done():
                    future.set_result(None)


def _status(value: int) -> Status:
    try:
        return Status(value)
    except ValueError:
        return Status.INVALID_RESPONSE


def _error_result(outcome: Outcome) -> bytes:
    error = error_pb2.Error(type=outcome.error_type, message=outcome.message)
    return call_pb2.CallResult(error=error).SerializeToString()


def run_request(call: Call) -> function_pb2.RunRequest:
    """The RunRequest of an attempt of ``call``."""
    request = function_pb2.RunRequest(
        function=call.function,
        dispatch_id=call.dispatch_id,
        parent_dispatch_id=call.parent_id or "",
        root_dispatch_id=call.root_id,
    )
    if call.input:
        request.input.CopyFrom(any_pb2.Any.FromString(call.input))
    request.creation_time.CopyFrom(_timestamp(call.created_at))
    request.expiration_time.CopyFrom(_timestamp(call.expires_at))
    return request


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    whole = int(seconds)
    stamp.seconds, stamp.nanos = whole, int((seconds - whole) * 1e9)
    return stamp
