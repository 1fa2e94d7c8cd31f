"""The ``Store`` contract in memory: nothing survives the process, everything else holds
(leases with fencing tokens, round-robin claims, Poll children and their results,
cancelled trees). For tests of the engine that run in-process in milliseconds.

Every method runs to its end without awaiting, so that each is one transaction for the
event loop that calls it.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...core.errors import DispatchletError
from ...core.status import Status
from ..calls import destination
from . import (
    COUNT_CAP,
    END_BATCH,
    ERROR_MESSAGE_BYTES,
    MAILBOX_MESSAGES,
    NO_BOUNDS,
    PURGE_BATCH,
    Attempt,
    AttemptHistory,
    Call,
    CallPolicy,
    Child,
    ChildResult,
    Claimed,
    Handoff,
    Lease,
    NewAttempt,
    NewCall,
    RequestId,
    Sent,
    State,
    StoreError,
    TreeBounds,
    TreeLimitExceeded,
    children_of,
    claim_candidates,
    fitting,
    in_turns,
    mailboxes_moved,
    new_dispatch_id,
    stored_text,
    summary,
    unsendable,
)
from .idempotency import KeyedCalls, KeyedChildren, repeated
from .limits import (
    HELD_ROUNDS,
    NO_LIMITS,
    Admitted,
    Held,
    Limits,
    LimitStats,
    Usage,
    limit_stats_of,
    rate_periods,
    room_as_read,
    room_left,
    within_limits,
)
from .schedules import (
    NewSchedule,
    Planner,
    Schedule,
    ScheduleExists,
    Synced,
    Ticked,
    sync_plan,
)
from .statements import by_creation_time
from .stats import OVERVIEW_FUNCTIONS, Finished, QueueStats, finished_of


class IntegrityError(ValueError, DispatchletError):
    """A call that the store refuses (as a database's constraints would): a fault of
    the caller's, not a database away (no ``StoreError``, which means try again)."""


@dataclass
class _Row:
    """A stored call and what the store keeps beside it."""

    seq: int
    dispatch_id: str
    function: str
    endpoint: str
    input: bytes
    version: str
    correlation_id: int
    parent_id: str | None
    root_id: str
    created_at: float
    expires_at: float
    ready_at: float
    state: State = State.READY
    status: int | None = None
    result: bytes = b""
    attempts: int = 0
    finished_at: float | None = None
    poll: bytes = b""
    restarts: int = 0
    destination: str = ""
    lease_owner: str | None = None
    lease_token: int = 0
    lease_expires: float | None = None
    poll_min: int = 0
    poll_max: int = 0
    poll_until: float | None = None
    delivered: bool = False
    unstored: int = 0
    descendants: int = 0
    trace_context: str = ""
    children: builtins.list[str] = field(default_factory=builtins.list)
    rerun_of: str | None = None
    limits: Limits = NO_LIMITS
    policy: CallPolicy | None = None
    follows: str | None = None
    attempts_kept: deque[Attempt] = field(default_factory=deque)
    """Its history of attempts (the SQL stores' ``{calls}_attempts``)."""
    topic: str | None = None
    mailbox: deque[tuple[str, bytes]] = field(default_factory=deque)
    """Messages kept for its receives, in order, as (topic, result) (the SQL stores'
    ``{calls}_messages``)."""

    def call(self) -> Call:
        return Call(
            dispatch_id=self.dispatch_id,
            function=self.function,
            endpoint=self.endpoint,
            input=self.input,
            version=self.version,
            correlation_id=self.correlation_id,
            parent_id=self.parent_id,
            root_id=self.root_id,
            state=self.state,
            status=self.status,
            result=self.result,
            attempts=self.attempts,
            created_at=self.created_at,
            expires_at=self.expires_at,
            ready_at=self.ready_at,
            finished_at=self.finished_at,
            poll=self.poll,
            restarts=self.restarts,
            rerun_of=self.rerun_of,
            trace_context=self.trace_context,
            policy=self.policy,
            follows=self.follows,
            limits=self.limits,
            topic=self.topic,
        )

    def claimable(self, now: float) -> bool:
        if self.state is State.READY:
            return self.ready_at <= now
        if self.state is State.RUNNING:
            return self.lease_expires is not None and self.lease_expires <= now
        if self.state is State.WAITING:
            return self.poll_until is not None and self.poll_until <= now
        return False

    def unlease(self) -> None:
        self.lease_owner = None
        self.lease_expires = None


class MemoryStore:
    """The ``Store`` contract in this process's memory."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._unfinished: set[str] = set()
        """The calls not done: what a claim looks through."""
        self._seq = 0
        self._closed = False
        self._requests: dict[str, tuple[bytes, str]] = {}
        """Request ids: the digest of what each request asked, its dispatch ids."""
        self._keys: dict[str, str] = {}
        """Idempotency keys: the dispatch id of the call that has each."""
        self._starts: dict[str, builtins.list[tuple[float, int, float]]] = {}
        """The starts of rate-limited calls per function (the SQL stores' ``{calls}_starts``)."""
        self._endings: dict[str, tuple[int, bytes, bool]] = {}
        self._schedules: dict[str, Schedule] = {}
        """The calls whose unfinished descendants are still to end: with what, and
        whether only their children set aside (by a restart)."""

    @classmethod
    async def open(cls) -> MemoryStore:
        return cls()

    # --- the contract ------------------------------------------------------------------

    async def dispatch(
        self,
        calls: Sequence[NewCall],
        *,
        now: float,
        request: RequestId | None = None,
        handoff: Handoff | None = None,
    ) -> list[str]:
        self._check_open()
        if request is not None and request.id in self._requests:
            return repeated(request, *self._requests[request.id])
        keyed = KeyedCalls(calls, self._keys)
        stored = self._insert(keyed.fresh, now)
        for moved in mailboxes_moved(keyed.fresh, stored):
            old = self._rows.get(moved["old"])
            if old is not None:
                self._rows[moved["new"]].mailbox, old.mailbox = old.mailbox, deque()
        for row in keyed.new_keys(stored):
            self._keys[row["key"]] = row["dispatch_id"]
        ids = keyed.ids(stored)
        if request is not None:
            self._requests[request.id] = (request.digest, ",".join(ids))
        if handoff is not None:
            chosen = [stored[index] for index in handoff.chosen(keyed.fresh, now)]
            handoff.claimed = self._take(
                chosen, {}, handoff.owner, now, now + handoff.lease_seconds
            )
        return ids

    def subscribe(self, wake: Callable[[], None]) -> None:
        """One process has the store: its API wakes its engine itself."""
        del wake

    def watch(self, changed: Callable[[str | None, str | None], None]) -> float | None:
        """One process has the store: its engine wakes the waiters of what it changes."""
        del changed
        return None

    async def claim(
        self,
        *,
        owner: str,
        now: float,
        limit: int,
        lease_seconds: float,
        cap: int | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[Claimed]:
        self._check_open()
        room = room_as_read(room)
        found = [
            (row.dispatch_id, row.root_id, row.destination, row.ready_at, row.seq)
            for row in (self._rows[i] for i in self._unfinished)
            if row.claimable(now)
        ]
        limited = {
            f[0]: (row.function, row.limits)
            for f in found
            if (row := self._rows[f[0]]).limits.limited
        }
        claimed: builtins.list[Claimed] = []
        held = Held()
        taken: Counter[str] = Counter()
        # As the SQL stores' rounds: again without the functions and keys held back by
        # a limit, while that leaves the claim short.
        for _ in range(HELD_ROUNDS):
            wanted = limit - len(claimed)
            chosen, admitted = self._choose(
                [
                    f
                    for f in found
                    if not held.holds(self._rows[f[0]].function, self._rows[f[0]].limits.key)
                ],
                wanted,
                limited,
                now,
                cap=cap,
                room=room_left(room, taken),
            )
            more = self._take(chosen[:wanted], limited, owner, now, now + lease_seconds)
            claimed += more
            if len(claimed) >= limit or not held.add(admitted):
                break
            taken.update(self._rows[c.call.dispatch_id].destination for c in more)
            found = [f for f in found if self._rows[f[0]].claimable(now)]
        return claimed

    def _choose(
        self,
        found: builtins.list[tuple[str, str, str, float, int]],
        wanted: int,
        limited: dict[str, tuple[str, Limits]],
        now: float,
        *,
        cap: int | None,
        room: Callable[[str], int] | None,
    ) -> tuple[builtins.list[str], Admitted]:
        # Round-robin across roots, oldest first within each; more candidates than the
        # batch, since some destinations may be full.
        running = {} if cap is None else self._running(now)
        admitted = Admitted([])
        for count in claim_candidates(wanted):
            candidates = in_turns(found, count)
            dealt_all = len(candidates) < count
            if limited:
                admitted = within_limits(candidates, limited, self._usage(limited, now))
                candidates = admitted.candidates
            chosen = fitting(candidates, cap=cap, running=running, room=room)
            if len(chosen) >= wanted or dealt_all:
                break
        return chosen, admitted

    def _take(
        self,
        ids: Sequence[str],
        limited: dict[str, tuple[str, Limits]],
        owner: str,
        now: float,
        expires: float,
    ) -> builtins.list[Claimed]:
        claimed = []
        for dispatch_id in ids:
            function, lim = limited.get(dispatch_id, ("", NO_LIMITS))
            if lim.rate_count > 0:
                starts = self._starts.setdefault(function, [])
                kept = [s for s in starts if s[0] > now - lim.rate_period]
                starts[:] = [*kept, (now, lim.rate_count, lim.rate_period)]
            row = self._rows[dispatch_id]
            row.state = State.RUNNING
            row.lease_owner = owner
            row.lease_token += 1
            row.lease_expires = expires
            row.attempts += 1
            results = self._undelivered(row) if row.poll else ()
            lease = Lease(
                dispatch_id, row.lease_token, expires, tuple(r.dispatch_id for r in results)
            )
            claimed.append(Claimed(row.call(), lease, results))
        return claimed

    async def release(self, lease: Lease, *, ready_at: float) -> bool:
        row = self._leased(lease)
        if row is None:
            return False
        # Back as it was before the claim: a resume keeps its poll to resume from.
        row.state = State.READY
        row.ready_at = ready_at
        row.attempts -= 1
        row.unlease()
        return True

    async def extend(self, lease: Lease, *, until: float) -> bool:
        row = self._leased(lease)
        if row is None:
            return False
        row.lease_expires = until
        return True

    async def finish(
        self,
        lease: Lease,
        status: int,
        result: bytes,
        *,
        now: float,
        orphans: tuple[int, bytes] = (0, b""),
        attempt: NewAttempt | None = None,
    ) -> bool:
        row = self._leased(lease)
        if row is None:
            return False
        _add_attempt(row, attempt)
        self._end(row, status, result, now, keep_failed_poll=True)
        self._deliver(lease.delivered)
        self._end_descendants(row.dispatch_id, orphans, now)
        if row.parent_id is not None:
            self._wake(row.parent_id, now)
        return True

    async def suspend(
        self,
        lease: Lease,
        poll: bytes,
        children: Sequence[NewCall],
        *,
        min_results: int,
        max_results: int,
        until: float,
        now: float,
        bounds: TreeBounds = NO_BOUNDS,
        attempt: NewAttempt | None = None,
    ) -> list[str] | None:
        row = self._leased(lease)
        if row is None:
            return None
        self._check_bounds(row, len(children), bounds)
        _add_attempt(row, attempt)
        placed = children_of(row.dispatch_id, row.root_id, children)
        if any(child.key for child in placed):
            ids = self._insert_keyed(placed, now)
        else:
            ids = self._insert(placed, now)
        for child, child_id in zip(children, ids, strict=True):
            if child.topic is not None:
                self._receive(row, self._rows[child_id], child.topic, now)
        row.state = State.WAITING
        row.poll = poll
        row.poll_min, row.poll_max, row.poll_until = min_results, max_results, until
        row.attempts = 0
        row.status = None
        row.unlease()
        self._deliver(lease.delivered)
        # Results of earlier polls may be enough already.
        self._wake(row.dispatch_id, now)
        return ids

    async def send(self, dispatch_id: str, topic: str, result: bytes, *, now: float) -> Sent:
        self._check_open()
        row = self._rows.get(dispatch_id)
        if row is None:
            return Sent.UNKNOWN
        refused = unsendable(row.state.value, row.follows, row.topic)
        if refused is not None:
            return refused
        for child in (self._rows[i] for i in row.children):
            if (
                child.topic == topic
                and child.state is State.WAITING
                and (child.poll_until or 0.0) > now
            ):
                self._end(child, Status.OK.value, result, now)
                self._wake(dispatch_id, now)
                return Sent.DELIVERED
        if len(row.mailbox) >= MAILBOX_MESSAGES:
            return Sent.FULL
        row.mailbox.append((topic, result))
        return Sent.KEPT

    def _receive(self, parent: _Row, child: _Row, topic: str, now: float) -> None:
        """As the SQL stores do: a receive just stored takes the oldest message kept on
        its topic, or waits for one until its expiration."""
        child.topic = topic
        for index, (kept, result) in enumerate(parent.mailbox):
            if kept == topic:
                del parent.mailbox[index]
                self._end(child, Status.OK.value, result, now)
                return
        child.state = State.WAITING
        child.poll_min, child.poll_until = 1, child.expires_at

    async def restart(
        self,
        lease: Lease,
        *,
        now: float,
        orphans: tuple[int, bytes],
        attempt: NewAttempt | None = None,
    ) -> bool:
        row = self._leased(lease)
        if row is None:
            return False
        _add_attempt(row, attempt)
        row.state = State.READY
        row.ready_at = now
        row.poll = b""
        row.status = None
        row.restarts += 1
        row.unlease()
        # The old children's results belong to the run that was dropped; those
        # unfinished end (not the children the run to come will make).
        self._deliver(row.children)
        self._end_descendants(row.dispatch_id, orphans, now, set_aside_only=True)
        return True

    async def retry(
        self,
        lease: Lease,
        status: int,
        result: bytes,
        *,
        ready_at: float,
        now: float,
        attempt: NewAttempt | None = None,
    ) -> bool:
        row = self._leased(lease)
        if row is None:
            return False
        _add_attempt(row, attempt)
        row.state = State.READY
        row.status, row.result, row.ready_at = status, result, ready_at
        row.unlease()
        return True

    async def tail_call(
        self,
        lease: Lease,
        function: str,
        endpoint: str,
        input: bytes,
        *,
        now: float,
        attempt: NewAttempt | None = None,
        policy: CallPolicy | None = None,
        limits: Limits = NO_LIMITS,
    ) -> bool:
        row = self._leased(lease)
        if row is None:
            return False
        _add_attempt(row, attempt)
        row.function, row.endpoint, row.input = function, endpoint, input
        row.policy, row.limits = policy, limits
        row.destination = destination(endpoint)
        row.state = State.READY
        row.ready_at = now
        row.attempts = 0
        row.status = None
        row.result = b""
        row.poll = b""
        row.unlease()
        # The function handed over to starts afresh: earlier children are not its.
        self._deliver(row.children)
        return True

    async def get(self, dispatch_id: str) -> Call | None:
        self._check_open()
        row = self._rows.get(dispatch_id)
        return None if row is None else row.call()

    async def get_many(self, dispatch_ids: Sequence[str]) -> builtins.list[Call]:
        self._check_open()
        rows = (self._rows.get(dispatch_id) for dispatch_id in set(dispatch_ids))
        return [row.call() for row in rows if row is not None]

    async def children(self, parent_id: str) -> builtins.list[Child]:
        self._check_open()
        row = self._rows.get(parent_id)
        if row is None:
            return []
        return [
            Child(
                child.dispatch_id,
                child.correlation_id,
                child.state is State.DONE,
                child.delivered,
                child.status,
                child.result,
                child.finished_at,
            )
            for child in (self._rows[i] for i in row.children)
        ]

    async def history(self, dispatch_id: str) -> AttemptHistory:
        self._check_open()
        row = self._rows.get(dispatch_id)
        if row is None or not row.attempts_kept:
            return AttemptHistory()
        return AttemptHistory(tuple(row.attempts_kept), row.attempts_kept[-1].number)

    async def get_with_history(self, dispatch_id: str) -> tuple[Call, AttemptHistory] | None:
        call = await self.get(dispatch_id)
        return None if call is None else (call, await self.history(dispatch_id))

    async def list(
        self,
        *,
        state: State | None = None,
        function: str | None = None,
        root_id: str | None = None,
        status: int | None = None,
        failed: bool = False,
        newest_first: bool = False,
        after: str | None = None,
        limit: int = 100,
        parent_id: str | None = None,
        rerun_of: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> builtins.list[Call]:
        self._check_open()
        timed = by_creation_time(
            created_after,
            created_before,
            (state, function, root_id, status, failed, parent_id, rerun_of),
        )

        def key(row: _Row) -> tuple[float, int]:
            # A time range alone: the order of creation times (as the SQL stores' index).
            return (row.created_at if timed else 0.0, row.seq)

        beyond = None
        if after is not None:
            start = self._rows.get(after)
            if start is None:
                return []
            beyond = key(start)

        def matches(row: _Row) -> bool:
            if beyond is not None and (key(row) >= beyond if newest_first else key(row) <= beyond):
                return False
            if created_after is not None and row.created_at < created_after:
                return False
            if created_before is not None and row.created_at >= created_before:
                return False
            if (status is not None or failed) and row.state is not State.DONE:
                # Only a done call's status is final (a retried one keeps its last attempt's).
                return False
            return (
                (state is None or row.state is state)
                and (function is None or row.function == function)
                and (root_id is None or row.root_id == root_id)
                and (status is None or row.status == status)
                and (not failed or row.status != Status.OK.value)
                and (parent_id is None or row.parent_id == parent_id)
                and (rerun_of is None or row.rerun_of == rerun_of)
            )

        # Rows are kept in creation order (a dict keeps insertion order).
        kept: Sequence[_Row] | None = sorted(self._rows.values(), key=key) if timed else None
        if kept is not None:
            rows = reversed(kept) if newest_first else iter(kept)
        else:
            rows = reversed(self._rows.values()) if newest_first else iter(self._rows.values())
        found: builtins.list[Call] = []
        for row in rows:
            if len(found) >= limit:
                break
            if matches(row):
                found.append(summary(row.call()))
        return found

    async def cancel(self, dispatch_id: str, status: int, result: bytes, *, now: float) -> int:
        self._check_open()
        row = self._rows.get(dispatch_id)
        if row is None or row.state is State.DONE:
            return 0
        self._end(row, status, result, now)
        # A lease still out is fenced off: its late answer is not recorded.
        row.lease_token += 1
        if row.parent_id is not None:
            self._wake(row.parent_id, now)
        return 1 + self._end_descendants(dispatch_id, (status, result), now)

    async def end_descendants(self, *, now: float, limit: int = END_BATCH) -> int:
        self._check_open()
        return self._end_batch(builtins.list(self._endings)[:limit], now, limit, settled=True)

    async def purge(
        self,
        *,
        before: float,
        status: int | None = None,
        failed: bool = False,
        limit: int = PURGE_BATCH,
    ) -> int:
        self._check_open()
        roots = sorted(
            (
                row
                for row in self._rows.values()
                if row.dispatch_id == row.root_id
                and row.finished_at is not None
                and row.finished_at < before
                and (status is None or row.status == status)
                and not (failed and row.status == Status.OK.value)
            ),
            key=lambda row: row.finished_at or 0.0,
        )
        doomed: builtins.list[_Row] = []
        for root in roots:
            tree = self._tree(root)
            if any(r.state is not State.DONE or r.dispatch_id in self._endings for r in tree):
                continue
            room = limit - len(doomed)
            # As the SQLite store does: the newest first, the root last.
            members = sorted(tree[1:], key=lambda row: row.seq, reverse=True)[:room]
            if len(members) >= room and doomed:
                break
            doomed += members
            if len(members) >= room:
                break
            doomed.append(root)
        for row in doomed:
            del self._rows[row.dispatch_id]
            if row.parent_id is not None and row.parent_id in self._rows:
                self._rows[row.parent_id].children.remove(row.dispatch_id)
        gone = {row.dispatch_id for row in doomed}
        self._keys = {key: i for key, i in self._keys.items() if i not in gone}
        # A request id goes once none of the calls it names is kept.
        for request_id, (_, ids) in builtins.list(self._requests.items()):
            named = ids.split(",") if ids else []
            if any(i in gone for i in named) and not any(i in self._rows for i in named):
                del self._requests[request_id]
        return len(doomed)

    async def count_unstored(self, lease: Lease) -> int | None:
        row = self._leased(lease)
        if row is None:
            return None
        row.unstored += 1
        return row.unstored

    # --- actions on a call ---------------------------------------------------------------

    async def retry_now(self, dispatch_id: str, *, now: float) -> tuple[State, bool] | None:
        self._check_open()
        row = self._rows.get(dispatch_id)
        if row is None:
            return None
        brought = row.state is State.READY and row.ready_at > now
        if brought:
            row.ready_at = now
        return row.state, brought

    async def limit_stats(self, *, now: float) -> builtins.list[LimitStats]:
        self._check_open()
        running: dict[str, builtins.list[_Row]] = {}
        for row in (self._rows[i] for i in self._unfinished):
            in_flight = row.state is State.RUNNING and (row.lease_expires or 0.0) > now
            if in_flight and row.limits.limited:
                running.setdefault(row.function, []).append(row)
        rows_in_flight = [
            (
                function,
                max(r.limits.concurrency for r in rows),
                max(r.limits.per_key for r in rows),
                len({r.limits.key for r in rows if r.limits.key}),
                len(rows),
            )
            for function, rows in running.items()
        ]
        rates = []
        for function, starts in self._starts.items():
            if starts:
                _, count, period = starts[-1]
                rates.append(
                    (function, count, period, sum(1 for s in starts if s[0] > now - period))
                )
        return limit_stats_of(rows_in_flight, rates)

    async def queue_stats(self, *, now: float) -> QueueStats:
        self._check_open()
        states = [self._rows[i] for i in self._unfinished]
        ready = [row.ready_at for row in states if row.state is State.READY]
        return QueueStats(
            ready=sum(1 for at in ready if at <= now),
            scheduled=sum(1 for at in ready if at > now),
            running=sum(1 for row in states if row.state is State.RUNNING),
            waiting=sum(1 for row in states if row.state is State.WAITING),
            oldest_ready=min(ready, default=None),
        )

    async def finished_stats(
        self, *, since: float, now: float, limit: int = OVERVIEW_FUNCTIONS
    ) -> Finished:
        self._check_open()
        return finished_of(
            (
                (row.function, row.status or 0, row.created_at, row.finished_at)
                for row in self._rows.values()
                if row.finished_at is not None and since <= row.finished_at <= now
            ),
            limit,
        )

    async def count_by_state(self, *, cap: int = COUNT_CAP) -> dict[State, int]:
        self._check_open()
        counts = Counter(row.state for row in self._rows.values())
        return {state: min(counts[state], cap) for state in State}

    # --- schedules -----------------------------------------------------------------------

    async def create_schedule(self, schedule: NewSchedule, *, now: float) -> Schedule:
        self._check_open()
        if schedule.name in self._schedules:
            raise ScheduleExists(f"a schedule named {schedule.name!r} exists already")
        return self._put_schedule(schedule, now)

    def _put_schedule(self, new: NewSchedule, now: float) -> Schedule:
        old = self._schedules.get(new.name)
        stored = Schedule(
            name=new.name,
            cron=new.cron,
            timezone=new.timezone,
            function=new.function,
            endpoint=new.endpoint,
            input=new.input,
            paused=old.paused if old else False,
            next_tick=new.next_tick,
            last_tick=old.last_tick if old else None,
            last_dispatch_id=old.last_dispatch_id if old else "",
            owner=new.owner,
            created_at=old.created_at if old else now,
            updated_at=now,
            options=new.options,
            expiration=new.expiration,
        )
        self._schedules[new.name] = stored
        return stored

    async def schedules(self) -> builtins.list[Schedule]:
        self._check_open()
        return [self._schedules[name] for name in sorted(self._schedules)]

    async def get_schedule(self, name: str) -> Schedule | None:
        self._check_open()
        return self._schedules.get(name)

    async def pause_schedule(
        self, name: str, *, paused: bool, next_tick: float | None, now: float
    ) -> Schedule | None:
        self._check_open()
        old = self._schedules.get(name)
        if old is None:
            return None
        changed = dataclasses.replace(
            old,
            paused=paused,
            next_tick=old.next_tick if next_tick is None else next_tick,
            updated_at=now,
        )
        self._schedules[name] = changed
        return changed

    async def delete_schedule(self, name: str) -> bool:
        self._check_open()
        return self._schedules.pop(name, None) is not None

    async def sync_schedules(
        self, owner: str, wanted: Sequence[NewSchedule], *, now: float
    ) -> Synced:
        self._check_open()
        plan = sync_plan(owner, builtins.list(self._schedules.values()), wanted)
        for new in (*plan.insert, *plan.update):
            self._put_schedule(new, now)
        for name in plan.delete:
            del self._schedules[name]
        return plan.synced

    async def tick_schedules(
        self, *, now: float, plan: Planner, limit: int
    ) -> builtins.list[Ticked]:
        self._check_open()
        due = sorted(
            (s for s in self._schedules.values() if not s.paused and s.next_tick <= now),
            key=lambda s: s.next_tick,
        )[:limit]
        ticked = []
        for schedule in due:
            planned = plan(schedule)
            if planned is None:
                continue
            (dispatch_id,) = await self.dispatch([planned.call], now=now)
            self._schedules[schedule.name] = dataclasses.replace(
                schedule,
                next_tick=planned.next_tick,
                last_tick=planned.tick,
                last_dispatch_id=dispatch_id,
            )
            ticked.append(Ticked(schedule.name, planned.tick, dispatch_id))
        return ticked

    async def next_schedule_tick(self) -> float | None:
        self._check_open()
        ticks = [s.next_tick for s in self._schedules.values() if not s.paused]
        return min(ticks, default=None)

    async def close(self) -> None:
        self._closed = True

    # --- helpers -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def _insert_keyed(self, children: Sequence[NewCall], now: float) -> builtins.list[str]:
        keyed = KeyedChildren(children, self._keys)
        stored = self._insert(keyed.calls, now)
        for index, earlier in keyed.earlier.items():
            self._rows[stored[index]].follows = stored[earlier]
        for new in keyed.new_keys(stored):
            self._keys[new["key"]] = new["dispatch_id"]
        return stored

    def _insert(self, calls: Sequence[NewCall], now: float) -> builtins.list[str]:
        # Checked first: all or none, as a database's constraints would have it.
        for call in calls:
            if not call.function or not call.endpoint:
                raise IntegrityError("a call needs a function and an endpoint")
            if call.parent_id is not None and call.parent_id not in self._rows:
                raise IntegrityError(f"no parent call {call.parent_id}")
        ids = []
        for call in calls:
            dispatch_id = new_dispatch_id(now)
            self._seq += 1
            self._rows[dispatch_id] = _Row(
                seq=self._seq,
                dispatch_id=dispatch_id,
                function=call.function,
                endpoint=call.endpoint,
                input=call.input,
                version=call.version,
                correlation_id=call.correlation_id,
                parent_id=call.parent_id,
                root_id=call.root_id or dispatch_id,
                created_at=now,
                expires_at=call.expires_at,
                ready_at=now if call.ready_at is None else call.ready_at,
                destination=destination(call.endpoint),
                rerun_of=call.rerun_of,
                trace_context=call.trace_context,
                limits=call.limits,
                policy=call.policy,
                follows=call.follows,
                poll=call.poll,
            )
            self._unfinished.add(dispatch_id)
            if call.parent_id is not None:
                self._rows[call.parent_id].children.append(dispatch_id)
            ids.append(dispatch_id)
        return ids

    def _leased(self, lease: Lease) -> _Row | None:
        """The call under ``lease``, if that is its current lease."""
        self._check_open()
        row = self._rows.get(lease.dispatch_id)
        if row is None or row.state is not State.RUNNING or row.lease_token != lease.token:
            return None
        return row

    def _end(
        self, row: _Row, status: int, result: bytes, now: float, *, keep_failed_poll: bool = False
    ) -> None:
        row.state = State.DONE
        row.status, row.result, row.finished_at = status, result, now
        if not keep_failed_poll or status == Status.OK.value:
            row.poll = b""
        row.unlease()
        self._unfinished.discard(row.dispatch_id)

    def _endable(self, dispatch_id: str, set_aside_only: bool) -> builtins.list[_Row]:
        """The call's unfinished children (only those set aside, with
        ``set_aside_only``)."""
        return [
            child
            for child in (self._rows[i] for i in self._rows[dispatch_id].children)
            if child.state is not State.DONE and (child.delivered or not set_aside_only)
        ]

    def _queue_ending(
        self, dispatch_id: str, orphans: tuple[int, bytes], set_aside_only: bool
    ) -> bool:
        """Queue the call's ending, if it has children to end; whether it did."""
        if not self._endable(dispatch_id, set_aside_only):
            return False
        queued = self._endings.get(dispatch_id)
        only = set_aside_only and (queued is None or queued[2])
        self._endings[dispatch_id] = (*orphans, only)
        return True

    def _end_descendants(
        self,
        dispatch_id: str,
        orphans: tuple[int, bytes],
        now: float,
        *,
        set_aside_only: bool = False,
    ) -> int:
        """As the SQLite store does: the first ``END_BATCH`` now, the rest queued."""
        if not self._queue_ending(dispatch_id, orphans, set_aside_only):
            return 0
        return self._end_batch([dispatch_id], now, END_BATCH, settled=False)

    def _end_batch(
        self, queued: builtins.list[str], now: float, limit: int, *, settled: bool
    ) -> int:
        done = 0
        work = deque(queued)
        while work and done < limit:
            source = work.popleft()
            status, result, set_aside_only = self._endings[source]
            endable = self._endable(source, set_aside_only)
            ended = endable[: limit - done]
            for child in ended:
                self._end(child, status, result, now)
                child.lease_token += 1
                if self._queue_ending(child.dispatch_id, (status, result), False):
                    work.append(child.dispatch_id)
            done += len(ended)
            if len(ended) == len(endable):
                del self._endings[source]
                if settled:
                    done += 1
        return done

    def _tree(self, root: _Row) -> builtins.list[_Row]:
        """The root and all its descendants, the root first."""
        tree, work = [root], deque([root])
        while work:
            for child in (self._rows[i] for i in work.popleft().children):
                tree.append(child)
                work.append(child)
        return tree

    def _check_bounds(self, row: _Row, adding: int, bounds: TreeBounds) -> None:
        """As the SQLite store does: children beyond ``bounds`` are refused."""
        if not adding:
            return
        if bounds.max_children is not None:
            pending = sum(1 for i in row.children if self._rows[i].state is not State.DONE)
            if pending + adding > bounds.max_children:
                raise TreeLimitExceeded("children", bounds.max_children, pending, adding)
        root = self._rows[row.root_id]
        most = bounds.max_descendants
        if most is not None and root.descendants + adding > most:
            raise TreeLimitExceeded("descendants", most, root.descendants, adding)
        root.descendants += adding

    def _deliver(self, ids: Sequence[str]) -> None:
        for dispatch_id in ids:
            self._rows[dispatch_id].delivered = True

    def _undelivered(self, row: _Row) -> tuple[ChildResult, ...]:
        done = sorted(
            (child for child in (self._rows[i] for i in row.children) if _unread(child)),
            key=lambda child: (child.finished_at or 0.0, child.seq),
        )
        return tuple(
            ChildResult(c.dispatch_id, c.correlation_id, c.status or 0, c.result)
            for c in done[: max(row.poll_max, 1)]
        )

    def _wake(self, parent_id: str, now: float) -> None:
        """Make a waiting parent ready once it has the results it waits for."""
        parent = self._rows[parent_id]
        if parent.state is not State.WAITING:
            return
        ready = sum(1 for i in parent.children if _unread(self._rows[i]))
        if parent.poll_min <= ready:
            parent.state = State.READY
            parent.ready_at = now

    def _usage(self, limited: dict[str, tuple[str, Limits]], now: float) -> Usage:
        """What the functions of ``limited`` calls use now (``limits``)."""
        usage = Usage()
        functions = {f for f, _ in limited.values()}
        for row in (self._rows[i] for i in self._unfinished):
            in_flight = row.state is State.RUNNING and (row.lease_expires or 0.0) > now
            if in_flight and row.function in functions and row.limits.limited:
                usage.add_running(row.function, row.limits.key, 1)
        for function, period in rate_periods(limited):
            starts = self._starts.get(function, [])
            usage.started[function, period] = sum(1 for s in starts if s[0] > now - period)
        return usage

    def _running(self, now: float) -> dict[str, int]:
        """Leases in force per destination."""
        running: dict[str, int] = {}
        for row in (self._rows[i] for i in self._unfinished):
            if row.state is State.RUNNING and (row.lease_expires or 0.0) > now:
                running[row.destination] = running.get(row.destination, 0) + 1
        return running


def _add_attempt(row: _Row, attempt: NewAttempt | None) -> None:
    """Add ``attempt`` to the call's history, keeping its latest ``attempt.keep``."""
    if attempt is None or attempt.keep <= 0:
        return
    kept = row.attempts_kept
    kept.append(
        Attempt(
            number=kept[-1].number + 1 if kept else 1,
            function=attempt.function,
            started_at=attempt.started_at,
            duration=attempt.duration,
            status=attempt.status,
            error_type=stored_text(attempt.error_type, ERROR_MESSAGE_BYTES),
            error_message=stored_text(attempt.error_message, ERROR_MESSAGE_BYTES),
        )
    )
    while len(kept) > attempt.keep:
        kept.popleft()


def _unread(child: _Row) -> bool:
    """A child's result that its parent has not been given yet."""
    return child.state is State.DONE and not child.delivered


__all__ = ["IntegrityError", "MemoryStore"]
