"""The distributed store: one PostgreSQL database shared by several scheduler processes.

- Claims lock the rows they take with ``FOR UPDATE SKIP LOCKED``, so processes claiming
  at once take different calls and never wait on each other; each claim is a batch.
- A lease has an expiry and a fencing token. A process that died leaves leases that
  lapse; any process's next claim takes those calls again (no cron, no janitor).
- A hard cap per destination holds across processes: when one is asked for, claims are
  serialized by a transaction-scoped advisory lock and count the leases in force of
  every process, so that no two processes spend the same budget.
- Writes that make a call claimable now ``NOTIFY`` a channel every scheduler listens
  on; the engine's polling is the fallback when a notification is lost. Writes that end
  a call or record a retry notify another channel with its dispatch id, which wakes the
  Waits of every process on it.
- The schema is versioned in ``dispatchlet_schema`` and migrated on open under an
  advisory lock, so several processes starting at once migrate it once.

psycopg 3 (``pip install 'dispatchlet[postgres]'``) is imported by this module only.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import random
import secrets
import time
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg_pool import AsyncConnectionPool

from ...core.status import Status
from ..calls import destination
from . import (
    COUNT_CAP,
    END_BATCH,
    MAILBOX_MESSAGES,
    NO_BOUNDS,
    PURGE_BATCH,
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
    call_from_row,
    child_from_row,
    child_result_from_row,
    children_of,
    history_of,
    limit_columns,
    mailboxes_moved,
    newly_leased,
    policy_columns,
    unsendable,
)
from .claims import (
    APART_SKIPS,
    claim_candidates,
    claim_window,
    fitting,
    in_turns,
    may_find_more,
    needs_root_heads,
    oldest_apart,
)
from .idempotency import (
    CONFLICT_RETRIES,
    IdempotencyStatements,
    KeyedCalls,
    KeyedChildren,
    keys_of,
    repeated,
    request_row,
)
from .limits import (
    HELD_ROUNDS,
    NO_LIMITS,
    Admitted,
    Held,
    Limits,
    LimitStats,
    Usage,
    limit_stats_of,
    limited_ids,
    limits_by_id,
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
    ScheduleStatements,
    Synced,
    Ticked,
    advance_row,
    new_row,
    schedule_from_row,
    sync_plan,
)
from .statements import (
    CHANGED,
    CHANNEL,
    POSTGRES,
    UNBOUNDED,
    Backfill,
    Index,
    PostgresStatements,
    PurgeStatements,
    Step,
    as_columns,
    attempt_params,
    fenced,
    rows_to_insert,
)
from .stats import OVERVIEW_FUNCTIONS, Finished, QueueStats, finished_from_rows

T = TypeVar("T")
logger = logging.getLogger(__name__)

SQL = PostgresStatements()
IDEMPOTENCY = IdempotencyStatements(POSTGRES)
PURGE = PurgeStatements(POSTGRES)
SCHEDULES = ScheduleStatements(POSTGRES)
# Advisory lock keys (one 64-bit number each): the migration, and capped claims.
MIGRATION_LOCK = 0x64697370_61746368
CLAIM_LOCK = 0x64697370_636C6169
# The first of the two keys of a limited function's claim lock (the second: a hash of
# its name); a space apart from the single 64-bit keys above.
LIMITS_LOCK = 0x6C696D69
# A pooled connection idle for longer is checked before use (a round trip), so that one
# the server dropped meanwhile (a restart) is replaced, not handed to a transaction. One
# in steady use is not: if it fails, the store's caller retries.
CHECK_AFTER_IDLE = 1.0
WAIT_REREAD = 30.0
"""How often a Wait reads its call again without a notification: a listening connection
that dies silently (no error until TCP gives up) misses notifications, and the waiter
must not sleep through the end of its call for all that."""
# How many times a transaction PostgreSQL aborted to break a deadlock is run.
ABORTED_RETRIES = 5
# How often a process that finds another migrating the schema checks whether it is done.
MIGRATION_WAIT = 0.1
# A schema change waits this long for the table's lock (behind transactions in flight),
# holding up meanwhile the reads queued behind it; then it lets them pass, and tries again.
DDL_LOCK_TIMEOUT = "1s"
DDL_ATTEMPTS = 60
# Calls filled per transaction of a backfill.
BACKFILL_BATCH = 5000
# A claim's commit is not waited for on disk (``claim``).
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
# A batch of finishes' statements each read their calls one by one by primary key (see
# ``statements._done_under``): planned for the parameters given, each plan's cost follows
# the batch's size, so that PostgreSQL would plan them again at every execution (the
# plan of a generic batch never looks the cheaper); the same plan serves every batch.
GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"
# Batches of finishes written at once; the finishes that arrive meanwhile wait for the
# next batch.
FINISH_FLUSHES = 1

# Each entry moves the schema one version up; never edit one that has shipped.
MIGRATIONS: tuple[Step, ...] = (
    """
    CREATE TABLE dispatchlet_calls (
        seq            BIGSERIAL UNIQUE,
        dispatch_id    TEXT PRIMARY KEY,
        root_id        TEXT NOT NULL,
        parent_id      TEXT REFERENCES dispatchlet_calls (dispatch_id),
        correlation_id BIGINT NOT NULL DEFAULT 0,
        function       TEXT NOT NULL CHECK (function <> ''),
        endpoint       TEXT NOT NULL CHECK (endpoint <> ''),
        destination    TEXT NOT NULL,
        version        TEXT NOT NULL DEFAULT '',
        input          BYTEA NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('ready', 'running', 'waiting', 'done')),
        status         INTEGER,
        result         BYTEA NOT NULL DEFAULT '',
        attempts       INTEGER NOT NULL DEFAULT 0,
        created_at     DOUBLE PRECISION NOT NULL,
        expires_at     DOUBLE PRECISION NOT NULL,
        ready_at       DOUBLE PRECISION NOT NULL,
        finished_at    DOUBLE PRECISION,
        lease_owner    TEXT,
        lease_token    BIGINT NOT NULL DEFAULT 0,
        lease_expires  DOUBLE PRECISION,
        poll           BYTEA NOT NULL DEFAULT '',
        poll_min       INTEGER NOT NULL DEFAULT 0,
        poll_max       INTEGER NOT NULL DEFAULT 0,
        poll_until     DOUBLE PRECISION,
        restarts       INTEGER NOT NULL DEFAULT 0,
        delivered      BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX dispatchlet_calls_ready ON dispatchlet_calls (ready_at) WHERE state = 'ready';
    CREATE INDEX dispatchlet_calls_leased ON dispatchlet_calls (lease_expires)
        WHERE state = 'running';
    CREATE INDEX dispatchlet_calls_running ON dispatchlet_calls (destination)
        WHERE state = 'running';
    CREATE INDEX dispatchlet_calls_root ON dispatchlet_calls (root_id, seq);
    CREATE INDEX dispatchlet_calls_parent ON dispatchlet_calls (parent_id, state, delivered)
        WHERE parent_id IS NOT NULL;
    CREATE INDEX dispatchlet_calls_waiting ON dispatchlet_calls (poll_until)
        WHERE state = 'waiting'
    """,
    # Version 2: ready calls in the order claims take them, and each root's ready calls
    # in order, so that a claim reads a bounded window (fair to every root) rather than
    # sorting the whole backlog.
    """
    DROP INDEX dispatchlet_calls_ready;
    CREATE INDEX dispatchlet_calls_ready ON dispatchlet_calls (ready_at, seq)
        WHERE state = 'ready';
    CREATE INDEX dispatchlet_calls_ready_root ON dispatchlet_calls (root_id, ready_at, seq)
        WHERE state = 'ready'
    """,
)
# Then the schema changes written once for both stores.
MIGRATIONS += SQL.migrations()
SCHEMA_VERSION = len(MIGRATIONS)


async def _migrate(url: str) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` while the other processes on the database
    (earlier versions, in a rolling upgrade) work on: each step its own transaction with
    the version's update, so that a process that stops midway leaves a schema that works
    and the next one goes on from there; indexes built concurrently, backfills in short
    batches. One process migrates, under a session-level advisory lock on a connection of
    its own (a concurrent index build cannot run in a transaction)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        # Tried, not waited for: a process waiting for the lock in a statement would hold
        # a snapshot, which a concurrent index build waits for, as that process waits for
        # the builder's lock: a deadlock.
        while not (await _fetch(db, "SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,)))[0]:
            await asyncio.sleep(MIGRATION_WAIT)
        version = await _schema_version(db)
        for number in range(version, SCHEMA_VERSION):
            await _migrate_step(db, MIGRATIONS[number], number + 1)
    # Closing the connection released the lock.


async def _fetch(db: Connection, query: str, params: Any) -> tuple[Any, ...]:
    """The first row of ``query``'s answer (a row of NULL: none)."""
    row = await (await db.execute(query, params)).fetchone()
    return (None,) if row is None else tuple(row)


async def _schema_version(db: Connection) -> int:
    await db.execute("CREATE TABLE IF NOT EXISTS dispatchlet_schema (version INTEGER NOT NULL)")
    row = await (await db.execute("SELECT version FROM dispatchlet_schema")).fetchone()
    if row is None:
        await db.execute("INSERT INTO dispatchlet_schema VALUES (0)")
        return 0
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this "
            f"dispatchlet's {SCHEMA_VERSION}: upgrade dispatchlet to use it"
        )
    return version


async def _migrate_step(db: Connection, migration: Step, version: int) -> None:
    """Run one migration and record ``version`` (after an index or a backfill, which
    give the same result run again, in a transaction of its own)."""
    bump = "UPDATE dispatchlet_schema SET version = %s"
    if isinstance(migration, Index):
        await _build_index(db, migration)
    elif isinstance(migration, Backfill):
        await _backfill(db, migration)
    else:
        for attempt in range(1, DDL_ATTEMPTS + 1):
            try:
                async with db.transaction():
                    await db.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                    if migration.strip():
                        await db.execute(migration.encode())
                    await db.execute(bump, (version,))
                return
            except psycopg.errors.LockNotAvailable:
                if attempt == DDL_ATTEMPTS:
                    raise
                logger.info("a schema change waits for transactions on its table; again")
                await asyncio.sleep(random.uniform(0.1, 0.5))  # noqa: S311
    await db.execute(bump, (version,))


async def _build_index(db: Connection, index: Index) -> None:
    """Build ``index`` concurrently; one left invalid by a build that failed (a process
    that stopped, a cancelled statement) is dropped and built again."""
    query = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)"
    (valid,) = await _fetch(db, query, (index.name,))
    if valid is False:
        logger.warning(
            "the index %s was left invalid by a build that failed: built again", index.name
        )
        await db.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}".encode())
    await db.execute(index.create(concurrently=True).encode())


async def _backfill(db: Connection, backfill: Backfill) -> None:
    """Run ``backfill`` over the calls in dispatch id order, ``BACKFILL_BATCH`` at a time,
    each batch a transaction."""
    calls = POSTGRES.calls
    bounds = (
        f"SELECT max(dispatch_id) FROM (SELECT dispatch_id FROM {calls}"
        " WHERE dispatch_id > %(after)s ORDER BY dispatch_id LIMIT %(batch)s) AS batch"
    )
    update = backfill.update(calls, within="dispatch_id > %(after)s AND dispatch_id <= %(upto)s")
    after = ""
    while True:
        async with db.transaction():
            params = {"after": after, "batch": BACKFILL_BATCH}
            (upto,) = await _fetch(db, bounds, params)
            if upto is None:
                return
            await db.execute(update, {**params, "upto": upto})
        after = upto


def _claimable(row: Sequence[Any], now: float) -> bool:
    """Whether a call with ``(state, ready_at, lease_expires, poll_until)`` may be
    claimed at ``now``."""
    state, ready_at, lease_expires, poll_until = row
    if state == "ready":
        return bool(ready_at <= now)
    if state == "running":
        return bool(lease_expires <= now)
    return state == "waiting" and bool(poll_until <= now)


Connection = psycopg.AsyncConnection[Any]


class PostgresStore:
    """The ``Store`` contract on a PostgreSQL database, for several processes at once."""

    def __init__(self, url: str, pool: AsyncConnectionPool[Connection]) -> None:
        self.url = url
        self._pool = pool
        self._listener: asyncio.Task[None] | None = None
        self._wake: list[Callable[[], None]] = []
        self._changed: list[Callable[[str | None, str | None], None]] = []
        self._finishing: list[tuple[_Finish, asyncio.Future[bool]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._apart_skips = 0
        """How many more claims read their window at once (``_apart`` found it needed)."""

    @classmethod
    async def open(
        cls, url: str, *, max_connections: int = 8, timeout: float = 30.0
    ) -> PostgresStore:
        """The store in the database at ``url``, its schema created or migrated."""
        returned: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()

        async def check(connection: Connection) -> None:
            if time.monotonic() - returned.get(connection, 0.0) > CHECK_AFTER_IDLE:
                await AsyncConnectionPool.check_connection(connection)

        async def reset(connection: Connection) -> None:
            returned[connection] = time.monotonic()

        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            open=False,
            check=check,
            reset=reset,
            reconnect_timeout=timeout,
        )
        try:
            await pool.open(wait=True, timeout=timeout)
        except psycopg_pool.PoolTimeout as exc:
            await pool.close()
            raise StoreError(f"cannot connect to {_redacted(url)}: {exc}") from None
        store = cls(url, pool)
        try:
            await _migrate(url)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _transaction(
        self, fn: Callable[[Connection], Awaitable[T]], *, pipeline: bool = False
    ) -> T:
        """``fn`` in one transaction (its statements pipelined with ``pipeline``), run
        again when PostgreSQL broke a deadlock by aborting it (two transactions locking
        rows of one call tree in opposite orders: a root ending while one of its children
        polls) or found it could not serialize it: such a transaction changed nothing, and
        running it again is what PostgreSQL asks."""
        for attempt in range(1, ABORTED_RETRIES + 1):
            try:
                async with self._pool.connection() as connection:
                    pipelined = connection.pipeline() if pipeline else contextlib.nullcontext()
                    async with pipelined, connection.transaction():
                        return await fn(connection)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == ABORTED_RETRIES:
                    raise
                # Jitter, so that the two do not meet again in step.
                await asyncio.sleep(random.uniform(0.001, 0.01) * attempt)  # noqa: S311
        raise AssertionError("unreachable")

    async def database_time(self) -> float:
        """The database server's clock, in seconds since the epoch: every scheduler process
        on the database keeps its time by it (``clock.DatabaseClock``), whatever its own
        wall clock says."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute("SELECT extract(epoch FROM clock_timestamp())")
            row = await cursor.fetchone()
        if row is None:
            raise StoreError("the database did not tell its time")
        return float(row[0])

    # --- wake-ups ----------------------------------------------------------------------

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any process makes a call claimable now."""
        self._wake.append(wake)
        self._start_listening()

    def watch(self, changed: Callable[[str | None, str | None], None]) -> float | None:
        """Call ``changed`` whenever any process ends a call or records a retry of it."""
        self._changed.append(changed)
        self._start_listening()
        return WAIT_REREAD

    def _start_listening(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    await connection.execute(f"LISTEN {CHANGED}")
                    delay = 0.1
                    # What was notified while no one listened is found by polling, and
                    # by the waiters reading their calls again.
                    self._notify_local()
                    self._tell_changed(None, None)
                    async for notice in connection.notifies():
                        if notice.channel == CHANGED:
                            for line in notice.payload.split("\n"):
                                dispatch_id, _, root_id = line.partition(" ")
                                self._tell_changed(dispatch_id or None, root_id or None)
                        else:
                            self._notify_local()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("listening for wake-ups failed (%s); polling meanwhile", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _notify_local(self) -> None:
        for wake in self._wake:
            wake()

    def _tell_changed(self, dispatch_id: str | None, root_id: str | None) -> None:
        for changed in self._changed:
            changed(dispatch_id, root_id)

    # --- the contract ------------------------------------------------------------------

    async def dispatch(
        self,
        calls: Sequence[NewCall],
        *,
        now: float,
        request: RequestId | None = None,
        handoff: Handoff | None = None,
    ) -> list[str]:
        """``Store.dispatch``. The calls ``handoff`` chooses are leased to the receiving
        process in the Dispatch's transaction (durable, as the Dispatch is), each claim's
        fence with an owner of its own; the other processes are told of the rest only."""
        handed: list[Claimed] = []

        async def insert(db: Connection) -> list[str]:
            nonlocal handed
            ids, stored, handed = await _dispatch(db, calls, now, request, handoff)
            if len(stored) > len(handed):
                await db.execute(SQL.notify)
            return ids

        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                ids = await self._transaction(insert, pipeline=True)
                if handoff is not None:
                    handoff.claimed = handed  # only once committed
                return ids
            except psycopg.errors.UniqueViolation:
                # Another process stored the same request id or key meanwhile (and
                # committed): run again, to answer with what it stored.
                if attempt == CONFLICT_RETRIES:
                    raise
        raise AssertionError("unreachable")

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
        # Each claim's leases have an owner of their own: the fence of an attempt whose
        # claim a server crash lost refuses it though another claim got the same token.
        owner = f"{owner} {secrets.token_hex(8)}"
        room = room_as_read(room)

        async def lease(db: Connection) -> list[Claimed]:
            if cap is not None:
                await db.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))
            claimed: list[Claimed] = []
            held = Held()
            taken: Counter[str] = Counter()
            locked: set[str] = set()
            recorded = False
            for _ in range(HELD_ROUNDS):
                wanted = limit - len(claimed)
                room_now = room_left(room, taken)
                ids, limited, full, admitted = await choose(db, wanted, held, room_now, locked)
                more = await take(db, ids, wanted, limited)
                recorded = recorded or bool(limited)
                claimed += more
                # Short, with more ready calls than the window held, and some held back
                # by a limit: read the window again without them (``limits``).
                if len(claimed) >= limit or not full or not held.add(admitted):
                    break
                taken.update(destination(c.call.endpoint) for c in more)
            if claimed and not recorded and cap is None:
                # A lease is not waited for on disk (a lost one runs its call again;
                # its attempt's outcome fails the fence: the claim's owner is its own),
                # but the starts a rate limit counts are, and so are the leases a cap
                # counts (lost, the attempts still running would be uncounted).
                await db.execute(ASYNC_COMMIT)
            return claimed

        async def choose(
            db: Connection,
            wanted: int,
            held: Held,
            room: Callable[[str], int] | None,
            locked: set[str],
        ) -> tuple[list[str], dict[str, tuple[str, Limits]], bool, Admitted]:
            """The calls to take now, their limits, whether ready calls filled the
            window, and what the limits held back."""
            # Round-robin across roots, as in the SQLite store, among the oldest
            # claimable calls and the oldest of each root's; more than the batch, since
            # rows other processes hold are skipped below, and with a cap some
            # destinations may be full.
            window = claim_window(wanted)
            count = 4 * wanted
            admitted = Admitted([])
            if not held:
                apart = await self._apart(db, now, (count, window), wanted, cap, room)
                if apart is not None:
                    return apart, {}, False, admitted
            for dealt in claim_candidates(wanted):
                params = {"now": now, "window": window, "roots": count, "count": dealt}
                if held:
                    params.update(held.params(as_json=False))
                query = SQL.ranked_window_unheld if held else SQL.ranked_window
                found = await (await db.execute(query, params)).fetchall()
                ready, roots = found[0][6:8] if found else (0, 0)
                destinations = int(found[0][9]) if found else 0
                candidates = [(row[0], row[2]) for row in found]
                ids = limited_ids(found, 8)
                if not held and needs_root_heads(ready, roots, window, wanted):
                    heads = await (await db.execute(SQL.root_heads, params)).fetchall()
                    candidates = in_turns([row[:6] for row in found] + heads, dealt)
                    ids += limited_ids(heads, 6)
                    destinations = len({where for _, where in candidates}) + 1
                limited = {}
                if ids:
                    rows = await (await db.execute(SQL.limits_of, {"ids": ids})).fetchall()
                    limited = limits_by_id(rows)
                dealt_all = len(candidates) < dealt
                if limited:
                    # Counted under each limited function's lock, held to the commit of
                    # these leases: no other claim of them counts meanwhile.
                    functions = {f for f, _ in limited.values()}
                    await _lock_functions(db, functions - locked)
                    locked |= functions
                    admitted = within_limits(candidates, limited, await _usage(db, limited, now))
                    candidates = admitted.candidates
                running = {}
                if cap is not None:
                    running = await _running(db, sorted({row[1] for row in candidates}), now)
                ids = fitting(candidates, cap=cap, running=running, room=room)
                # Enough, or every candidate was dealt: else the destinations at their
                # limit left the claim short, and it deals among the whole window, if
                # a destination with room may be found there.
                if len(ids) >= wanted or dealt_all:
                    break
                if not limited and not may_find_more(
                    candidates, ids, destinations, cap=cap, running=running, room=room
                ):
                    break
            return ids, limited, ready >= window, admitted

        async def take(
            db: Connection, ids: list[str], wanted: int, limited: dict[str, tuple[str, Limits]]
        ) -> list[Claimed]:
            if not ids:
                return []
            expires = now + lease_seconds
            claim = {"owner": owner, "expires": expires, "ids": ids, "wanted": wanted, "now": now}
            # Pipelined: the leases and the results of the resumes among them, one
            # round trip.
            leased = await db.execute(SQL.claim_ids, claim)
            given = await db.execute(SQL.undelivered_claimed, {"ids": ids, "owner": owner})
            rows = sorted(await leased.fetchall(), key=lambda row: int(row[0]))
            results: dict[str, list[ChildResult]] = {}
            for row in await given.fetchall():
                results.setdefault(row[0], []).append(child_result_from_row(row[1:]))
            order = [row[3] for row in rows]  # in the order of turns
            if limited:
                await _record_starts(db, order, limited, now)
            claimed = []
            for row in rows:
                call = call_from_row(row[3:])
                carried = tuple(results.get(call.dispatch_id, ())) if call.poll else ()
                lease = Lease(
                    call.dispatch_id,
                    int(row[1]),
                    expires,
                    tuple(r.dispatch_id for r in carried),
                    owner,
                )
                claimed.append(Claimed(call, lease, carried))
            return claimed

        return await self._transaction(lease, pipeline=True)

    async def _apart(
        self,
        db: Connection,
        now: float,
        sizes: tuple[int, int],
        wanted: int,
        cap: int | None,
        room: Callable[[str], int] | None,
    ) -> list[str] | None:
        """A claim's calls from the oldest ``count`` claimable ones alone, as in the
        SQLite store (``SQLiteStore._apart``): the ``window`` is not read when they are
        ready calls of roots apart and enough of them fit, or no more could come from
        it. None when it must be; then the next few claims read it at once."""
        count, window = sizes
        if self._apart_skips:
            self._apart_skips -= 1
            return None
        params = {"now": now, "window": count}
        found = await (await db.execute(SQL.oldest_claimable, params)).fetchall()
        rows = oldest_apart(found)
        if rows is not None:
            seen = sorted({where for _, where in rows})
            running = {} if cap is None else await _running(db, seen, now)
            ids = fitting(rows, cap=cap, running=running, room=room)
            if len(ids) >= wanted or len(found) < count:
                return ids
            probe = {"now": now, "window": window, "destinations": seen}
            other = bool(await (await db.execute(SQL.other_destination, probe)).fetchall())
            destinations = len(seen) + other
            if not may_find_more(rows, ids, destinations, cap=cap, running=running, room=room):
                return ids
        self._apart_skips = APART_SKIPS
        return None

    async def release(self, lease: Lease, *, ready_at: float) -> bool:
        return await self._update(SQL.release_owned, _fenced(lease, ready_at=ready_at))

    async def extend(self, lease: Lease, *, until: float) -> bool:
        return await self._update(SQL.extend_owned, _fenced(lease, until=until))

    async def _update(self, query: str, params: dict[str, Any]) -> bool:
        # One statement: atomic by itself, one round trip with no BEGIN and COMMIT.
        async with self._pool.connection() as db:
            cursor = await db.execute(query.encode(), params)
            return cursor.rowcount == 1

    async def _select(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as db:
            return await (await db.execute(query.encode(), params)).fetchall()

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
        # Group commit: finishes that arrive while FINISH_FLUSHES batches are being
        # written wait for the next batch, so that under load many share one
        # transaction, one commit and one WAL flush; each is still fenced by its own
        # lease.
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finishing.append(((lease, status, result, now, orphans, attempt), future))
        if len(self._finishing) == 1:
            asyncio.get_running_loop().call_soon(self._flush_finishes)
        return await future

    def _flush_finishes(self) -> None:
        if not self._finishing or len(self._flushes) >= FINISH_FLUSHES:
            return  # the batch being written starts the next one when it is done
        batch, self._finishing = self._finishing, []
        task = asyncio.create_task(self._finish_batch(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        self._flush_finishes()

    async def _finish_batch(self, batch: list[tuple[_Finish, asyncio.Future[bool]]]) -> None:
        finishes = [finish for finish, _ in batch]
        try:
            # A root's finish locks its row, then its descendants': a deadlock with one of
            # them polling (which locks its row, then its root's) aborts the whole batch,
            # run again like any transaction of the store.
            finished = await self._transaction(
                lambda db: _finish_and_tell(db, finishes), pipeline=True
            )
            done = [(f[0].dispatch_id, f[0].token, f[0].owner) in finished for f, _ in batch]
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, done, strict=True):
            if not future.done():
                future.set_result(outcome)

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
        async def update(db: Connection) -> list[str] | None:
            # Pipelined: the statements that need no answer go with the next that does.
            waiting = _fenced(
                lease, poll=poll, min_results=min_results, max_results=max_results, until=until
            )
            suspended = await db.execute(SQL.suspend_owned, waiting)
            pending = None
            if children and bounds.max_children is not None:
                pending = await db.execute(SQL.pending_children, {"id": lease.dispatch_id})
            row = await suspended.fetchone()
            if row is None:
                return None
            root_id = row[0]
            if pending is not None:
                count = int((await pending.fetchone() or (0,))[0])
                if count + len(children) > (bounds.max_children or 0):
                    raise TreeLimitExceeded(
                        "children", bounds.max_children or 0, count, len(children)
                    )
            most = UNBOUNDED if bounds.max_descendants is None else bounds.max_descendants
            counted = {"root": root_id, "adding": len(children), "most": most}
            added = None
            if children:
                added = await db.execute(SQL.add_descendants_returning, counted)
            numbered = None
            if _recorded(attempt) and attempt is not None:
                numbered = await db.execute(
                    SQL.add_attempt, _fenced(lease, **attempt_params(attempt))
                )
            await _deliver(db, lease.delivered)
            placed = children_of(lease.dispatch_id, root_id, children)
            if any(child.key for child in placed):
                ids = await _insert_keyed(db, placed, now)
            else:
                ids = await _insert(db, placed, now)
            await _receive(db, lease.dispatch_id, children, ids, now)
            # Results of earlier polls (or messages kept) may be enough already.
            await db.execute(SQL.wake_notified, {"id": lease.dispatch_id, "now": now})
            if ids:
                await db.execute(SQL.notify)
            if added is not None and await added.fetchone() is None:
                found = await db.execute(SQL.descendants, counted)
                total = int((await found.fetchone() or (0,))[0])
                raise TreeLimitExceeded("descendants", most, total, len(children))
            if numbered is not None and attempt is not None:
                number = (await _one(numbered))[0]
                if number > attempt.keep:
                    params = _fenced(lease, **attempt_params(attempt), number=number)
                    await db.execute(SQL.trim_attempts, params)
            return ids

        if not any(child.key for child in children):
            return await self._transaction(update, pipeline=True)
        for retry in range(1, CONFLICT_RETRIES + 1):
            try:
                return await self._transaction(update, pipeline=True)
            except psycopg.errors.UniqueViolation:
                # Another process stored a child with the same key meanwhile: run
                # again, to follow it.
                if retry == CONFLICT_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def send(self, dispatch_id: str, topic: str, result: bytes, *, now: float) -> Sent:
        async def update(db: Connection) -> Sent:
            # Locked: a concurrent send, or the call's suspension, waits for this one.
            row = await (await db.execute(SQL.lock_call, {"id": dispatch_id})).fetchone()
            if row is None:
                return Sent.UNKNOWN
            refused = unsendable(row[0], row[1], row[2])
            if refused is not None:
                return refused
            message = {"id": dispatch_id, "topic": topic, "result": result, "now": now}
            params = {**message, "status": Status.OK.value}
            ended = await (await db.execute(SQL.deliver_message, params)).fetchone()
            if ended is not None:
                await db.execute(SQL.notify_ended, {"ids": [ended[0]]})
                await _wake(db, dispatch_id, now)
                return Sent.DELIVERED
            kept = await db.execute(SQL.keep_message, {**message, "most": MAILBOX_MESSAGES})
            return Sent.KEPT if kept.rowcount == 1 else Sent.FULL

        return await self._transaction(update)

    async def restart(
        self,
        lease: Lease,
        *,
        now: float,
        orphans: tuple[int, bytes],
        attempt: NewAttempt | None = None,
    ) -> bool:
        async def update(db: Connection) -> bool:
            cursor = await db.execute(SQL.restart_owned, _fenced(lease, now=now))
            if cursor.rowcount != 1:
                return False
            await _add_attempt(db, lease, attempt)
            # The old children's results belong to the run that was dropped; those
            # unfinished end (not the children the run to come will make).
            await _set_aside_children(db, lease.dispatch_id)
            await _end_descendants(db, lease.dispatch_id, orphans, now, set_aside_only=True)
            return True

        return await self._transaction(update)

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
        del now
        retried = _fenced(lease, status=status, result=result, ready_at=ready_at)
        if attempt is None or not _recorded(attempt):
            # One statement (atomic by itself): the retry, and its waiters told.
            return len(await self._select(SQL.retry_notified, retried)) == 1
        # The same, with its attempt in the history.
        recorded = await self._select(SQL.retry_recorded, retried | attempt_params(attempt))
        return len(recorded) == 1

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
        async def update(db: Connection) -> bool:
            handed = _fenced(
                lease,
                function=function,
                endpoint=endpoint,
                destination=destination(endpoint),
                input=input,
                now=now,
                **policy_columns(policy),
                **limit_columns(limits),
            )
            cursor = await db.execute(SQL.tail_call_owned, handed)
            if cursor.rowcount != 1:
                return False
            await _add_attempt(db, lease, attempt)
            # The function handed over to starts afresh: earlier children are not its.
            await _set_aside_children(db, lease.dispatch_id)
            return True

        return await self._transaction(update)

    async def get(self, dispatch_id: str) -> Call | None:
        rows = await self._select(SQL.get, {"id": dispatch_id})
        return call_from_row(rows[0]) if rows else None

    async def get_many(self, dispatch_ids: Sequence[str]) -> list[Call]:
        rows = await self._select(SQL.get_many, {"ids": sorted(set(dispatch_ids))})
        return [call_from_row(row) for row in rows]

    async def children(self, parent_id: str) -> list[Child]:
        rows = await self._select(SQL.children, {"id": parent_id})
        return [child_from_row(row) for row in rows]

    async def history(self, dispatch_id: str) -> AttemptHistory:
        return history_of(await self._select(SQL.history, {"id": dispatch_id}))

    async def get_with_history(self, dispatch_id: str) -> tuple[Call, AttemptHistory] | None:
        params = {"id": dispatch_id}
        # Pipelined: both in one round trip, the history read after the call.
        async with self._pool.connection() as db, db.pipeline():
            call = await db.execute(SQL.get.encode(), params)
            history = await db.execute(SQL.history.encode(), params)
            row, rows = await call.fetchone(), await history.fetchall()
        return None if row is None else (call_from_row(row), history_of(rows))

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
        query, params = SQL.list(
            state=None if state is None else state.value,
            function=function,
            root_id=root_id,
            status=status,
            failed=failed,
            newest_first=newest_first,
            after=after,
            limit=limit,
            parent_id=parent_id,
            rerun_of=rerun_of,
            created_after=created_after,
            created_before=created_before,
        )
        return [call_from_row(row) for row in await self._select(query, params)]

    async def cancel(self, dispatch_id: str, status: int, result: bytes, *, now: float) -> int:
        async def end(db: Connection) -> int:
            params = {"id": dispatch_id, "status": status, "result": result, "now": now}
            row = await (await db.execute(SQL.cancel, params)).fetchone()
            if row is None:
                return 0
            await db.execute(SQL.notify_ended, {"ids": [dispatch_id]})
            if row[0] is not None:
                await _wake(db, row[0], now)
            return 1 + await _end_descendants(db, dispatch_id, (status, result), now)

        return await self._transaction(end)

    async def end_descendants(self, *, now: float, limit: int = END_BATCH) -> int:
        async def end(db: Connection) -> int:
            # Locked, skipping those another process is ending.
            queued = await (await db.execute(SQL.endings, {"limit": limit})).fetchall()
            return await _end_batch(db, queued, now, limit, settled=True)

        return await self._transaction(end)

    async def count_by_state(self, *, cap: int = COUNT_CAP) -> dict[State, int]:
        rows = await self._select(SQL.count_by_state, {"cap": cap})
        return {State(state): int(count) for state, count in rows}

    async def purge(
        self,
        *,
        before: float,
        status: int | None = None,
        failed: bool = False,
        limit: int = PURGE_BATCH,
    ) -> int:
        query, params = PURGE.roots_query(status=status, failed=failed)

        async def delete(db: Connection) -> int:
            # Locked, skipping the roots another process is purging.
            found = await db.execute(query, {**params, "before": before, "limit": limit})
            doomed: list[str] = []
            created: set[float] = set()
            for root, root_created in await found.fetchall():
                room = limit - len(doomed)
                cursor = await db.execute(PURGE.members, {"root": root, "limit": room})
                members = await cursor.fetchall()
                if len(members) >= room and doomed:
                    break  # for the next batch, whole
                doomed += [member[0] for member in members]
                created.update(member[1] for member in members)
                if len(members) >= room:
                    break  # its root in a later batch, once the rest is gone
                doomed.append(root)
                created.add(root_created)
            if not doomed:
                return 0
            for statement in (*PURGE.delete_dependents, PURGE.delete):
                await db.execute(statement, {"ids": doomed})
            await db.execute(PURGE.delete_requests, {"created": sorted(created)})
            return len(doomed)

        return await self._transaction(delete)

    async def count_unstored(self, lease: Lease) -> int | None:
        rows = await self._select(SQL.count_unstored_owned, _fenced(lease))
        return int(rows[0][0]) if rows else None

    # --- actions on a call ---------------------------------------------------------------

    async def retry_now(self, dispatch_id: str, *, now: float) -> tuple[State, bool] | None:
        async def update(db: Connection) -> tuple[State, bool] | None:
            params = {"id": dispatch_id, "now": now}
            brought = (await db.execute(SQL.retry_now, params)).rowcount > 0
            if brought:
                # Another process may claim it: told at commit.
                await db.execute(SQL.notify)
            row = await (await db.execute(SQL.state_of, {"id": dispatch_id})).fetchone()
            return None if row is None else (State(row[0]), brought)

        return await self._transaction(update)

    async def limit_stats(self, *, now: float) -> Sequence[LimitStats]:
        running = await self._select(SQL.limited_in_flight, {"now": now})
        rates = await self._select(SQL.rate_stats, {"now": now})
        return limit_stats_of(running, rates)

    async def queue_stats(self, *, now: float) -> QueueStats:
        (row,) = await self._select(SQL.queue_stats, {"now": now})
        return QueueStats(*row)

    async def finished_stats(
        self, *, since: float, now: float, limit: int = OVERVIEW_FUNCTIONS
    ) -> Finished:
        window = {"since": since, "now": now}
        minutes = await self._select(SQL.finished_per_minute, window)
        functions = await self._select(SQL.finished_by_function, window | {"limit": limit})
        return finished_from_rows(minutes, functions)

    # --- schedules -----------------------------------------------------------------------

    async def create_schedule(self, schedule: NewSchedule, *, now: float) -> Schedule:
        async def insert(db: Connection) -> Schedule:
            await db.execute(SCHEDULES.insert, new_row(schedule, now))
            cursor = await db.execute(SCHEDULES.one, {"name": schedule.name})
            return schedule_from_row(await _one(cursor))

        try:
            return await self._transaction(insert)
        except psycopg.errors.UniqueViolation:
            raise ScheduleExists(f"a schedule named {schedule.name!r} exists already") from None

    async def schedules(self) -> builtins.list[Schedule]:
        return builtins.list(
            schedule_from_row(row) for row in await self._select(SCHEDULES.all, {})
        )

    async def get_schedule(self, name: str) -> Schedule | None:
        rows = await self._select(SCHEDULES.one, {"name": name})
        return schedule_from_row(rows[0]) if rows else None

    async def pause_schedule(
        self, name: str, *, paused: bool, next_tick: float | None, now: float
    ) -> Schedule | None:
        params = {"name": name, "paused": int(paused), "next_tick": next_tick, "now": now}

        async def update(db: Connection) -> Schedule | None:
            await db.execute(SCHEDULES.set_paused, params)
            row = await (await db.execute(SCHEDULES.one, {"name": name})).fetchone()
            return None if row is None else schedule_from_row(row)

        return await self._transaction(update)

    async def delete_schedule(self, name: str) -> bool:
        return await self._update(SCHEDULES.delete, {"name": name})

    async def sync_schedules(
        self, owner: str, wanted: Sequence[NewSchedule], *, now: float
    ) -> Synced:
        async def sync(db: Connection) -> Synced:
            # Two syncs at once (two processes starting) take turns on the table.
            await db.execute(SCHEDULES_LOCK)
            rows = await (await db.execute(SCHEDULES.all)).fetchall()
            plan = sync_plan(owner, builtins.list(schedule_from_row(row) for row in rows), wanted)
            async with db.cursor() as cursor:
                for query, changes in (
                    (SCHEDULES.insert, [new_row(new, now) for new in plan.insert]),
                    (SCHEDULES.update, [new_row(new, now) for new in plan.update]),
                    (SCHEDULES.delete, [{"name": name} for name in plan.delete]),
                ):
                    if changes:
                        await cursor.executemany(query, changes)
            return plan.synced

        try:
            return await self._transaction(sync)
        except psycopg.errors.UniqueViolation:
            # A schedule of a declared name created by hand meanwhile.
            raise ScheduleExists("a schedule of a declared name was created meanwhile") from None

    async def tick_schedules(
        self, *, now: float, plan: Planner, limit: int
    ) -> builtins.list[Ticked]:
        async def tick(db: Connection) -> builtins.list[Ticked]:
            cursor = await db.execute(SCHEDULES.due, {"now": now, "limit": limit})
            ticked: builtins.list[Ticked] = []
            for schedule in map(schedule_from_row, await cursor.fetchall()):
                planned = plan(schedule)
                if planned is None:
                    continue
                (dispatch_id,), stored, _ = await _dispatch(db, [planned.call], now, None)
                if stored:
                    await db.execute(SQL.notify)
                await db.execute(SCHEDULES.advance, advance_row(schedule, planned, dispatch_id))
                ticked.append(Ticked(schedule.name, planned.tick, dispatch_id))
            return ticked

        return await self._transaction(tick)

    async def next_schedule_tick(self) -> float | None:
        (row,) = await self._select(SCHEDULES.earliest, {})
        return None if row[0] is None else float(row[0])

    async def close(self) -> None:
        # Every finish waiting or being written is written first. Done batches are
        # dropped here rather than left to their callbacks, which may not have run yet.
        while True:
            self._flushes = {task for task in self._flushes if not task.done()}
            self._flush_finishes()
            if not self._flushes:
                break
            await asyncio.wait(list(self._flushes))
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._pool.close()


_Finish = tuple[Lease, int, bytes, float, tuple[int, bytes], NewAttempt | None]


SCHEDULES_LOCK = "LOCK TABLE dispatchlet_calls_schedules IN SHARE ROW EXCLUSIVE MODE"
"""Taken by a sync: its reads and writes of the schedules in turn with another's."""


async def _one(cursor: Any) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = await cursor.fetchone()
    if row is None:
        raise StoreError("a row just written was not found")
    return row


def _fenced(lease: Lease, **values: Any) -> dict[str, Any]:
    """The parameters of a statement fenced by ``lease``: its token and its owner."""
    return fenced(lease, owner=lease.owner, **values)


def _recorded(attempt: NewAttempt | None) -> bool:
    """Whether ``attempt`` goes into its call's history (not with history off)."""
    return attempt is not None and attempt.keep > 0


async def _add_attempt(db: Connection, lease: Lease, attempt: NewAttempt | None) -> None:
    """Add ``attempt`` to the history of the call under ``lease`` (just updated under
    it, in this transaction), keeping its latest ``attempt.keep``."""
    if attempt is None or not _recorded(attempt):
        return
    params = _fenced(lease, **attempt_params(attempt))
    row = await (await db.execute(SQL.add_attempt, params)).fetchone()
    assert row is not None
    if row[0] > attempt.keep:
        await db.execute(SQL.trim_attempts, {**params, "number": row[0]})


async def _finish_and_tell(
    db: Connection, finishes: Sequence[_Finish]
) -> set[tuple[str, int, str]]:
    """``_finish_all``, and the waiters of the calls that ended told."""
    finished = await _finish_all(db, finishes)
    if finished:
        ended = [dispatch_id for dispatch_id, *_ in finished]
        await db.execute(SQL.notify_ended, {"ids": ended})
    return finished


async def _finish_all(db: Connection, finishes: Sequence[_Finish]) -> set[tuple[str, int, str]]:
    """Record a batch of finishes, each fenced by its own lease, in a few statements for
    the whole batch (pipelined: the later ones act only on the finishes that took
    effect), then end the first ``END_BATCH`` of their unfinished descendants; the
    (dispatch id, lease token, lease owner) of each finish that took effect."""
    leases = [lease for lease, *_ in finishes]
    params = {
        "ids": [lease.dispatch_id for lease in leases],
        "tokens": [lease.token for lease in leases],
        "owners": [lease.owner for lease in leases],
        "statuses": [status for _, status, *_ in finishes],
        "results": [result for _, _, result, *_ in finishes],
        "nows": [finish[3] for finish in finishes],
        "orphan_statuses": [finish[4][0] for finish in finishes],
        "orphan_results": [finish[4][1] for finish in finishes],
    }
    await db.execute(GENERIC_PLANS)
    finished = await db.execute(SQL.finish_all, params)
    queued = await db.execute(SQL.queue_endings_all, params)
    await db.execute(SQL.wake_parents_all, params)
    took = {(row[0], int(row[1]), row[2]) for row in await finished.fetchall()}
    # What only the finishes that took effect record, sent with the commit: the
    # results their attempts were given delivered, and the attempts in the history (in
    # the same transaction as the finishes they record).
    kept = [f for f in finishes if (f[0].dispatch_id, f[0].token, f[0].owner) in took]
    given = {
        "given": [child for lease, *_ in kept for child in lease.delivered],
        "given_to": [lease.dispatch_id for lease, *_ in kept for _ in lease.delivered],
        "given_token": [lease.token for lease, *_ in kept for _ in lease.delivered],
    }
    if given["given"]:
        await db.execute(SQL.deliver_all, given)
    attempts = _attempts_of(kept)
    if attempts["attempt_ids"]:
        await db.execute(SQL.add_attempts_all, attempts)
    latest = max(finish[3] for finish in finishes)
    await _end_batch(db, await queued.fetchall(), latest, END_BATCH, settled=False)
    return took


def _attempts_of(finishes: Sequence[_Finish]) -> dict[str, list[Any]]:
    """The parameters of ``add_attempts_all`` for the attempts of ``finishes``."""
    given = [
        (finish[0], attempt_params(attempt))
        for finish in finishes
        if (attempt := finish[5]) is not None and _recorded(attempt)
    ]
    return {
        "attempt_ids": [lease.dispatch_id for lease, _ in given],
        "attempt_tokens": [lease.token for lease, _ in given],
        "attempt_functions": [p["attempt_function"] for _, p in given],
        "attempt_starts": [p["attempt_started_at"] for _, p in given],
        "attempt_durations": [p["attempt_duration"] for _, p in given],
        "attempt_statuses": [p["attempt_status"] for _, p in given],
        "attempt_types": [p["attempt_error_type"] for _, p in given],
        "attempt_messages": [p["attempt_error_message"] for _, p in given],
        "attempt_keeps": [p["attempt_keep"] for _, p in given],
    }


async def _running(db: Connection, destinations: list[str], now: float) -> dict[str, int]:
    """Leases in force per destination, every process's (the caller holds the claim
    lock, so that none is taken meanwhile)."""
    params = {"now": now, "destinations": destinations}
    rows = await (await db.execute(SQL.running, params)).fetchall()
    return {row[0]: int(row[1]) for row in rows}


async def _lock_functions(db: Connection, functions: set[str]) -> None:
    """Take the claim lock of each of ``functions`` (``limits``), in the order of their
    keys, so that two claims never wait on each other crosswise."""
    if functions:
        params = {"limits": LIMITS_LOCK, "functions": sorted(functions)}
        await db.execute(SQL.lock_functions, params)


async def _usage(db: Connection, limited: dict[str, tuple[str, Limits]], now: float) -> Usage:
    """What the functions of ``limited`` calls use now, every process's (the caller
    holds their locks)."""
    usage = Usage()
    params = {"now": now, "functions": sorted({f for f, _ in limited.values()})}
    for function, key, count in await (await db.execute(SQL.limited_running, params)).fetchall():
        usage.add_running(function, key, int(count))
    for function, period in rate_periods(limited):
        params = {"function": function, "since": now - period}
        row = await (await db.execute(SQL.count_starts, params)).fetchone()
        usage.started[function, period] = int(row[0]) if row else 0
    return usage


async def _record_starts(
    db: Connection, ids: Sequence[str], limited: dict[str, tuple[str, Limits]], now: float
) -> None:
    """Record the starts of the rate-limited calls among ``ids``, those no period still
    counts dropped."""
    for dispatch_id in ids:
        function, lim = limited.get(dispatch_id, ("", NO_LIMITS))
        if lim.rate_count > 0:
            since = now - lim.rate_period
            await db.execute(SQL.prune_starts, {"function": function, "since": since})
            started = {"function": function, "now": now, "rate_count": lim.rate_count}
            await db.execute(SQL.add_start, {**started, "rate_period": lim.rate_period})


async def _insert(db: Connection, calls: Sequence[NewCall], now: float) -> list[str]:
    ids, rows = rows_to_insert(calls, now)
    await _insert_rows(db, rows)
    return ids


async def _insert_handing(
    db: Connection, calls: Sequence[NewCall], now: float, handoff: Handoff | None
) -> tuple[list[str], list[Claimed]]:
    """``calls`` stored in order, those ``handoff`` chooses already leased to it, as a
    claim leases (the row a claim would leave, written once rather than written and then
    updated); the leased ones in the order of ``calls``."""
    chosen = [] if handoff is None else handoff.chosen(calls, now)
    if handoff is None or not chosen:
        return await _insert(db, calls, now), []
    ids, rows = rows_to_insert(calls, now)
    owner = f"{handoff.owner} {secrets.token_hex(8)}"  # a claim's own, as in ``claim``
    expires = now + handoff.lease_seconds
    lease = {"owner": owner, "expires": expires}
    if len(rows) == 1:
        found = await (await db.execute(SQL.insert_leased, {**rows[0], **lease})).fetchall()
    else:
        leased = [False] * len(rows)
        for index in chosen:
            leased[index] = True
        params = {**as_columns(rows), **lease, "leased": leased}
        found = await (await db.execute(SQL.insert_rows_leasing, params)).fetchall()
    handed = {row[2]: newly_leased(row, expires, owner) for row in found}
    return ids, [handed[ids[index]] for index in chosen]


async def _insert_rows(db: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` inserted in one statement (a row alone, in the plain one)."""
    if len(rows) == 1:
        await db.execute(SQL.insert, rows[0])
    elif rows:
        await db.execute(SQL.insert_rows, as_columns(rows))


async def _insert_keyed(db: Connection, children: Sequence[NewCall], now: float) -> list[str]:
    """A Poll's children, some with keys: those whose key is known follow its call."""
    params = {"keys": keys_of(children)}
    found = await (await db.execute(IDEMPOTENCY.find_keys, params)).fetchall()
    keyed = KeyedChildren(children, {key: dispatch_id for key, dispatch_id in found})
    ids, rows = keyed.rows(now)
    await _insert_rows(db, rows)
    new_keys = keyed.new_keys(ids)
    if new_keys:
        async with db.cursor() as cursor:
            await cursor.executemany(IDEMPOTENCY.insert_key, new_keys)
    return ids


async def _dispatch(
    db: Connection,
    calls: Sequence[NewCall],
    now: float,
    request: RequestId | None,
    handoff: Handoff | None = None,
) -> tuple[list[str], list[str], list[Claimed]]:
    """``Store.dispatch`` in one transaction: a known request id answered with its ids,
    calls with known keys answered with their calls' ids, the others stored; the ids,
    the ids of the calls stored, and those of them ``handoff`` chose, leased to it. A
    concurrent duplicate fails on a primary key."""
    if request is not None:
        params = {"request_id": request.id}
        row = await (await db.execute(IDEMPOTENCY.find_request, params)).fetchone()
        if row is not None:
            return repeated(request, row[0], row[1]), [], []
    keys = keys_of(calls)
    known: dict[str, str] = {}
    if keys:
        rows = await (await db.execute(IDEMPOTENCY.find_keys, {"keys": keys})).fetchall()
        known = {found: dispatch_id for found, dispatch_id in rows}
    keyed = KeyedCalls(calls, known)
    stored, handed = await _insert_handing(db, keyed.fresh, now, handoff)
    for moved in mailboxes_moved(keyed.fresh, stored):
        await db.execute(SQL.move_messages, moved)
    new_keys = keyed.new_keys(stored)
    if new_keys:
        async with db.cursor() as cursor:
            await cursor.executemany(IDEMPOTENCY.insert_key, new_keys)
    ids = keyed.ids(stored)
    if request is not None:
        await db.execute(IDEMPOTENCY.insert_request, request_row(request, ids, now))
    return ids, stored, handed


async def _undelivered(db: Connection, parent_id: str, limit: int) -> tuple[ChildResult, ...]:
    params = {"id": parent_id, "limit": max(limit, 1)}
    rows = await (await db.execute(SQL.undelivered, params)).fetchall()
    return tuple(child_result_from_row(row) for row in rows)


async def _deliver(db: Connection, ids: Sequence[str]) -> None:
    if ids:
        await db.execute(SQL.deliver, {"ids": list(ids)})


async def _end_descendants(
    db: Connection,
    dispatch_id: str,
    orphans: tuple[int, bytes],
    now: float,
    *,
    set_aside_only: bool = False,
) -> int:
    """End the call's unfinished descendants with ``orphans`` (only its children set
    aside, and theirs, with ``set_aside_only``): the first ``END_BATCH`` now, the rest
    queued for ``end_descendants``; how many were ended now."""
    status, result = orphans
    params = {"ids": [dispatch_id], "status": status, "result": result}
    queued = await db.execute(SQL.queue_endings, {**params, "set_aside_only": int(set_aside_only)})
    return await _end_batch(db, await queued.fetchall(), now, END_BATCH, settled=False)


async def _end_batch(
    db: Connection, queued: list[Any], now: float, limit: int, *, settled: bool
) -> int:
    """End about ``limit`` unfinished children of the ``queued`` endings' calls, then
    of the children ended that have some, breadth first; an ending whose call has none
    left is removed, the others stay queued. How many calls were ended (and, when
    ``settled``, endings removed: what was done)."""
    done = 0
    work = deque(queued)
    while work and done < limit:
        source, status, result, set_aside_only = work.popleft()
        params = {"status": status, "result": result, "now": now, "id": source}
        asked = limit - done
        cursor = await db.execute(
            SQL.end_children, {**params, "set_aside_only": set_aside_only, "limit": asked}
        )
        ended = [row[0] for row in await cursor.fetchall()]
        done += len(ended)
        if ended:
            # Their waiters are told, by their tree (they share one).
            await db.execute(SQL.notify_tree, {"ids": ended[:1]})
        if len(ended) < asked:
            await db.execute(SQL.ended_all, {"id": source})
            if settled:
                done += 1
        if ended:
            queue = {"ids": ended, "status": status, "result": result, "set_aside_only": 0}
            work.extend(await (await db.execute(SQL.queue_endings, queue)).fetchall())
    return done


async def _set_aside_children(db: Connection, dispatch_id: str) -> None:
    """The call is ready again with no Poll: its children's results are no longer for
    it; the others are told it is ready."""
    await db.execute(SQL.set_aside_children, {"id": dispatch_id})
    await db.execute(SQL.notify)


async def _receive(
    db: Connection, parent_id: str, children: Sequence[NewCall], ids: Sequence[str], now: float
) -> None:
    """The receives among a Poll's children just stored: each takes the oldest message
    kept on its topic, or waits for one."""
    for child, child_id in zip(children, ids, strict=True):
        if child.topic is None:
            continue
        receive = {"id": child_id, "topic": child.topic}
        params = {"id": parent_id, "topic": child.topic}
        taken = await (await db.execute(SQL.take_message, params)).fetchone()
        if taken is None:
            await db.execute(SQL.await_message, receive)
        else:
            ended = {"status": Status.OK.value, "result": taken[0], "now": now}
            await db.execute(SQL.received, {**receive, **ended})


async def _wake(db: Connection, parent_id: str, now: float) -> None:
    """Make a waiting parent ready once it has the results it waits for."""
    cursor = await db.execute(SQL.wake, {"id": parent_id, "now": now})
    if cursor.rowcount:
        await db.execute(SQL.notify)


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the database"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})
