"""The storage contract of the scheduler: what every store (SQLite embedded, PostgreSQL
for several processes) keeps and guarantees.

A call moves through these states:

- ``ready``: waiting for its ``ready_at`` time (a first attempt, a retry, a resume);
- ``running``: leased to one scheduler process until ``lease_expires``; each lease has a
  fencing token, and an outcome is recorded only with the token of the current lease,
  so a late answer from an expired lease never overwrites a newer attempt;
- ``waiting``: suspended by a Poll, until ``min_results`` of its children are done or
  its ``max_wait`` passes; it is then claimable, and its attempt resumes it with the
  results not delivered yet (at most ``max_results``), which count as delivered once
  that attempt's outcome is recorded;
- ``done``: final, with its status and result. When a call ends, its unfinished
  descendants end too: the first ``END_BATCH`` with it, the rest in batches of that
  size (``end_descendants``), so that no transaction holds the store for long; which
  calls still have descendants to end is kept in the database, so that the next
  process ends them if this one stops.

A lease that expires (its scheduler died) makes the call claimable again: calls run at
least once, never zero times. Every method is atomic (one transaction, or a savepoint
of one that several share: SQLite's group commit); ``dispatch`` commits all its calls or
none.

Dispatch is idempotent (``idempotency.py``): each store keeps, beside its calls, the
request ids of the Dispatches that carried one (with their dispatch ids) and the
idempotency keys of the calls that have one. They are kept as long as the calls they
name: a retention that deletes calls must delete, in the same transaction, their keys
(the PostgreSQL and SQLite tables cascade them with the call) and every request row
that names one of them, so that no request id or key outlives its calls and none is
dropped while they are kept.

Each call's attempt history (``history``) is written by the method that records the
attempt's outcome, in its transaction (``NewAttempt``): the latest few attempts, numbered
in the call's life. Its rows are deleted with their call (the tables cascade them). An
attempt whose lease lapsed before its outcome was recorded is not in it.
"""

from __future__ import annotations

import builtins
import dataclasses
import secrets
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from ...core.errors import DispatchletError
from ...core.status import Status
from .claims import claim_candidates, claim_window, fitting, in_turns, needs_root_heads
from .limits import NO_LIMITS, Limits, LimitStats
from .stats import OVERVIEW_FUNCTIONS, Finished, QueueStats

if TYPE_CHECKING:
    from .schedules import NewSchedule, Planner, Schedule, Synced, Ticked


class Sent(str, Enum):
    """What ``Store.send`` did with a message."""

    DELIVERED = "delivered"
    """A receive of the call waited on the topic: it ended with the message."""
    KEPT = "kept"
    """Kept in the call's mailbox, in order, for its next receive on the topic."""
    UNKNOWN = "unknown"
    """No such call: nothing stored."""
    DONE = "done"
    """The call is done: nothing stored."""
    FOLLOWS = "follows"
    """The call follows another (``Call.follows``): it runs nothing and so receives
    nothing; nothing stored (send to the call it follows)."""
    RECEIVE = "receive"
    """The call is a workflow's receive, which receives nothing itself: nothing stored."""
    FULL = "full"
    """The call's mailbox holds ``MAILBOX_MESSAGES`` messages no receive took: nothing
    stored."""


MAILBOX_MESSAGES = 1_000
"""The most messages a call's mailbox keeps for receives to come: past it a send is
refused (``Sent.FULL``), so that a sender cannot grow the store without bound for a
workflow that does not receive."""


def unsendable(state: str, follows: str | None, topic: str | None) -> Sent | None:
    """Why a call in ``state`` (that ``follows`` a call, or is a receive of ``topic``)
    takes no message, if it takes none."""
    if state == State.DONE.value:
        return Sent.DONE
    if follows is not None:
        return Sent.FOLLOWS
    if topic is not None:
        return Sent.RECEIVE
    return None


class State(str, Enum):
    READY = "ready"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"


@dataclass(frozen=True)
class CallPolicy:
    """A call's own retry policy (``CallOptions``, the function's defaults); each 0 is
    the scheduler's setting. A call without one has None: nothing is read or decided
    differently for it."""

    max_attempts: int = 0
    attempt_timeout: float = 0.0
    """Seconds."""
    backoff_initial: float = 0.0
    backoff_maximum: float = 0.0
    backoff_multiplier: float = 0.0


@dataclass(frozen=True)
class NewCall:
    """A call to store: what to run, and where it sits in its call tree."""

    function: str
    endpoint: str
    input: bytes
    """A serialized ``google.protobuf.Any`` (empty: no input)."""
    expires_at: float
    version: str = ""
    correlation_id: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    """The root of the tree; None for a root call (its own id)."""
    key: str = ""
    """The call's idempotency key (empty: none): while a call dispatched with it is
    kept, another with the same key is not stored and gets that call's dispatch id."""
    rerun_of: str | None = None
    """The call this one is a re-run of (``CallService.Rerun``), if it is one."""
    trace_context: str = ""
    """The trace context its attempts' spans are children of (``core.tracing.carried``:
    the Dispatch's span, or the attempt that made a Poll's child); empty: none."""
    limits: Limits = NO_LIMITS
    """The call's concurrency and rate limits (``limits``), applied when an attempt of it
    is to start."""
    topic: str | None = None
    """For a workflow's ``receive(topic)`` (a Poll's child only): no endpoint runs it;
    it takes the oldest message its parent's mailbox keeps on the topic, or waits for
    one (``Store.send``) until its expiration."""
    poll: bytes = b""
    """A serialized ``Poll`` to resume the call from at its first attempt (a resumed
    workflow, ``CallService.Resume``); empty: the call starts from its input."""
    ready_at: float | None = None
    """When its first attempt may start (a delayed call); None: as it is stored."""
    policy: CallPolicy | None = None
    follows: str | None = None
    """The call this one takes its outcome from instead of running (a Poll's child
    whose idempotency key another call has: ``idempotency.KeyedChildren``)."""
    messages_of: str | None = None
    """A done call whose mailbox (the messages no receive of it took) this one takes
    over, in order, in the transaction that stores it (a resumed workflow's failed call:
    ``CallService.Resume``)."""


def mailboxes_moved(calls: Sequence[NewCall], stored: Sequence[str]) -> list[dict[str, str]]:
    """The mailboxes the calls just stored as ``stored`` take over (``messages_of``):
    parameters of ``move_messages``, the old call's id and the new one's."""
    return [
        {"old": call.messages_of, "new": new}
        for call, new in zip(calls, stored, strict=True)
        if call.messages_of is not None
    ]


@dataclass(frozen=True)
class RequestId:
    """A Dispatch request's idempotency key (``Idempotency-Key``) and a digest of what
    it asked: a repeated request gets the first one's dispatch ids."""

    id: str
    digest: bytes


class RequestConflict(DispatchletError):
    """A request id used again for a request that asks something else: refused, since
    the ids of the first one would answer a question the client did not ask (Connect
    ``already_exists``: the id is bound to another request; Connect has no 422)."""

    http_status = 409
    code = "already_exists"


@dataclass(frozen=True)
class Call:
    """A stored call."""

    dispatch_id: str
    function: str
    endpoint: str
    input: bytes
    version: str
    correlation_id: int
    parent_id: str | None
    root_id: str
    state: State
    status: int | None
    """The final run status (``Status`` value) once done. Before that, the status of the
    latest attempt that ended while the call waits for its retry (or runs it); None
    before any attempt of its current run ended (a suspension, a restart and a tail call
    start a new run). Only a done call's status is final."""
    result: bytes
    """A serialized ``CallResult``: the output once OK, else the last error (empty: none)."""
    attempts: int
    """Attempts of the call's current run: since it started, or since its last Poll."""
    created_at: float
    expires_at: float
    ready_at: float
    finished_at: float | None
    poll: bytes = b""
    """A serialized ``Poll`` (its state and limits, without its calls) while the call is
    suspended or being resumed, and once it ended with any status but OK (``finish``);
    empty otherwise."""
    restarts: int = 0
    rerun_of: str | None = None
    """The call this one is a re-run of (``NewCall.rerun_of``); None for any other."""
    trace_context: str = ""
    """``NewCall.trace_context``: kept for the call's whole life (a tail call too)."""
    topic: str | None = None
    """``NewCall.topic``: the call is a receive, which the engine never runs (claimed,
    its expiration passed: it ends TIMEOUT)."""
    policy: CallPolicy | None = None
    """Its own retry policy, if it has one (``NewCall.policy``)."""
    follows: str | None = None
    """``NewCall.follows``: the call whose outcome it ends with, run by nothing else."""
    limits: Limits = NO_LIMITS
    """Its concurrency and rate limits (``NewCall.limits``)."""

    @property
    def done(self) -> bool:
        return self.state is State.DONE


@dataclass(frozen=True)
class Lease:
    """One attempt's hold on a call: its fencing ``token`` and when it lapses."""

    dispatch_id: str
    token: int
    expires_at: float
    delivered: tuple[str, ...] = ()
    """The children whose results this attempt carries (a resume)."""
    owner: str = ""
    """Whom the store leased the call to, where its fence checks it too (PostgreSQL:
    each claim's own, so that an attempt whose claim a server crash lost fails its fence
    though another claim got the same token)."""


@dataclass(frozen=True)
class ChildResult:
    dispatch_id: str
    correlation_id: int
    status: int
    result: bytes
    """A serialized ``CallResult``."""


@dataclass(frozen=True)
class Child:
    """A call's child as ``Store.children`` reads it."""

    dispatch_id: str
    correlation_id: int
    done: bool
    delivered: bool
    """Its result was given to its parent (or set aside by the parent's restart)."""
    status: int | None
    result: bytes
    """A serialized ``CallResult`` once done."""
    finished_at: float | None


@dataclass(frozen=True)
class Claimed:
    call: Call
    lease: Lease
    results: tuple[ChildResult, ...] = ()
    """For a resume: the children's results to deliver, in the order they finished."""


def handable(call: NewCall, now: float) -> bool:
    """Whether a new call may be leased in the Dispatch that stores it (``Handoff``):
    ready now, with no limits (concurrency, rate: the claim counts them), not following
    another call, and run by an endpoint."""
    return (
        (call.ready_at is None or call.ready_at <= now)
        and not call.limits.limited
        and call.follows is None
        and call.topic is None
        and bool(call.endpoint)
    )


@dataclass
class Handoff:
    """The local engine's request to lease, in the Dispatch's own transaction, the new
    calls it has room to start at once, with no claim after it (``Store.dispatch``).

    The lease is a claim's: the same columns, its attempt counted, a fencing token and
    an expiry, lapsing as any other. Only ``handable`` calls stored by this Dispatch
    (not the duplicates of an earlier request or key), at most ``limit`` in all and
    ``room(destination)`` per destination, in the order given; the others stay ready
    for the claim loop. The store fills ``claimed`` once the transaction committed, and
    may then call ``committed`` (on the event loop) before the Dispatch returns: the
    SQLite store does while its commit is synced to disk, so that the calls start
    meanwhile (their Dispatch is still answered only once it is durable)."""

    owner: str
    lease_seconds: float
    limit: int
    room: Callable[[str], int]
    claimed: builtins.list[Claimed] = field(default_factory=builtins.list)
    committed: Callable[[Handoff], None] | None = None

    def chosen(self, calls: Sequence[NewCall], now: float) -> builtins.list[int]:
        """The indexes of ``calls`` (the ones the Dispatch stores, in order) to lease."""
        from ..calls import destination  # calls.py imports this module

        taken: dict[str, int] = {}
        chosen: builtins.list[int] = []
        for index, call in enumerate(calls):
            if len(chosen) >= self.limit:
                break
            if not handable(call, now):
                continue
            where = destination(call.endpoint)
            count = taken.get(where, 0)
            if count < self.room(where):
                taken[where] = count + 1
                chosen.append(index)
        return chosen


ERROR_MESSAGE_BYTES = 1024
"""The most of an attempt's error message its history keeps, in UTF-8 bytes."""


@dataclass(frozen=True)
class NewAttempt:
    """An attempt whose outcome is being recorded: given to the method that records it
    (``finish``, ``retry``, ``suspend``, ``restart``, ``tail_call``), which adds it to
    the call's history in the same transaction, numbered after the attempts before it,
    keeping the latest ``keep`` (a stale lease adds nothing)."""

    function: str
    """The function the attempt ran (a tail call hands the call to another)."""
    started_at: float
    duration: float
    """Seconds."""
    status: int
    """What the attempt came to (a ``Status`` value)."""
    keep: int
    """How many of the call's latest attempts to keep (``--attempt-history``)."""
    error_type: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class Attempt:
    """One attempt of a call, as its history keeps it."""

    number: int
    """1 for the call's first attempt, counting every attempt recorded in its life."""
    function: str
    started_at: float
    duration: float
    status: int
    error_type: str
    error_message: str


@dataclass(frozen=True)
class AttemptHistory:
    """The latest attempts of a call, oldest first, and how many were recorded in all."""

    attempts: tuple[Attempt, ...] = ()
    total: int = 0


def stored_text(text: str, limit: int | None = None) -> str:
    """``text`` as a database keeps it: what UTF-8 cannot encode (a lone surrogate)
    and NUL (which PostgreSQL's text refuses) replaced, cut to ``limit`` bytes at a
    character's boundary."""
    data = text.replace("\x00", "\ufffd").encode("utf-8", "replace")
    if limit is not None and len(data) > limit:
        data = data[:limit]
    return data.decode("utf-8", "ignore")


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    """An attempt from its ``(number, function, started_at, duration, status,
    error_type, error_message)`` columns."""
    return Attempt(int(row[0]), row[1], row[2], row[3], int(row[4]), row[5], row[6])


def history_of(rows: Sequence[Sequence[Any]]) -> AttemptHistory:
    """A call's history from its rows, oldest first."""
    attempts = tuple(attempt_from_row(row) for row in rows)
    return AttemptHistory(attempts, attempts[-1].number if attempts else 0)


END_BATCH = 500
"""How many descendants of an ended call one transaction ends: each costs an update of
their row and its indexes, so that a batch holds the store for tens of milliseconds,
however large the tree."""


COUNT_CAP = 10_000
"""Where ``Store.count_by_state`` stops counting the calls of one state."""


PURGE_BATCH = 200
"""Calls one transaction of a purge (``Store.purge``) deletes, at most (a tree larger
than that goes in several, its root last): each costs the deletion of its row, its
index entries and its dependent rows, so that a batch holds the store for a few
milliseconds."""


@dataclass(frozen=True)
class TreeBounds:
    """How large a call tree may grow (None: unbounded)."""

    max_children: int | None = None
    """Unfinished children of one call."""
    max_descendants: int | None = None
    """Calls below one root, finished or not."""


NO_BOUNDS = TreeBounds()


class TreeLimitExceeded(DispatchletError):
    """A Poll's calls would take the call's tree beyond one of its ``TreeBounds``."""

    def __init__(self, bound: str, limit: int, count: int, adding: int) -> None:
        super().__init__(f"{count} {bound} and {adding} more: at most {limit}")
        self.bound = bound
        """``"children"`` (unfinished children of the call) or ``"descendants"`` (calls
        below its root)."""
        self.limit = limit
        self.count = count
        """How many there are."""
        self.adding = adding
        """How many the Poll would add."""


class Store(Protocol):
    """What the scheduler needs of its storage; each method is atomic."""

    async def dispatch(
        self,
        calls: Sequence[NewCall],
        *,
        now: float,
        request: RequestId | None = None,
        handoff: Handoff | None = None,
    ) -> list[str]:
        """Store ``calls``, ready now; their dispatch ids in order. All or none.

        With ``handoff``, the calls it chooses among those stored are leased to its
        owner in the same transaction, as a claim would (``Handoff``).

        Idempotent: with ``request``, a request id seen before is answered with the ids
        the first request got, storing nothing (``RequestConflict`` when its digest
        differs); a call whose ``key`` a stored call has, or an earlier call of the same
        request, is not stored and gets that call's id. Request ids and keys are stored
        in the same transaction as the calls, and a concurrent duplicate (another
        process) still ends with one set of calls (unique constraints)."""

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
        """Lease up to ``limit`` calls that are ready (or whose lease lapsed), one at a
        time per root dispatch in turn (round-robin), oldest first within a root. Turns
        are dealt among the oldest ``claim_window(limit)`` claimable calls and the oldest
        ready call of each root, so that a claim costs the same whatever the backlog. With
        ``cap``, no destination (``concurrency.destination`` of the endpoint) gets more
        than ``cap`` leases in force, counting those of every process on the store. With
        ``room``, at most ``room(destination)`` calls of each destination: what this
        process can start now, so that it claims no call only to hand it back."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process makes a call claimable now (a store that
        only one process uses may never call it)."""

    def watch(self, changed: Callable[[str | None, str | None], None]) -> float | None:
        """Call ``changed(dispatch_id, root_id)`` when another process ends a call (root
        given: its unfinished descendants may have ended too) or records a retry of it
        (no root), ``changed(None, root_id)`` when it ends descendants in the tree of
        ``root_id``, and ``changed(None, None)`` when any call may have changed unseen (a
        lost connection). How often a waiter should read its call again all the same, in
        seconds, or None when it is told every change (a store only one process uses
        tells none: that process wakes its own waiters)."""

    async def release(self, lease: Lease, *, ready_at: float) -> bool:
        """Hand the call back unrun, ready at ``ready_at``: the attempt is not counted.
        False for a stale lease."""

    async def extend(self, lease: Lease, *, until: float) -> bool:
        """Keep ``lease`` until ``until``; False when it is no longer the current one."""

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
        """Record the final outcome; False (nothing changed) for a stale lease. The
        call's unfinished descendants end with ``orphans`` (a status and a result). A
        call that ends with any status but OK keeps its ``poll`` (a failed workflow's
        journal, which ``CallService.Resume`` starts from); one that ends OK drops it.
        ``attempt``, in each method that records an outcome, is added to the call's
        history with it (``NewAttempt``)."""

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
        """Store ``children`` under the call and make it wait for them (``poll``: the
        serialized Poll without its calls); their ids, or None for a stale lease. The
        run succeeded: the call's ``attempts`` count starts again, so that the retries
        of each resume have the whole ``max_attempts`` (a workflow may have many steps).
        Children beyond ``bounds`` raise ``TreeLimitExceeded`` and change nothing. A
        child with a ``topic`` (a receive) is done at once with the oldest message the
        call's mailbox keeps on it, which is taken, or waits for one (``send``) until
        its expiration, when a claim finds it."""

    async def restart(
        self,
        lease: Lease,
        *,
        now: float,
        orphans: tuple[int, bytes],
        attempt: NewAttempt | None = None,
    ) -> bool:
        """Run the call again from its input, its poll state dropped and its unfinished
        descendants ended with ``orphans``; False for a stale lease."""

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
        """Make the call ready again at ``ready_at``, keeping the attempt's ``status`` and
        its error (``result``); False for a stale lease."""

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
        """Hand the call over to ``function`` at ``endpoint`` with ``input``, ready now:
        the same dispatch id, parent, root, creation time and expiration, a fresh count
        of attempts, and the tail call's ``policy`` and ``limits`` in place of the old
        function's (none: none). False for a stale lease."""

    async def get(self, dispatch_id: str) -> Call | None:
        """The call, or None."""

    async def get_many(self, dispatch_ids: Sequence[str]) -> builtins.list[Call]:
        """The calls of those ids that exist, in one read, in no particular order."""

    async def children(self, parent_id: str) -> list[Child]:
        """Every child of the call, with its result, in creation order (a failed
        workflow's steps, for ``CallService.Resume``)."""

    async def history(self, dispatch_id: str) -> AttemptHistory:
        """The attempts the call's history keeps, oldest first, and how many were
        recorded in its life (none: an unknown call, or history off)."""

    async def get_with_history(self, dispatch_id: str) -> tuple[Call, AttemptHistory] | None:
        """``get`` and then ``history``, in one read where the store can (the history,
        read after the call, holds at least the attempts of the outcome read); None
        for an unknown call."""

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
    ) -> list[Call]:
        """Summaries of the calls matching every filter given (``status``: done with
        that final status; ``failed``: done with any other than OK; ``parent_id``: the
        children of that call; ``rerun_of``: its re-runs; ``created_after`` and
        ``created_before``: created at or after, and before, those times), in creation
        order or, with ``newest_first``, the reverse; after the dispatch id ``after`` (a
        page's last) in that order. With a time bound, the order is that of the calls'
        creation times (then of their creation: calls created by several processes at
        about the same moment may be ordered otherwise than without one).

        A summary is a ``Call`` without what may be large: its ``input`` and ``poll``
        are empty, and its ``result`` is kept only when it is an error (the status is
        not OK) of at most ``LISTED_ERROR_BYTES``, else empty; ``get`` has the whole
        call. Each filter, and the order, is served by an index: a page costs the same
        whatever the number of calls."""

    async def cancel(self, dispatch_id: str, status: int, result: bytes, *, now: float) -> int:
        """End the call and its unfinished descendants with ``status`` and ``result``;
        how many were ended now (0: unknown or already done): the call and at most
        ``END_BATCH`` descendants, the others left to ``end_descendants`` (a full batch,
        1 + ``END_BATCH``, is all that tells that some may be left)."""

    async def end_descendants(self, *, now: float, limit: int = END_BATCH) -> int:
        """End about ``limit`` more of the unfinished descendants that calls which ended
        (or restarted) left, each with what its ancestor ended them with; how much was
        done (calls ended, and ended calls found to have none left), 0 once nothing is
        left to end."""

    async def purge(
        self,
        *,
        before: float,
        status: int | None = None,
        failed: bool = False,
        limit: int = PURGE_BATCH,
    ) -> int:
        """Delete about ``limit`` calls of the finished call trees whose root finished
        before ``before`` (the oldest first; with ``status``, only the trees whose root
        ended with it; with ``failed``, with any other than OK), with every row that
        names them (``statements.DEPENDENT_TABLES``, and the request ids of which no
        call is left); how many calls were deleted, 0 once none is left. A tree with a
        call not done, or one whose descendants are still to end, is kept whole. A
        tree of more than ``limit`` calls goes in several batches, its newest calls
        first and its root last, so that what is left of it is still a tree and still
        found."""

    async def count_unstored(self, lease: Lease) -> int | None:
        """Count one more outcome of the call that could not be stored (an error of the
        store that is not ``unavailable``); how many, in the call's whole life, or None
        for a stale lease."""

    async def queue_stats(self, *, now: float) -> QueueStats:
        """The calls not done, by state, at ``now``, and when the oldest due ready call
        became due: counts of index ranges, no read of the calls themselves."""

    async def limit_stats(self, *, now: float) -> Sequence[LimitStats]:
        """The limited functions (``limits``) with attempts in flight at ``now`` or
        starts within their rate limit's period, by name: reads only the running
        limited calls (their partial index) and the recorded starts."""

    async def finished_stats(
        self, *, since: float, now: float, limit: int = OVERVIEW_FUNCTIONS
    ) -> Finished:
        """The calls that finished from ``since`` to ``now``: counts by minute and final
        status, and by function (at most ``limit``, most calls first) their count,
        failures and nearest-rank p50 and p99 of seconds from creation to finish. Reads
        only those calls (an index on ``finished_at``)."""

    async def count_by_state(self, *, cap: int = COUNT_CAP) -> dict[State, int]:
        """How many calls are in each state, each counted up to ``cap`` (a count of
        ``cap`` means that many or more): served by the index of the states, a count
        costs at most ``cap`` index entries however many calls are kept."""

    async def close(self) -> None:
        """Release the store's resources."""

    # --- messages (``CallService.Send``, ``core.messages``) ----------------------------

    async def send(self, dispatch_id: str, topic: str, result: bytes, *, now: float) -> Sent:
        """Send a message (``result``: a serialized ``CallResult`` with its value as
        output) to the call on ``topic``, in one transaction that holds off other sends
        and the call's suspension: the oldest receive child of the call waiting on the
        topic (not past its expiration) ends with it, its parent woken if that is
        enough; else the message is kept in the call's mailbox after the others, for
        the next receive on the topic, which takes it when ``suspend`` stores it. An
        unknown or done call gets nothing, nor does a call that no receive can be made
        by: one that follows another, or a receive, nor one whose mailbox is full
        (``MAILBOX_MESSAGES``). The mailbox of a call that never receives
        (not a workflow) is kept while the call is, and deleted with it."""

    # --- actions on a call (``CallService.Retry``) -----------------------------------

    async def retry_now(self, dispatch_id: str, *, now: float) -> tuple[State, bool] | None:
        """Make the call claimable now if it is ready for a later time (a retry's
        backoff, or a call handed back unrun); its state, and whether its ready time was
        brought forward (False: not ready, or due already); None for an unknown call.
        Another process is told that a call is claimable, as by ``dispatch``."""

    # --- schedules (``schedules.py``) --------------------------------------------------

    async def create_schedule(self, schedule: NewSchedule, *, now: float) -> Schedule:
        """Store ``schedule``, not paused; ``ScheduleExists`` when its name is taken."""

    async def schedules(self) -> builtins.list[Schedule]:
        """Every schedule, by name."""

    async def get_schedule(self, name: str) -> Schedule | None:
        """The schedule, or None."""

    async def pause_schedule(
        self, name: str, *, paused: bool, next_tick: float | None, now: float
    ) -> Schedule | None:
        """Pause the schedule, or resume it; its next tick set to ``next_tick`` when
        given (a resume: the first tick after now, so that the ticks of the pause are
        not caught up). The schedule as it is then, or None for an unknown name."""

    async def delete_schedule(self, name: str) -> bool:
        """Delete the schedule (its calls are kept); False for an unknown name."""

    async def sync_schedules(
        self, owner: str, wanted: Sequence[NewSchedule], *, now: float
    ) -> Synced:
        """Make the schedules owned by ``owner`` (an endpoint URL) the ``wanted`` ones,
        in one transaction (``schedules.sync_plan``: ``ScheduleExists``, and nothing
        changed, when a wanted name belongs to another owner or to none)."""

    async def tick_schedules(
        self, *, now: float, plan: Planner, limit: int
    ) -> builtins.list[Ticked]:
        """Dispatch the tick of up to ``limit`` schedules due at ``now`` (not paused,
        next tick at or before now), as ``plan`` says, each with its call's key, and
        advance their next ticks, in one transaction; schedules another process is
        ticking are skipped (PostgreSQL), so that each tick is dispatched once."""

    async def next_schedule_tick(self) -> float | None:
        """The earliest next tick of the schedules not paused (None: none)."""


# --- what both stores share --------------------------------------------------------


LISTED_ERROR_BYTES = 16 * 1024
"""The largest stored error that ``Store.list`` returns with a summary (a page of 1,000
holds at most 16 MiB of them); a larger one is left to ``get``."""


class StoreError(DispatchletError):
    """The database cannot be used (written by a newer version, not a store)."""


def stored_correlation_id(correlation_id: int) -> int:
    """A uint64 correlation id as the signed 64-bit integer that holds the same bits
    (what SQLite's INTEGER and PostgreSQL's BIGINT keep)."""
    return correlation_id - (1 << 64) if correlation_id >= 1 << 63 else correlation_id


def loaded_correlation_id(stored: int) -> int:
    """A correlation id read back from the database: ``stored_correlation_id`` undone."""
    return stored + (1 << 64) if stored < 0 else stored


class DatabaseBroken(StoreError):
    """The database is corrupt, or its file was deleted or replaced under the running
    scheduler: trying again cannot help, an operator must act (the message says how).
    Answered as an internal error with that message; the store claims nothing more."""

    http_status = 500
    code = "internal"


# SQLite's primary result codes that mean a damaged database file (``sqlite3.h``).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


# SQLite's messages for those codes (``sqlite3_errstr``): Python 3.10's exceptions carry
# no code, only the message.
_CORRUPT_MESSAGES = ("database disk image is malformed", "file is not a database")


def corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite finding its database file damaged ("database disk
    image is malformed", "file is not a database")."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return any(message in str(exc) for message in _CORRUPT_MESSAGES)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means that the database cannot be used now (unreachable,
    restarting, its connection lost, its file locked or full, the store closed): worth
    trying again later, unlike an error of the scheduler's own. A damaged or replaced
    database (``DatabaseBroken``, SQLite's corruption codes) is not: no retry mends it."""
    if isinstance(exc, DatabaseBroken) or corrupt(exc):
        return False
    if isinstance(exc, (StoreError, sqlite3.OperationalError)):
        return True
    # psycopg's, if it is loaded at all (only the PostgreSQL store loads it): connection
    # failures, server shutdowns and pool timeouts are its OperationalErrors.
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


def new_dispatch_id(now: float) -> str:
    """A dispatch id: 48 bits of milliseconds, then 80 random bits, as 32 hex digits:
    unguessable, never repeated, and roughly in creation order."""
    return f"{int(now * 1000) & 0xFFFF_FFFF_FFFF:012x}{secrets.token_hex(10)}"


def children_of(parent_id: str, root_id: str, children: Sequence[NewCall]) -> list[NewCall]:
    """A Poll's calls, placed under the call that made them."""
    return [dataclasses.replace(c, parent_id=parent_id, root_id=root_id) for c in children]


def summary(call: Call) -> Call:
    """``call`` as ``Store.list`` returns it (what the stores' SQL selects)."""
    error = call.status not in (None, Status.OK.value) and len(call.result) <= LISTED_ERROR_BYTES
    return dataclasses.replace(call, input=b"", poll=b"", result=call.result if error else b"")


def call_from_row(row: Sequence[Any]) -> Call:
    """A stored call from its columns, in the order of ``Call``'s fields."""
    return Call(
        dispatch_id=row[0],
        function=row[1],
        endpoint=row[2],
        input=bytes(row[3]),
        version=row[4],
        correlation_id=loaded_correlation_id(row[5]),
        parent_id=row[6],
        root_id=row[7],
        state=State(row[8]),
        status=row[9],
        result=bytes(row[10]),
        attempts=row[11],
        created_at=row[12],
        expires_at=row[13],
        ready_at=row[14],
        finished_at=row[15],
        poll=bytes(row[16]),
        restarts=row[17],
        rerun_of=row[18],
        trace_context=row[19],
        topic=row[20],
        policy=stored_policy(row[21:26]),
        follows=row[26],
        limits=Limits(int(row[27]), row[28], int(row[29]), int(row[30]), float(row[31])),
    )


def newly_leased(row: Sequence[Any], expires: float, owner: str = "") -> Claimed:
    """A call leased as it was stored or just after (``Handoff``), from a row of
    ``lease_token, poll_max`` and its columns: new, it has no children's results to
    carry."""
    call = call_from_row(row[2:])
    return Claimed(call, Lease(call.dispatch_id, int(row[0]), expires, (), owner))


def child_from_row(row: Sequence[Any]) -> Child:
    """A child from its ``(dispatch_id, correlation_id, state, delivered, status, result,
    finished_at)`` columns."""
    return Child(
        row[0],
        loaded_correlation_id(row[1]),
        row[2] == State.DONE.value,
        bool(row[3]),
        row[4],
        bytes(row[5]),
        row[6],
    )


def stored_policy(columns: Sequence[Any]) -> CallPolicy | None:
    """A call's policy from its ``(max_attempts, attempt_timeout, backoff_initial,
    backoff_maximum, backoff_multiplier)`` columns; None when all are 0 (most calls)."""
    if not any(columns):
        return None
    return CallPolicy(int(columns[0]), *(float(c) for c in columns[1:]))


def policy_columns(policy: CallPolicy | None) -> dict[str, Any]:
    """The columns of ``policy`` by name (all 0 for None)."""
    if policy is None:
        policy = NO_POLICY
    return {
        "max_attempts": policy.max_attempts,
        "attempt_timeout": policy.attempt_timeout,
        "backoff_initial": policy.backoff_initial,
        "backoff_maximum": policy.backoff_maximum,
        "backoff_multiplier": policy.backoff_multiplier,
    }


NO_POLICY = CallPolicy()


def limit_columns(limits: Limits) -> dict[str, Any]:
    """The columns of ``limits`` by name."""
    return {
        "concurrency": limits.concurrency,
        "concurrency_key": limits.key,
        "concurrency_per_key": limits.per_key,
        "rate_count": limits.rate_count,
        "rate_period": limits.rate_period,
    }


def child_result_from_row(row: Sequence[Any]) -> ChildResult:
    """A finished child's result from its ``(dispatch_id, correlation_id, status,
    result)`` columns."""
    return ChildResult(row[0], loaded_correlation_id(row[1]), row[2], bytes(row[3]))


__all__ = [
    "COUNT_CAP",
    "END_BATCH",
    "ERROR_MESSAGE_BYTES",
    "LISTED_ERROR_BYTES",
    "NO_BOUNDS",
    "NO_LIMITS",
    "NO_POLICY",
    "OVERVIEW_FUNCTIONS",
    "PURGE_BATCH",
    "Attempt",
    "AttemptHistory",
    "Call",
    "CallPolicy",
    "Child",
    "ChildResult",
    "Claimed",
    "DatabaseBroken",
    "Finished",
    "Handoff",
    "Lease",
    "LimitStats",
    "Limits",
    "NewAttempt",
    "NewCall",
    "QueueStats",
    "RequestConflict",
    "RequestId",
    "Sent",
    "State",
    "Store",
    "StoreError",
    "TreeBounds",
    "TreeLimitExceeded",
    "attempt_from_row",
    "call_from_row",
    "child_from_row",
    "child_result_from_row",
    "children_of",
    "claim_candidates",
    "claim_window",
    "corrupt",
    "fitting",
    "handable",
    "history_of",
    "in_turns",
    "loaded_correlation_id",
    "needs_root_heads",
    "new_dispatch_id",
    "policy_columns",
    "stored_correlation_id",
    "stored_policy",
    "stored_text",
    "summary",
    "unavailable",
]
