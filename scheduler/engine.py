"""The engine: claims ready calls from the store, runs each on its endpoint, and records
what came of it. What to record is decided by ``rules`` (pure functions); the engine
claims, calls, applies each decision with one store call, and logs.

- An attempt sends a RunRequest carrying the call's dispatch id, parent, root, creation
  and expiration time; a retry and a tail call keep all of them, so the dispatch id is
  the user's idempotency key.
- A retryable outcome (``Status.retryable``) is tried again after a capped exponential
  backoff with jitter (or the endpoint's ``Retry-After``, if longer), until the call's
  expiration or ``max_attempts``; then the call is final with its last error. A call
  whose expiration passes ends TIMEOUT.
- A tail call hands the call over to another function (``Store.tail_call``).
- A Poll suspends the call: its calls are dispatched as its children, and it is resumed
  with a PollResult (its state, and its children's results with their correlation ids)
  once ``min_results`` are ready or ``max_wait`` has passed (no ``max_wait``: no deadline
  but the call's expiration), at most ``max_results`` at a time. INCOMPATIBLE_STATE in
  answer to a resume runs the call again from its input, at most ``max_restarts``
  times, unless the error is a ``StepMismatch`` (a workflow whose steps changed order,
  which starting over would repeat): that is final. When a call ends, its unfinished
  children are cancelled.
- Calls are run at least once: a lease that lapses (this process died) makes the call
  claimable again, and an outcome is recorded only under the current lease; but not
  forever: claims beyond ``max_attempts`` end the call, and so does an outcome that the
  store fails to record ``MAX_UNSTORED`` times (an error that is not an outage).
- Call trees are bounded: a Poll that would leave a call more than ``max_children``
  unfinished children, or put more than ``max_descendants`` calls below its root, ends
  the call with an error naming the bound. The unfinished descendants of a call that
  ended are ended by the store in batches (the first with it, the others by a task of
  this engine's), so that a large tree never holds the store for long.
- Every time the engine gives the store comes from its ``clock`` (``clock.py``): the
  wall clock's jumps do not move it, and on PostgreSQL it is the database's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from google.protobuf import any_pb2

from ..core import tracing
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import function_pb2, poll_pb2
from .callers import Caller
from .calls import (
    ENDPOINT_SCHEMES,
    MAX_POLL_CALLS,
    MAX_POLL_RESULTS,
    call_problem,
    oversized_input,
    timestamp,
)
from .clock import Clock, SteadyClock
from .concurrency import Limiter, destination
from .lambda_caller import missing_support
from .metrics import Metrics
from .outcome import Outcome, settled
from .retry import MAX_RESTARTS, RetryPolicy
from .rules import (
    ORPHANS,
    Decision,
    Finish,
    Limits,
    Retry,
    Suspend,
    TailCall,
    after_attempt,
    before_attempt,
    beyond_bounds,
    cut_short,
    error_result,
    limits_for,
    not_stored,
)
from .settings import (
    DEFAULT_ATTEMPT_HISTORY,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_MAX_CHILDREN,
    DEFAULT_MAX_DESCENDANTS,
    DEFAULT_MAX_INPUT_SIZE,
    DEFAULT_MAX_OUTPUT_SIZE,
)
from .store import (
    Call,
    ChildResult,
    Claimed,
    Handoff,
    Lease,
    NewAttempt,
    NewCall,
    Store,
    TreeBounds,
    TreeLimitExceeded,
    handable,
    unavailable,
)

logger = logging.getLogger("dispatchlet.scheduler")

FOLLOW_INTERVAL = 0.5
FOLLOW_INTERVAL_MAX = 30.0
"""How often, in seconds, a call that follows another (``Call.follows``) looks whether
that one is done: at first, and at most, as it waits longer. The end of the call it
follows, seen by this process (its own, or another's told by ``Store.watch``), brings
the next look forward to then."""

LOOKS_PER_TURN = 64
"""The most followers the claim loop makes claimable in one turn (``_look_again``)."""

ENDING_INTERVAL = 1.0
"""How often, in seconds, the engine looks for descendants left to end that it was not
told of (left by another process, or by one that stopped)."""


@dataclass
class Engine:
    """Runs the store's calls; ``run()`` until ``stop()``."""

    store: Store
    caller: Caller
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 128
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    lease_margin: float = 30.0
    idle_interval: float = 0.25
    max_restarts: int = MAX_RESTARTS
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE
    """The largest input a Poll's call or a tail call may have, in bytes."""
    max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE
    """The largest output (or error, or Poll state) a call may store, in bytes."""
    unsupported: Callable[[str], str | None] = missing_support
    """Why this process cannot call an endpoint (an ARN without boto3), or None."""
    max_children: int | None = DEFAULT_MAX_CHILDREN
    """The most unfinished children a call may have (None: no bound)."""
    max_descendants: int | None = DEFAULT_MAX_DESCENDANTS
    """The most calls below a root (None: no bound)."""
    limiter: Limiter = field(default_factory=Limiter)
    clock: Clock = field(default_factory=SteadyClock)
    """The time leases, readiness and expiry are decided by (``clock.py``): the wall
    clock's jumps do not move it."""
    owner: str = field(default_factory=lambda: f"scheduler-{uuid.uuid4().hex[:12]}")
    attempt_history: int = DEFAULT_ATTEMPT_HISTORY
    """How many of each call's latest attempts its history keeps (0: none recorded)."""
    rng: random.Random = field(default_factory=random.Random)
    metrics: Metrics = field(default_factory=Metrics)
    """This engine's metrics (``/metrics``); its store's operations are timed into them."""

    def __post_init__(self) -> None:
        self.metrics.watch(self)
        self.store = self.metrics.timed(self.store)
        self._wake = asyncio.Event()
        self._due = float("inf")  # the earliest retry this process scheduled
        self._stopping = False
        self._running: set[asyncio.Task[None]] = set()
        self._watchers: dict[str, list[Watch]] = {}
        # Watchers of calls that are not their tree's root, by root: a call that ends
        # may end its unfinished descendants too.
        self._tree_watchers: dict[str, list[Watch]] = {}
        self._roots: dict[str, str] = {}  # the root of each call this process runs
        self.reread: float | None = None
        """How often a waiter reads its call again anyway (``Store.watch``)."""
        self._ending = asyncio.Event()  # descendants were left to end
        self._held_back = False  # the last claim left calls that a limit held back
        self._claiming = False  # ``run()`` is on: a Dispatch may hand it calls
        self._context = contextvars.copy_context()  # run()'s: its attempts run in it
        # Slots, per destination, that Dispatches in flight hold for the calls they
        # may hand over (``handoff``): the claim loop leaves them.
        self._reserved: Counter[str] = Counter()
        self._holds: dict[int, Counter[str]] = {}  # each handoff's, by its id()
        # The followers this process handed back to look again later, by the call they
        # follow; and those whose look an end brought forward, for the claim loop.
        self._followers: dict[str, set[str]] = {}
        self._looks_due: set[str] = set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def wake(self) -> None:
        """Look for ready calls now (new calls were dispatched)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._ending.set()

    def end_descendants_soon(self) -> None:
        """End the descendants that an ended call left (a cancel) now, in batches."""
        self._ending.set()

    async def _end_descendants(self) -> None:
        """End, one batch a transaction, the unfinished descendants that ended calls
        left, until none is left; then look again when told to, or now and then."""
        while not self._stopping:
            # Cleared before the store is read, not after: a stop or a cancel told
            # meanwhile is not lost (it would wait out the interval).
            self._ending.clear()
            try:
                done = await self.store.end_descendants(now=self.clock())
            except Exception:
                logger.exception("ending the descendants of ended calls failed; trying again")
                done = 0
            if done:
                # Which trees they were in is not told: every waiter of a call that is
                # not a root looks again.
                self.changed(None, ALL_TREES)
                await asyncio.sleep(0)  # what waits for the store goes between batches
                continue
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._ending.wait(), ENDING_INTERVAL)

    @contextlib.contextmanager
    def watching(self, *dispatch_ids: str) -> Iterator[Watch]:
        """Within the block, ``await until(timeout)`` returns once one of the calls
        ended or a retry of it was recorded (by this process, or by another one on a
        store shared by several: ``Store.watch``) since the block began or since the
        last ``until`` returned, or after ``timeout`` seconds. Watching starts before the
        caller reads the store, so that a change in between is not missed;
        ``until.within(dispatch_id, root_id)`` once the caller knows a call's root, so
        that the end of an ancestor, which ends the call too, wakes it."""
        until = Watch(dispatch_ids, self._tree_watchers)
        for dispatch_id in until.dispatch_ids:
            _add(self._watchers, dispatch_id, until)
        try:
            yield until
        finally:
            for dispatch_id in until.dispatch_ids:
                _remove(self._watchers, dispatch_id, until)
            for root in until.roots:
                _remove(self._tree_watchers, root, until)

    def changed(self, dispatch_id: str | None, root_id: str | None = None) -> None:
        """Wake whoever watches the call: it ended, or will be retried; and with
        ``root_id``, whoever watches a call of that tree (descendants of it may have
        ended; ``ALL_TREES``: of any tree). Both None: any call may have changed."""
        # Each told which call changed, or (None) that any of its calls may have.
        woken: list[tuple[list[Watch], str | None]] = []
        if dispatch_id is None and root_id is None:
            woken = [(watches, None) for watches in self._watchers.values()]
        if dispatch_id is not None:
            woken.append((self._watchers.get(dispatch_id, []), dispatch_id))
        if root_id == ALL_TREES:
            woken.extend((watches, None) for watches in self._tree_watchers.values())
        elif root_id is not None:
            woken.append((self._tree_watchers.get(root_id, []), None))
        for watches, which in woken:
            for watch in watches:
                watch.touch(which)
        if self._followers:
            if dispatch_id is None and root_id is None:
                looks = [self._followers.pop(followed) for followed in list(self._followers)]
            else:
                looks = [self._followers.pop(dispatch_id, set())] if dispatch_id else []
            for followers in looks:
                self._looks_due |= followers
            if self._looks_due:
                self._wake.set()

    def _changed(self, dispatch_id: str) -> None:
        """This process ended the call or recorded a retry of it."""
        self.changed(dispatch_id, self._roots.get(dispatch_id))

    async def run(self) -> None:
        """Claim and run calls until ``stop()``; attempts in flight are finished first."""
        lease_seconds = self.attempt_timeout + self.lease_margin
        self.store.subscribe(self.wake)
        self.reread = self.store.watch(self.changed)
        ender = asyncio.create_task(self._end_descendants())
        self._claiming = True
        self._context = contextvars.copy_context()
        while not self._stopping:
            free = self._free()
            asked = 0
            claimed: list[Claimed] = []
            looked: float | None = None  # the time of the claim, once it answered
            # Cleared before the claim, not after: a Dispatch that commits while the
            # claim is in flight (and that it may not see) wakes the next wait.
            self._wake.clear()
            if self._looks_due:
                await self._look_again()
            if free > 0:
                # No more than this process's limits let it start now: the store reads
                # and deals no calls that would only be left.
                asked = min(free, self.limiter.startable(self.concurrency))
                room = _Rooms(self._unreserved(self.limiter.rooms(self.concurrency)))
                now = self.clock()
                try:
                    claimed = await self.store.claim(
                        owner=self.owner,
                        now=now,
                        limit=asked,
                        lease_seconds=lease_seconds,
                        # The hard cap holds across every process on the store.
                        cap=None if self.limiter.cap is None else int(self.limiter.cap),
                        # Only what this process's limits let it start now: each
                        # destination within its window and its share of the pool.
                        room=room,
                    )
                    looked = now
                except Exception:
                    logger.exception("claiming calls failed; trying again")
                # Whether a limit left calls waiting: then an attempt that ends frees
                # room for them, and wakes this loop.
                self._held_back = self.limiter.cap is not None or room.filled(claimed)
            for item in claimed:
                self._start(item)
            if free <= 0 and self._running:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            elif len(claimed) < asked or free <= 0:
                # Nothing more ready (or every slot held for Dispatches in flight): until
                # a dispatch or a finished attempt, a call of ours falls due, or the idle
                # interval (what other processes' timers wait on) passes.
                if looked is not None and self._due <= looked:
                    self._due = float("inf")  # the calls due by then, that claim saw
                pause = max(0.0, min(self.idle_interval, self._due - self.clock()))
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
            else:
                # As many as asked for: more may be ready. The attempts just started
                # take their slots of the limiter first, so that the next claim asks
                # for what is left.
                await asyncio.sleep(0)
        self._claiming = False
        while self._running:  # with those a Dispatch in flight hands over meanwhile
            await asyncio.wait(set(self._running))
        await ender

    def _start(self, item: Claimed) -> None:
        """Run an attempt of the leased call ``item`` in a task of its own."""
        # In the claim loop's context, not that of the request that handed it over.
        task = self._context.run(asyncio.create_task, self._attempt(item))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        # Its root, while it runs: its end wakes the waiters of its descendants.
        self._roots[item.call.dispatch_id] = item.call.root_id
        task.add_done_callback(functools.partial(self._ran, item.call.dispatch_id))

    def _free(self) -> int:
        """Slots neither running an attempt nor held for a Dispatch in flight."""
        return self.concurrency - len(self._running) - self._reserved.total()

    def _unreserved(self, room: Callable[[str], int]) -> Callable[[str], int]:
        """``room`` less the slots that Dispatches in flight hold."""
        return lambda key: max(0, room(key) - self._reserved[key])

    def handoff(self, calls: Sequence[NewCall], now: float) -> Handoff | None:
        """What a Dispatch of ``calls`` may lease to this engine in its own transaction
        (``Store.dispatch``), to be started at once by ``handed``, with no claim: as
        many ``handable`` calls as the free slots and each destination's room allow,
        held for it until ``handed``. None when nothing may be: the claim loop is not
        running, no slot is free (at saturation the claims' round-robin decides), or a
        per-destination cap is set (it holds across processes: only a claim counts it)."""
        if not self._claiming or self._stopping or self.limiter.cap is not None:
            return None
        free = self._free()
        room = self._unreserved(self.limiter.rooms(self.concurrency))
        held: Counter[str] = Counter()
        for call in calls:
            if held.total() >= free:
                break
            if handable(call, now):
                key = destination(call.endpoint)
                if held[key] < room(key):
                    held[key] += 1
        if not held:
            return None
        self._reserved.update(held)
        lease_seconds = self.attempt_timeout + self.lease_margin
        handoff = Handoff(
            self.owner, lease_seconds, held.total(), held.__getitem__, committed=self.handed
        )
        self._holds[id(handoff)] = held
        return handoff

    def handed(self, handoff: Handoff | None) -> None:
        """Start the attempts of the calls ``handoff`` leased (none if the Dispatch
        failed), and give back the slots it held: once, when the store says the leases
        committed or, at the latest, when the Dispatch returns."""
        if handoff is None:
            return
        held = self._holds.pop(id(handoff), None)
        if held is None:
            return  # started already
        self._reserved -= held
        for item in handoff.claimed:
            self._start(item)

    def _ran(self, dispatch_id: str, task: asyncio.Task[None]) -> None:
        self._roots.pop(dispatch_id, None)

    @property
    def limits(self) -> Limits:
        """The settings the rules decide by."""
        return Limits(
            policy=self.policy,
            attempt_timeout=self.attempt_timeout,
            max_restarts=self.max_restarts,
            max_input_size=self.max_input_size,
            max_output_size=self.max_output_size,
            unsupported=self.unsupported,
        )

    async def _attempt(self, item: Claimed) -> None:
        call, lease = item.call, item.lease
        now = self.clock()
        started = time.perf_counter()
        limits = limits_for(call, self.limits)
        plan = before_attempt(call, limits, now)
        if call.follows is not None and not isinstance(plan, Finish):
            await self._follow(call, lease, now)
            return
        if isinstance(plan, Finish):
            # Expired while it waited.
            try:
                await self._apply(lease, plan, now)
            except Exception:
                logger.exception("recording the expiration of %s failed", call.dispatch_id)
            return
        key = destination(call.endpoint)
        slot = self.limiter.acquire(key)
        if slot is None:
            # The destination is at its limit: back to the store, not holding a slot of
            # this process that calls to other destinations could use.
            ready_at = now + 0.05 + self.rng.random() * 0.2
            try:
                if await self.store.release(lease, ready_at=ready_at):
                    self._ready_at(ready_at)
            except Exception:
                logger.exception("handing back %s failed", call.dispatch_id)
            return
        timeout = plan.timeout
        if call.policy is not None and self.clock() + timeout > lease.expires_at:
            # The call's own attempt timeout is longer than the scheduler's: so is its
            # lease.
            until = self.clock() + timeout + self.lease_margin
            with contextlib.suppress(Exception):
                if await self.store.extend(lease, until=until):
                    lease = dataclasses.replace(lease, expires_at=until)
        if self.clock() + timeout > lease.expires_at:
            # This process was held up (paused, starved) since it claimed the call: the
            # lease may lapse mid-attempt, and another process run the call meanwhile.
            logger.warning("the lease on %s is about to lapse: handed back", call.dispatch_id)
            self.limiter.release(key, None, slot)
            with contextlib.suppress(Exception):
                if await self.store.release(lease, ready_at=self.clock()):
                    self._wake.set()
            return
        # The attempt's span, current while the endpoint is called and the outcome
        # recorded (a Poll's children are its children); ended with the log line, and
        # like it, not at all for an attempt cancelled midway (a hard stop).
        span = tracing.start_attempt(
            call.trace_context,
            dispatch_id=call.dispatch_id,
            root_id=call.root_id,
            function=call.function,
            attempt=call.attempts,
            endpoint=call.endpoint,
            destination=key,
        )
        verdict: Status | None = None
        ran = Ran(call.function, self.clock(), time.perf_counter())
        try:
            request = run_request(
                call, item.results, deadline=self.clock() + timeout, skew=self.clock.wall_skew()
            )
            # The answer's result taken out once, and the parsed answer (as large again)
            # not kept while it is recorded.
            outcome = settled(await self.caller.run(call.endpoint, request, timeout=timeout))
            verdict = outcome.status
            if outcome.response is not None:
                verdict = Status.answered(outcome.response.status)
        except Exception as exc:  # a bug of ours: the call is retried, not lost
            logger.exception("attempt of %s failed unexpectedly", call.dispatch_id)
            outcome = Outcome(
                Status.TEMPORARY_ERROR, error_type=type(exc).__name__, message=str(exc)
            )
        finally:
            self.limiter.release(key, verdict, slot)
            ran.ended = time.perf_counter()
            seconds = ran.ended - ran.counter
            self.metrics.attempted(call.function, verdict or Status.TEMPORARY_ERROR, seconds)
        expired = cut_short(outcome, timeout, limits)
        replaced = None
        try:
            replaced = await self._recorded(call, lease, outcome, expired, limits, ran)
        finally:
            milliseconds = round((time.perf_counter() - started) * 1000, 1)
            self._log_attempt(call, replaced or outcome, milliseconds)
            if self._held_back or call.limits.limited:
                # Room for calls a limit held back (what the outcome made ready woke
                # the loop in ``_apply``).
                self._wake.set()
            if span is not None:
                status, error_type, _ = attempt_summary(replaced or outcome)
                span.end(status, error_type)

    async def _follow(self, call: Call, lease: Lease, now: float) -> None:
        """A Poll's child whose key another call has runs nothing: it ends with that
        call's outcome once that call is done, and is looked at again until then, less
        often the longer it has waited."""
        try:
            followed = await self.store.get(call.follows or "")
            if followed is None:
                gone = Outcome(
                    Status.NOT_FOUND,
                    error_type="NotFound",
                    message=f"the call {call.follows} that has this call's key is no longer kept",
                )
                await self._apply(lease, Finish(gone.status, error_result(gone)), now)
            elif followed.done:
                status = Status(followed.status or Status.OK.value)
                await self._apply(lease, Finish(status, followed.result), now)
            else:
                wait = min(FOLLOW_INTERVAL_MAX, max(FOLLOW_INTERVAL, (now - call.created_at) / 10))
                ready_at = now + wait
                if await self.store.release(lease, ready_at=ready_at):
                    self._ready_at(ready_at)
                    followed_id = followed.dispatch_id
                    self._followers.setdefault(followed_id, set()).add(call.dispatch_id)
                    # Ended before it was noted here, which ``changed`` then missed.
                    again = await self.store.get(followed_id)
                    if again is None or again.done:
                        self.changed(followed_id)
        except Exception:
            logger.exception("following %s for %s failed", call.follows, call.dispatch_id)

    async def _look_again(self) -> None:
        """The followers whose call ended made claimable now, not at their next look: up
        to ``LOOKS_PER_TURN`` of them each turn of the claim loop, which claims between
        (a call many followers wait on does not hold the loop up)."""
        looks = list(itertools.islice(self._looks_due, LOOKS_PER_TURN))
        self._looks_due.difference_update(looks)
        if self._looks_due:
            self._wake.set()  # the rest next turn
        now = self.clock()
        for dispatch_id in looks:
            try:
                await self.store.retry_now(dispatch_id, now=now)
            except Exception:
                logger.exception("looking again at %s failed", dispatch_id)

    def _ready_at(self, ready_at: float) -> None:
        """A call handed back to the store is ready again at ``ready_at``: the claim
        loop, which may be pausing past it, looks again by then."""
        if ready_at < self._due:
            self._due = ready_at
            self._wake.set()

    def _log_attempt(self, call: Call, outcome: Outcome, milliseconds: float) -> None:
        """One line per attempt, with the run's status (a function that raised is not
        OK, though its endpoint answered) and, when it failed, the error's type and the
        start of its message."""
        status, error_type, message = attempt_summary(outcome)
        fields: dict[str, object] = {
            "dispatch_id": call.dispatch_id,
            "root_dispatch_id": call.root_id,
            "function": call.function,
            "endpoint": call.endpoint,
            "attempt": call.attempts,
            "status": status.name,
            "duration_ms": milliseconds,
        }
        failure = ""
        if status is not Status.OK:
            fields |= {"error_type": error_type, "error_message": message}
            detail = ": ".join(part for part in (error_type, message) if part)
            failure = f" ({detail})" if detail else ""
        logger.info(
            "attempt %d of %s (%s) on %s: %s in %.1f ms%s",
            call.attempts,
            call.function,
            call.dispatch_id,
            call.endpoint,
            status.name,
            milliseconds,
            failure,
            extra=fields,  # the same as fields, for a JSON log formatter
        )

    async def _recorded(
        self,
        call: Call,
        lease: Lease,
        outcome: Outcome,
        expired: bool,
        limits: Limits,
        ran: Ran | None = None,
    ) -> Outcome | None:
        """Record ``outcome``, trying again while the store is unavailable (a database
        restart) and the lease holds; past that, the lease lapses and another attempt
        runs the call again: at least once. Any other error of the store's is counted
        (``_not_stored``). What was recorded instead of the endpoint's answer (an invalid
        Poll or tail call), if anything."""
        delay = 0.1
        while True:
            try:
                return await self._record(
                    call, lease, outcome, expired=expired, limits=limits, ran=ran
                )
            except Exception as exc:
                if not unavailable(exc):
                    return await self._not_stored(call, lease, exc, limits, ran)
                if self.clock() + delay >= lease.expires_at or self._stopping:
                    logger.exception("recording the outcome of %s failed", call.dispatch_id)
                    return None
                logger.warning(
                    "recording the outcome of %s failed (%s); trying again",
                    call.dispatch_id,
                    exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _record(
        self,
        call: Call,
        lease: Lease,
        outcome: Outcome,
        *,
        expired: bool = False,
        limits: Limits | None = None,
        ran: Ran | None = None,
    ) -> Outcome | None:
        """Decide what ``outcome`` means for ``call`` and record it (with the attempt,
        ``ran``, in its history); what was recorded instead of the endpoint's answer, if
        anything."""
        now = self.clock()
        decision = after_attempt(
            call, outcome, limits or self.limits, now, jitter=self.rng.random(), expired=expired
        )
        try:
            await self._apply(lease, decision, now, self._attempt_of(ran, decision, outcome))
        except TreeLimitExceeded as exc:
            decision = beyond_bounds(exc)
            await self._apply(lease, decision, now, self._attempt_of(ran, decision, outcome))
        return decision.instead if isinstance(decision, Finish) else None

    def _attempt_of(
        self, ran: Ran | None, decision: Decision, outcome: Outcome
    ) -> NewAttempt | None:
        """The history's record of the attempt ``ran`` that came to ``outcome``, recorded
        as ``decision`` (what replaced an invalid answer, if anything); None with
        history off."""
        if ran is None or self.attempt_history <= 0:
            return None
        if isinstance(decision, Finish) and decision.instead is not None:
            outcome = decision.instead
        status, error_type, message = attempt_outcome(outcome)
        if status is Status.OK:
            error_type = message = ""
        return NewAttempt(
            function=ran.function,
            started_at=ran.started_at,
            duration=max(0.0, (ran.ended or time.perf_counter()) - ran.counter),
            status=status.value,
            error_type=error_type,
            error_message=message,
            keep=self.attempt_history,
        )

    async def _not_stored(
        self, call: Call, lease: Lease, error: Exception, limits: Limits, ran: Ran | None = None
    ) -> Outcome | None:
        """The attempt's outcome could not be stored, by an error that trying again will
        not mend (a value the database refuses, a fault of ours): counted in the store,
        and the call runs again later, or ends after ``MAX_UNSTORED`` such failures. If
        even that fails, the lease lapses, and the claims beyond ``max_attempts`` end the
        call (``before_attempt``). What was recorded instead, if the call ended."""
        logger.error(
            "the outcome of %s could not be stored",
            call.dispatch_id,
            exc_info=(type(error), error, error.__traceback__),
        )
        reason = f"{type(error).__name__}: {error}"[:500]
        try:
            failures = await self.store.count_unstored(lease)
            if failures is None:
                return None  # its lease is no longer current
            now = self.clock()
            decision = not_stored(call, failures, reason, limits, now, jitter=self.rng.random())
            unstored = Outcome(
                decision.status,
                error_type="OutcomeNotStored",
                message=f"its outcome could not be stored: {reason}",
            )
            await self._apply(lease, decision, now, self._attempt_of(ran, decision, unstored))
        except Exception:
            logger.exception("recording that %s could not be stored failed", call.dispatch_id)
            return None
        return decision.instead if isinstance(decision, Finish) else None

    async def _apply(
        self, lease: Lease, decision: Decision, now: float, attempt: NewAttempt | None = None
    ) -> None:
        """Record ``decision`` under ``lease``, and ``attempt`` in the call's history:
        one store call; then the claim loop woken if the decision may have made a call
        ready (a parent, a resume, a retry's time) rather than only ended one."""
        if isinstance(decision, Finish):
            await self._end(lease, decision.status, decision.result, now, attempt)
            if self._roots.get(lease.dispatch_id) != lease.dispatch_id:
                self._wake.set()  # its parent may be ready now
        elif isinstance(decision, Retry):
            recorded = await self.store.retry(
                lease,
                decision.status.value,
                decision.result,
                ready_at=decision.ready_at,
                now=now,
                attempt=attempt,
            )
            if recorded:
                self._due = min(self._due, decision.ready_at)
                self.changed(lease.dispatch_id)
                self._wake.set()  # the loop's pause ends by its time
        elif isinstance(decision, Suspend):
            children: Sequence[NewCall] = decision.children
            trace_context = tracing.carried()  # the attempt's: the children's parent
            if trace_context:
                children = [replace(c, trace_context=trace_context) for c in children]
            await self.store.suspend(
                lease,
                decision.poll,
                children,
                min_results=decision.min_results,
                max_results=decision.max_results,
                until=decision.until,
                now=now,
                bounds=TreeBounds(self.max_children, self.max_descendants),
                attempt=attempt,
            )
            # Its children are ready, or itself, if earlier results were enough.
            self._wake.set()
        elif isinstance(decision, TailCall):
            await self.store.tail_call(
                lease,
                decision.function,
                decision.endpoint,
                decision.input,
                now=now,
                attempt=attempt,
                policy=decision.policy,
                limits=decision.limits,
            )
            self._wake.set()  # ready again, as the function handed over to
        else:
            await self.store.restart(lease, now=now, orphans=ORPHANS, attempt=attempt)
            self._wake.set()  # ready again, from its input

    async def _end(
        self,
        lease: Lease,
        status: Status,
        result: bytes,
        now: float,
        attempt: NewAttempt | None = None,
    ) -> None:
        finished = await self.store.finish(
            lease, status.value, result, now=now, orphans=ORPHANS, attempt=attempt
        )
        if finished:
            self._changed(lease.dispatch_id)
            self.metrics.ended(status)


class _Rooms:
    """A claim's room per destination (``Limiter.rooms``), noting what the store asked,
    so that the engine can tell whether a destination's room ran out."""

    def __init__(self, room: Callable[[str], int]) -> None:
        self._room = room
        self.asked: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        room = self.asked[key] = self._room(key)
        return room

    def filled(self, claimed: Sequence[Claimed]) -> bool:
        """Whether ``claimed`` took all the room of a destination the store had calls
        of (others of its calls may be left, waiting for room)."""
        taken: dict[str, int] = {}
        for item in claimed:
            key = destination(item.call.endpoint)
            taken[key] = taken.get(key, 0) + 1
        return any(taken.get(key, 0) >= room for key, room in self.asked.items())


@dataclass
class Ran:
    """When an attempt of ``function`` ran: for its record in the call's history."""

    function: str
    started_at: float
    """The store's clock."""
    counter: float
    """``time.perf_counter()`` then, for its duration."""
    ended: float | None = None


ALL_TREES = "*"
"""``Engine.changed``'s root for descendants ended in trees not named."""


class Watch:
    """A waiter's view of its calls' changes (``Engine.watching``)."""

    def __init__(self, dispatch_ids: Iterable[str], trees: dict[str, list[Watch]]) -> None:
        self.dispatch_ids = frozenset(dispatch_ids)
        self.changed = asyncio.Event()
        self.roots: set[str] = set()
        self._trees = trees
        self._touched: set[str] | None = set()

    def within(self, dispatch_id: str, root_id: str) -> None:
        """The call ``dispatch_id`` belongs to the tree of ``root_id``: the end of any
        call of that tree wakes it too (it may have ended the call as one of its
        descendants; a root's end wakes its own watchers already)."""
        if root_id != dispatch_id and root_id not in self.roots:
            self.roots.add(root_id)
            _add(self._trees, root_id, self)

    def touch(self, dispatch_id: str | None) -> None:
        """The call changed (None: any of them may have)."""
        if dispatch_id is None:
            self._touched = None
        elif self._touched is not None:
            self._touched.add(dispatch_id)
        self.changed.set()

    def touched(self) -> set[str] | None:
        """The calls that changed since the last time this was asked (None: any may
        have), so that a waiter of many reads again only those."""
        touched, self._touched = self._touched, set()
        return touched

    async def __call__(self, timeout: float) -> bool:
        """Whether the call changed within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        changed = self.changed.is_set()
        self.changed.clear()
        return changed


def _add(watchers: dict[str, list[Watch]], key: str, watch: Watch) -> None:
    watchers.setdefault(key, []).append(watch)


def _remove(watchers: dict[str, list[Watch]], key: str, watch: Watch) -> None:
    found = watchers.get(key, [])
    if watch in found:
        found.remove(watch)
    if not found:
        watchers.pop(key, None)


LOGGED_MESSAGE = 200
"""How much of an attempt's error message its log line carries."""


def attempt_outcome(outcome: Outcome) -> tuple[Status, str, str]:
    """What an attempt came to: the run's status (its RunResponse's, when the endpoint
    answered one), and the type and message of its error (empty when it has none)."""
    response = outcome.response
    if response is None:
        return outcome.status, outcome.error_type, outcome.message
    error = response.exit.result.error
    return Status.answered(response.status), error.type, error.message


def attempt_summary(outcome: Outcome) -> tuple[Status, str, str]:
    """``attempt_outcome``, with the first line of its error's message, shortened."""
    status, error_type, message = attempt_outcome(outcome)
    first = message.strip().split("\n", 1)[0]
    if len(first) > LOGGED_MESSAGE:
        first = first[: LOGGED_MESSAGE - 3] + "..."
    return status, error_type, first


def run_request(
    call: Call,
    results: Sequence[ChildResult] = (),
    deadline: float | None = None,
    skew: float = 0.0,
) -> function_pb2.RunRequest:
    """The RunRequest of an attempt of ``call``: its input, or, resuming it after a Poll,
    a PollResult with its state and ``results``.

    Its expiration is the attempt's ``deadline`` when that comes before the call's: an
    endpoint refuses to start a run that expired, so a request that waited in a busy
    server's queue (or was sent by a process since killed) past the moment this process
    gave up on it is not run beside the retry. The endpoint compares it with its wall
    clock: ``skew`` is what to add to the scheduler's times to put them on it.
    """
    request = function_pb2.RunRequest(
        function=call.function,
        dispatch_id=call.dispatch_id,
        parent_dispatch_id=call.parent_id or "",
        root_dispatch_id=call.root_id,
    )
    if call.poll:
        poll = poll_pb2.Poll.FromString(call.poll)
        resume = request.poll_result
        if poll.WhichOneof("state") == "typed_coroutine_state":
            resume.typed_coroutine_state.CopyFrom(poll.typed_coroutine_state)
        elif poll.WhichOneof("state") == "coroutine_state":
            resume.coroutine_state = poll.coroutine_state
        else:
            resume.SetInParent()
        for child in results:
            result = resume.results.add()
            if child.result:
                result.MergeFromString(child.result)
            result.correlation_id = child.correlation_id
            result.dispatch_id = child.dispatch_id
    elif call.input:
        request.input.CopyFrom(any_pb2.Any.FromString(call.input))
    request.creation_time.CopyFrom(timestamp(call.created_at))
    expires = call.expires_at if deadline is None else min(call.expires_at, deadline)
    request.expiration_time.CopyFrom(timestamp(expires + skew))
    return request


__all__ = [
    "ENDPOINT_SCHEMES",
    "MAX_POLL_CALLS",
    "MAX_POLL_RESULTS",
    "ORPHANS",
    "Engine",
    "attempt_summary",
    "call_problem",
    "oversized_input",
    "run_request",
    "timestamp",
]
