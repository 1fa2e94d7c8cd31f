"""The embedded store: one SQLite database file, for one scheduler process.

Durability: WAL journal, each durable transaction's COMMIT followed by an fsync of the
WAL file (what ``synchronous=FULL`` does inside the COMMIT, done by the writer itself so
that a Dispatch's handed-over calls start while it runs), so a transaction that
returned is on disk before the scheduler acknowledges anything it holds; but for leases
(a claim, an extension), which need not outlive a power loss and commit without an fsync
of their own (``sqlite_writer``). Every write runs on one thread of its own, in order, each
atomic; writes that queue up are committed together (group commit); the asyncio side
awaits its write's commit.
Reads (``get``, ``list``) run beside the writes on threads of their own, each with a
read-only connection: WAL lets readers see the last commit while the writer goes on,
so that a slow List never holds up a Dispatch. The schema is versioned
(``PRAGMA user_version``) and migrated when the store opens; a database written by a
newer version is refused, not guessed at.

A damaged database is refused at open (``PRAGMA quick_check``), and one found damaged
later, or whose file is deleted or replaced while the store has it open (checked
before every transaction: two ``stat`` calls), ends the store's use of it: each
operation then raises ``DatabaseBroken`` with a message that says what to do, and
``claim`` finds nothing, so that the engine stops taking calls from it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    DatabaseBroken,
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
    corrupt,
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
from .sqlite_writer import BUSY_TIMEOUT_MS, NeedsDurability, Writer
from .statements import (
    SQLITE,
    UNBOUNDED,
    Backfill,
    Index,
    PurgeStatements,
    Statements,
    Step,
    attempt_params,
    fenced,
    rows_to_insert,
)
from .stats import OVERVIEW_FUNCTIONS, Finished, QueueStats, finished_from_rows

T = TypeVar("T")
SQL = Statements(SQLITE)
IDEMPOTENCY = IdempotencyStatements(SQLITE)
PURGE = PurgeStatements(SQLITE)
SCHEDULES = ScheduleStatements(SQLITE)
logger = logging.getLogger(__name__)

READERS = 2
"""Threads (each with its read-only connection) that serve ``list`` and the other reads
that are not lookups by key (``_lookup``)."""
MARK_EVERY = 1.0
"""How often, at most, the latest time written is recorded (``clock``), in seconds: every
time the store writes is earlier than the mark and this."""

# Each entry moves the schema one version up; never edit one that has shipped.
MIGRATIONS: tuple[Step, ...] = (
    """
    CREATE TABLE calls (
        dispatch_id    TEXT PRIMARY KEY,
        root_id        TEXT NOT NULL,
        parent_id      TEXT REFERENCES calls (dispatch_id),
        correlation_id INTEGER NOT NULL DEFAULT 0,
        function       TEXT NOT NULL CHECK (function <> ''),
        endpoint       TEXT NOT NULL CHECK (endpoint <> ''),
        version        TEXT NOT NULL DEFAULT '',
        input          BLOB NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('ready', 'running', 'waiting', 'done')),
        status         INTEGER,
        result         BLOB NOT NULL DEFAULT x'',
        attempts       INTEGER NOT NULL DEFAULT 0,
        created_at     REAL NOT NULL,
        expires_at     REAL NOT NULL,
        ready_at       REAL NOT NULL,
        finished_at    REAL,
        lease_owner    TEXT,
        lease_token    INTEGER NOT NULL DEFAULT 0,
        lease_expires  REAL,
        poll           BLOB NOT NULL DEFAULT x'',
        poll_min       INTEGER NOT NULL DEFAULT 0,
        poll_max       INTEGER NOT NULL DEFAULT 0,
        poll_until     REAL,
        restarts       INTEGER NOT NULL DEFAULT 0,
        delivered      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX calls_ready ON calls (ready_at) WHERE state = 'ready';
    CREATE INDEX calls_leased ON calls (lease_expires) WHERE state = 'running';
    CREATE INDEX calls_root ON calls (root_id, dispatch_id);
    CREATE INDEX calls_parent ON calls (parent_id, state, delivered) WHERE parent_id IS NOT NULL;
    CREATE INDEX calls_waiting ON calls (poll_until) WHERE state = 'waiting';
    """,
    # Version 2: each call's destination (its endpoint's host, or its function ARN),
    # for a cap on the calls running per destination; filled in by ``_backfill``.
    """
    ALTER TABLE calls ADD COLUMN destination TEXT NOT NULL DEFAULT '';
    CREATE INDEX calls_running ON calls (destination) WHERE state = 'running';
    """,
    # Version 3: each root's ready calls in order, for claims that stay fair to every
    # root without reading the whole backlog.
    """
    CREATE INDEX calls_ready_root ON calls (root_id, ready_at) WHERE state = 'ready';
    """,
)
# Then the schema changes written once for both stores.
MIGRATIONS += SQL.migrations()
SCHEMA_VERSION = len(MIGRATIONS)


class SQLiteStore:
    """The ``Store`` contract on one SQLite file (``":memory:"`` for tests)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatchlet-sqlite")
        self._connection: sqlite3.Connection | None = None
        # Reads on connections of their own, but for a database in memory, which is
        # the writer's connection alone.
        self._readers: Executor = self._executor
        if self.path != ":memory:":
            self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="dispatchlet-read")
        self._local = threading.local()
        self._reading: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._file: int | None = None
        """A descriptor of the database file opened, to tell it from the path's file."""
        self._wal: int | None = None
        """A descriptor of the WAL file, for its fsync (``_sync_wal``)."""
        self._broken: str | None = None
        """Why the database may no longer be used, once it may not."""
        self._writer = Writer(
            self._executor,
            lambda: self._connection,
            self._check_file,
            self._sync_wal,
            MARK_EVERY,
            on_loop=MANUAL_SYNC and self.path != ":memory:",
        )
        self._starts_recorded = False
        """Whether the last claim recorded rate-limited starts (the next one likely will)."""
        self._apart_skips = 0
        """How many more claims read their window at once (``_apart`` found it needed)."""
        self._written_until: float | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SQLiteStore:
        """The store at ``path``, created or migrated to the current schema."""
        store = cls(path)
        try:
            await store._run(store._open)
        except BaseException:
            await store.close()
            raise
        return store

    # --- the thread that owns the connection ----------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, executor: Executor | None = None) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor or self._executor, fn, *args)
        except sqlite3.DatabaseError as exc:
            if not corrupt(exc):
                raise
            raise self._damaged(exc) from exc

    def _damaged(self, exc: sqlite3.DatabaseError) -> DatabaseBroken:
        """The error for SQLite finding the file damaged: the store stops using it."""
        return self._break(
            f"the database {self.path} is corrupt ({exc}): the scheduler accepts no "
            f"calls and claims none. Stop it, then {_REPAIR.format(path=self.path)}"
        )

    def _open(self) -> None:
        memory = self.path == ":memory:"
        existing = not memory and os.path.exists(self.path)
        if not memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun explicitly, IMMEDIATE so that a writer
        # never upgrades a read lock midway.
        # Used by the writer's thread, and by the event loop's while that thread is idle
        # (``Writer``), never by both at once.
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._connection = connection
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            if existing:
                self._check_integrity(connection)
        except sqlite3.DatabaseError as exc:
            if not corrupt(exc):
                raise
            raise DatabaseBroken(self._refusal(str(exc))) from None
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not memory:
            self._file = os.open(self.path, os.O_RDONLY)
        self._migrate(connection)
        (mark,) = connection.execute("SELECT max(mark) FROM clock").fetchone()
        if mark:
            self._written_until = mark + MARK_EVERY
        if not memory and MANUAL_SYNC:
            # From here the writer syncs the WAL itself after each durable COMMIT.
            connection.execute("PRAGMA synchronous = NORMAL")
            # Its descriptor opened now, not at the first sync: connections arriving
            # then may have taken every descriptor the process may open.
            with contextlib.suppress(FileNotFoundError):
                self._wal = os.open(self.path + "-wal", os.O_RDONLY)

    def _sync_wal(self) -> None:
        """Put every commit so far on disk: an fsync of the WAL file, as
        ``synchronous = FULL`` does at each COMMIT (the writer thread's). A failed one
        breaks the store: what it committed may not be on disk, and later commits
        cannot say otherwise (an fsync error is reported once)."""
        if self._file is None or not MANUAL_SYNC:
            return  # in memory, or the COMMIT synced (``synchronous = FULL``)
        wal = self.path + "-wal"
        try:
            if self._wal is not None and not _same_file(self._wal, wal):
                os.close(self._wal)  # a WAL file made anew: sync that one
                self._wal = None
            if self._wal is None:
                self._wal = os.open(wal, os.O_RDONLY)
            _fdatasync(self._wal)
        except OSError as exc:
            raise self._break(
                f"the database's WAL file {wal} could not be synced to disk ({exc}): what "
                "the scheduler committed last may not be on disk, so it accepts no calls "
                "and claims none. Check the disk, then restart it"
            ) from exc

    def written_until(self) -> float | None:
        """A time later than every time an earlier process wrote in this database (ready
        and lease times, ...), if one wrote: a clock that starts from it finds the calls
        ready then ready now, whatever the wall clock did between the two processes."""
        return self._written_until

    def _check_integrity(self, connection: sqlite3.Connection) -> None:
        """Refuse a damaged database before anything is written to it. ``quick_check``
        reads every page once, but skips the cross-check of indexes against their
        tables that makes ``integrity_check`` five times slower: 0.25 to 0.35 s for
        200,000 calls (120 MB) on a loaded 2-core machine, once per start."""
        problems = [str(row[0]) for row in connection.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            lines = [line for problem in problems for line in problem.splitlines()]
            found = [line for line in lines if not line.startswith("***")]  # "*** in main ***"
            raise DatabaseBroken(self._refusal("; ".join(found)))

    def _refusal(self, problem: str) -> str:
        return (
            f"the database {self.path} is damaged ({problem[:500]}): the scheduler will not "
            f"start on it; {_REPAIR.format(path=self.path)}"
        )

    def _check_file(self) -> None:
        """Raise ``DatabaseBroken`` if the database may no longer be used: it was found
        damaged, or the file the store opened is no longer at its path (deleted, or
        replaced by another), where writing on would be lost with it."""
        if self._broken is not None:
            raise DatabaseBroken(self._broken)
        if self._file is None:
            return
        opened = os.fstat(self._file)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        if now is None:
            problem = "was deleted"
        elif (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            problem = "was replaced by another file"
        elif opened.st_nlink == 0:
            problem = "was deleted"
        else:
            return
        # The file opened lives on while this process holds it (Linux shows it).
        copy = ""
        if os.path.isdir("/proc/self/fd"):
            copy = (
                f"; while it runs, that file can still be copied from "
                f"/proc/{os.getpid()}/fd/{self._file}"
            )
        raise self._break(
            f"the database file {self.path} {problem} while the scheduler ran. The "
            f"scheduler accepts no calls and claims none from the file it opened{copy}. "
            f"Stop it, put the database back at {self.path} (or restore it from a backup), "
            "and start it again"
        )

    def _break(self, reason: str) -> DatabaseBroken:
        """Stop using the database for ``reason``, logged once; the error to raise."""
        with self._lock:
            first = self._broken is None
            if first:
                self._broken = reason
        if first:
            logger.critical("%s", reason)
        return DatabaseBroken(self._broken or reason)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (a reading thread's, or the caller's for a
        ``_lookup``)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            uri = f"{Path(self.path).absolute().as_uri()}?mode=ro"
            # Closed by ``close``, from another thread, once this one has stopped.
            connection = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._local.connection = connection
            with self._lock:
                self._reading.append(connection)
        return connection

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on a read-only connection: one statement, so one snapshot of the last
        commit (the writer's connection for a database in memory)."""
        if self._connection is None:
            raise StoreError("the store is closed")
        self._check_file()
        if self._readers is self._executor:
            return fn(self._connection)
        return fn(self._reader())

    async def _select(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._read, fn, executor=self._readers)

    async def _lookup(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn``, a lookup by key (short indexed statements), on a read-only connection
        of the calling thread's own: the hop to a reading thread and back costs several
        times the lookup (every Wait reads a call and its history). On a database in
        memory, as ``_select`` (its one connection is the writer's)."""
        if self._readers is self._executor:
            return await self._select(fn)
        try:
            return self._read(fn)
        except sqlite3.DatabaseError as exc:
            if not corrupt(exc):
                raise
            raise self._damaged(exc) from exc

    def _migrate(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this "
                    f"dispatchlet's {SCHEMA_VERSION}: upgrade dispatchlet to use it"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[number]):
                    connection.execute(statement)
            if version < 2 <= SCHEMA_VERSION:
                _backfill_destinations(connection)
            # PRAGMA takes no parameters; the value is this module's own integer.
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    async def _write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        now: float | None = None,
        *,
        durable: bool = True,
        committed: Callable[[T], None] | None = None,
        small: bool = False,
    ) -> T:
        """``fn`` in a transaction of the writer's, once committed (with an fsync if
        ``durable``; ``committed`` told before it); ``now``, the time it writes by,
        recorded as the latest written if it is ``MARK_EVERY`` past the last one (see
        ``written_until``). A ``small`` one may run on the event loop (``Writer``)."""
        try:
            return await self._writer.write(
                fn, now, durable=durable, committed=committed, small=small
            )
        except sqlite3.DatabaseError as exc:
            if not corrupt(exc):
                raise
            raise self._damaged(exc) from exc

    # --- the contract ------------------------------------------------------------------

    async def dispatch(
        self,
        calls: Sequence[NewCall],
        *,
        now: float,
        request: RequestId | None = None,
        handoff: Handoff | None = None,
    ) -> list[str]:
        def insert(db: sqlite3.Connection) -> tuple[list[str], list[Claimed]]:
            return _dispatch(db, calls, now, request, handoff)

        def committed(result: tuple[list[str], list[Claimed]]) -> None:
            if handoff is not None:
                handoff.claimed = result[1]
                if handoff.committed is not None:
                    handoff.committed(handoff)  # while the commit is synced to disk

        # One writer at a time: a duplicate finds the first one's rows, never races them.
        # The leases of a handoff ride in the Dispatch's durable commit.
        # ``committed`` fills the handoff's leases, before this returns.
        small = len(calls) <= SMALL_DISPATCH
        ids, _ = await self._write(insert, now, committed=committed, small=small)
        return ids

    def subscribe(self, wake: Callable[[], None]) -> None:
        """One process has the database: its API wakes its engine itself."""
        del wake

    def watch(self, changed: Callable[[str | None, str | None], None]) -> float | None:
        """One process has the database: its engine wakes the waiters of what it changes."""
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
        if self._broken is not None:
            return []  # said once, loudly; the engine stops taking calls from it
        room = room_as_read(room)

        def lease(db: sqlite3.Connection) -> list[Claimed]:
            # Round-robin across roots (each root's oldest claimable call first, then
            # each root's second) so that one large fan-out does not starve the others,
            # among the oldest claimable calls and the oldest of each root's.
            claimed: list[Claimed] = []
            held = Held()
            taken: Counter[str] = Counter()
            for _ in range(HELD_ROUNDS):
                wanted = limit - len(claimed)
                ids, limited, full, admitted = choose(db, wanted, held, room_left(room, taken))
                more = take(db, ids[:wanted], limited)
                claimed += more
                # Short, with more ready calls than the window held, and some held back
                # by a limit: read the window again without them.
                if len(claimed) >= limit or not full or not held.add(admitted):
                    break
                taken.update(destination(c.call.endpoint) for c in more)
            return claimed

        def choose(
            db: sqlite3.Connection, wanted: int, held: Held, room: Callable[[str], int] | None
        ) -> tuple[list[str], dict[str, tuple[str, Limits]], bool, Admitted]:
            """The calls to take now, their limits, whether ready calls filled the
            window, and what the limits held back."""
            window = claim_window(limit)
            count = 4 * wanted
            admitted = Admitted([])
            if not held:
                apart = self._apart(db, now, (count, window), wanted, cap, room)
                if apart is not None:
                    return apart, {}, False, admitted
            # More candidates than the batch: some destinations may be full.
            for dealt in claim_candidates(wanted):
                params = {"now": now, "window": window, "roots": count, "count": dealt}
                if held:
                    params.update(held.params(as_json=True))
                query = SQL.ranked_window_unheld if held else SQL.ranked_window
                found = db.execute(query, params).fetchall()
                ready, roots = found[0][6:8] if found else (0, 0)
                destinations = int(found[0][9]) if found else 0
                rows = [(row[0], row[2]) for row in found]
                ids = limited_ids(found, 8)
                if not held and needs_root_heads(ready, roots, window, wanted):
                    heads = db.execute(SQL.root_heads, params).fetchall()
                    rows = in_turns([row[:6] for row in found] + heads, dealt)
                    ids += limited_ids(heads, 6)
                    # The heads may be of destinations the window does not hold.
                    destinations = len({where for _, where in rows}) + 1
                limited = _limits_of(db, ids)
                dealt_all = len(rows) < dealt
                if limited:
                    admitted = within_limits(rows, limited, _usage(db, limited, now))
                    rows = admitted.candidates
                running = {} if cap is None else _running(db, {w for _, w in rows}, now)
                ids = fitting(rows, cap=cap, running=running, room=room)
                if len(ids) >= wanted or dealt_all:
                    break
                # Left short by full destinations: the whole window is dealt only if a
                # destination with room may be found there.
                if not limited and not may_find_more(
                    rows, ids, destinations, cap=cap, running=running, room=room
                ):
                    break
            return ids, limited, ready >= window, admitted

        def take(
            db: sqlite3.Connection, ids: list[str], limited: dict[str, tuple[str, Limits]]
        ) -> list[Claimed]:
            if limited and _rate_limited(ids, limited):
                # A start that counts towards a rate is kept through a power loss too.
                self._starts_recorded = True
                if not self._writer.durable:
                    raise NeedsDurability("a claim that records rate-limited starts")
                _record_starts(db, ids, limited, now)
            return _lease(db, ids, owner, now + lease_seconds)

        # A lease need not survive a power loss: lost, its call is ready again (a SIGKILL
        # loses nothing, the operating system has the pages).
        durable, self._starts_recorded = self._starts_recorded, False
        return await self._write(lease, now, durable=durable)

    def _apart(
        self,
        db: sqlite3.Connection,
        now: float,
        sizes: tuple[int, int],
        wanted: int,
        cap: int | None,
        room: Callable[[str], int] | None,
    ) -> list[str] | None:
        """A claim's calls from the oldest ``count`` claimable ones alone, when they are
        all ready calls of roots apart (``oldest_apart``) and enough of them fit, or no
        more could come from the ``window`` (a thousand calls and more), which then is
        not read. None when it must be; then the next few claims read it at once."""
        count, window = sizes
        if self._apart_skips:
            self._apart_skips -= 1
            return None
        found = db.execute(SQL.oldest_claimable, {"now": now, "window": count}).fetchall()
        rows = oldest_apart(found)
        if rows is not None:
            seen = {where for _, where in rows}
            running = {} if cap is None else _running(db, seen, now)
            ids = fitting(rows, cap=cap, running=running, room=room)
            if len(ids) >= wanted or len(found) < count:
                return ids
            # Left short by full destinations: the window could only deal calls of
            # another one (the claim reads it then), as ``choose`` would find.
            params = {
                "now": now,
                "window": window,
                "destinations": json.dumps(sorted(seen)),
            }
            other = bool(db.execute(SQL.other_destination, params).fetchall())
            destinations = len(seen) + other
            if not may_find_more(rows, ids, destinations, cap=cap, running=running, room=room):
                return ids
        self._apart_skips = APART_SKIPS
        return None

    async def release(self, lease: Lease, *, ready_at: float) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            cursor = db.execute(SQL.release, fenced(lease, ready_at=ready_at))
            return cursor.rowcount == 1

        # Durable, unlike a claim: it gives the attempt back, which, lost on a power loss
        # after the claim was made durable, would count as a lapsed attempt never run.
        return await self._write(update)

    async def extend(self, lease: Lease, *, until: float) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            cursor = db.execute(SQL.extend, fenced(lease, until=until))
            return cursor.rowcount == 1

        return await self._write(update, durable=False)

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
        def update(db: sqlite3.Connection) -> bool:
            ended = fenced(lease, status=status, result=result, now=now)
            row = db.execute(SQL.finish, ended).fetchone()
            if row is None:
                return False
            _add_attempt(db, lease, attempt)
            _deliver(db, lease.delivered)
            _end_descendants(db, lease.dispatch_id, orphans, now)
            if row[0] is not None:
                _wake(db, row[0], now)
            return True

        return await self._write(update, now)

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
        def update(db: sqlite3.Connection) -> list[str] | None:
            waiting = fenced(
                lease, poll=poll, min_results=min_results, max_results=max_results, until=until
            )
            row = db.execute(SQL.suspend, waiting).fetchone()
            if row is None:
                return None
            _check_bounds(db, lease.dispatch_id, row[0], len(children), bounds)
            _add_attempt(db, lease, attempt)
            _deliver(db, lease.delivered)
            placed = children_of(lease.dispatch_id, row[0], children)
            if any(child.key for child in placed):
                ids = _insert_keyed(db, placed, now)
            else:
                ids = _insert(db, placed, now)
            _receive(db, lease.dispatch_id, children, ids, now)
            # Results of earlier polls (or messages kept) may be enough already.
            _wake(db, lease.dispatch_id, now)
            return ids

        return await self._write(update, now)

    async def restart(
        self,
        lease: Lease,
        *,
        now: float,
        orphans: tuple[int, bytes],
        attempt: NewAttempt | None = None,
    ) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            cursor = db.execute(SQL.restart, fenced(lease, now=now))
            if cursor.rowcount != 1:
                return False
            _add_attempt(db, lease, attempt)
            # The old children's results belong to the run that was dropped; those
            # unfinished end (not the children the run to come will make).
            db.execute(SQL.set_aside_children, {"id": lease.dispatch_id})
            _end_descendants(db, lease.dispatch_id, orphans, now, set_aside_only=True)
            return True

        return await self._write(update)

    async def send(self, dispatch_id: str, topic: str, result: bytes, *, now: float) -> Sent:
        def update(db: sqlite3.Connection) -> Sent:
            row = db.execute(SQL.lock_call, {"id": dispatch_id}).fetchone()
            if row is None:
                return Sent.UNKNOWN
            refused = unsendable(row[0], row[1], row[2])
            if refused is not None:
                return refused
            message = {"id": dispatch_id, "topic": topic, "result": result, "now": now}
            ended = db.execute(SQL.deliver_message, {**message, "status": Status.OK.value})
            if ended.fetchone() is not None:
                _wake(db, dispatch_id, now)
                return Sent.DELIVERED
            kept = db.execute(SQL.keep_message, {**message, "most": MAILBOX_MESSAGES})
            return Sent.KEPT if kept.rowcount == 1 else Sent.FULL

        return await self._write(update, now)

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
        def update(db: sqlite3.Connection) -> bool:
            retried = fenced(lease, status=status, result=result, ready_at=ready_at)
            cursor = db.execute(SQL.retry, retried)
            if cursor.rowcount != 1:
                return False
            _add_attempt(db, lease, attempt)
            return True

        return await self._write(update)

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
        def update(db: sqlite3.Connection) -> bool:
            handed = fenced(
                lease,
                function=function,
                endpoint=endpoint,
                destination=destination(endpoint),
                input=input,
                now=now,
                **policy_columns(policy),
                **limit_columns(limits),
            )
            cursor = db.execute(SQL.tail_call, handed)
            if cursor.rowcount != 1:
                return False
            _add_attempt(db, lease, attempt)
            # The function handed over to starts afresh: earlier children are not its.
            db.execute(SQL.set_aside_children, {"id": lease.dispatch_id})
            return True

        return await self._write(update)

    async def get(self, dispatch_id: str) -> Call | None:
        return await self._lookup(lambda db: _call_of(db, dispatch_id))

    async def get_many(self, dispatch_ids: Sequence[str]) -> list[Call]:
        def select(db: sqlite3.Connection) -> list[Call]:
            rows = db.execute(SQL.get_many, {"ids": json.dumps(sorted(set(dispatch_ids)))})
            return [call_from_row(row) for row in rows.fetchall()]

        return await self._lookup(select)

    async def children(self, parent_id: str) -> list[Child]:
        def select(db: sqlite3.Connection) -> list[Child]:
            rows = db.execute(SQL.children, {"id": parent_id}).fetchall()
            return [child_from_row(row) for row in rows]

        return await self._select(select)

    async def history(self, dispatch_id: str) -> AttemptHistory:
        return await self._lookup(lambda db: _history_of(db, dispatch_id))

    async def get_with_history(self, dispatch_id: str) -> tuple[Call, AttemptHistory] | None:
        def select(db: sqlite3.Connection) -> tuple[Call, AttemptHistory] | None:
            call = _call_of(db, dispatch_id)
            return None if call is None else (call, _history_of(db, dispatch_id))

        return await self._lookup(select)

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

        def select(db: sqlite3.Connection) -> list[Call]:
            return [call_from_row(row) for row in db.execute(query, params)]

        return await self._select(select)

    async def cancel(self, dispatch_id: str, status: int, result: bytes, *, now: float) -> int:
        def end(db: sqlite3.Connection) -> int:
            params = {"id": dispatch_id, "status": status, "result": result, "now": now}
            row = db.execute(SQL.cancel, params).fetchone()
            if row is None:
                return 0
            if row[0] is not None:
                _wake(db, row[0], now)
            return 1 + _end_descendants(db, dispatch_id, (status, result), now)

        return await self._write(end)

    async def end_descendants(self, *, now: float, limit: int = END_BATCH) -> int:
        if self._broken is not None:
            return 0  # as for claims: said once, nothing more is done on it

        def end(db: sqlite3.Connection) -> int:
            queued = db.execute(SQL.endings, {"limit": limit}).fetchall()
            return _end_batch(db, queued, now, limit, settled=True)

        return await self._write(end)

    async def purge(
        self,
        *,
        before: float,
        status: int | None = None,
        failed: bool = False,
        limit: int = PURGE_BATCH,
    ) -> int:
        if self._broken is not None:
            return 0
        query, params = PURGE.roots_query(status=status, failed=failed)

        def delete(db: sqlite3.Connection) -> int:
            roots = db.execute(query, {**params, "before": before, "limit": limit}).fetchall()
            doomed: list[str] = []
            created: set[float] = set()
            for root, root_created in roots:
                room = limit - len(doomed)
                members = db.execute(PURGE.members, {"root": root, "limit": room}).fetchall()
                if len(members) >= room and doomed:
                    break  # for the next batch, whole
                doomed += [member[0] for member in members]
                created.update(member[1] for member in members)
                if len(members) >= room:
                    break  # its root in a later batch, once the rest is gone
                doomed.append(root)
                created.add(root_created)
            for statement in (*PURGE.delete_dependents, PURGE.delete):
                db.executemany(statement, [{"ids": dispatch_id} for dispatch_id in doomed])
            db.executemany(PURGE.delete_requests, [{"created": c} for c in created])
            return len(doomed)

        return await self._write(delete)

    async def count_unstored(self, lease: Lease) -> int | None:
        def update(db: sqlite3.Connection) -> int | None:
            row = db.execute(SQL.count_unstored, fenced(lease)).fetchone()
            return None if row is None else int(row[0])

        return await self._write(update)

    # --- actions on a call ---------------------------------------------------------------

    async def retry_now(self, dispatch_id: str, *, now: float) -> tuple[State, bool] | None:
        def update(db: sqlite3.Connection) -> tuple[State, bool] | None:
            brought = db.execute(SQL.retry_now, {"id": dispatch_id, "now": now}).rowcount > 0
            row = db.execute(SQL.state_of, {"id": dispatch_id}).fetchone()
            return None if row is None else (State(row[0]), brought)

        return await self._write(update, now)

    async def limit_stats(self, *, now: float) -> Sequence[LimitStats]:
        def select(db: sqlite3.Connection) -> Sequence[LimitStats]:
            running = db.execute(SQL.limited_in_flight, {"now": now}).fetchall()
            rates = db.execute(SQL.rate_stats, {"now": now}).fetchall()
            return limit_stats_of(running, rates)

        return await self._select(select)

    async def queue_stats(self, *, now: float) -> QueueStats:
        def select(db: sqlite3.Connection) -> QueueStats:
            return QueueStats(*db.execute(SQL.queue_stats, {"now": now}).fetchone())

        return await self._select(select)

    async def finished_stats(
        self, *, since: float, now: float, limit: int = OVERVIEW_FUNCTIONS
    ) -> Finished:
        window = {"since": since, "now": now}

        def select(db: sqlite3.Connection) -> Finished:
            minutes = db.execute(SQL.finished_per_minute, window).fetchall()
            functions = db.execute(SQL.finished_by_function, window | {"limit": limit})
            return finished_from_rows(minutes, functions.fetchall())

        return await self._select(select)

    async def count_by_state(self, *, cap: int = COUNT_CAP) -> dict[State, int]:
        def select(db: sqlite3.Connection) -> dict[State, int]:
            return {State(s): int(n) for s, n in db.execute(SQL.count_by_state, {"cap": cap})}

        return await self._select(select)

    # --- schedules -----------------------------------------------------------------------

    async def create_schedule(self, schedule: NewSchedule, *, now: float) -> Schedule:
        def insert(db: sqlite3.Connection) -> Schedule:
            try:
                db.execute(SCHEDULES.insert, new_row(schedule, now))
            except sqlite3.IntegrityError:
                raise ScheduleExists(f"a schedule named {schedule.name!r} exists already") from None
            return schedule_from_row(db.execute(SCHEDULES.one, {"name": schedule.name}).fetchone())

        return await self._write(insert, now)

    async def schedules(self) -> builtins.list[Schedule]:
        def select(db: sqlite3.Connection) -> builtins.list[Schedule]:
            return builtins.list(schedule_from_row(row) for row in db.execute(SCHEDULES.all))

        return await self._select(select)

    async def get_schedule(self, name: str) -> Schedule | None:
        def select(db: sqlite3.Connection) -> Schedule | None:
            row = db.execute(SCHEDULES.one, {"name": name}).fetchone()
            return None if row is None else schedule_from_row(row)

        return await self._select(select)

    async def pause_schedule(
        self, name: str, *, paused: bool, next_tick: float | None, now: float
    ) -> Schedule | None:
        params = {"name": name, "paused": int(paused), "next_tick": next_tick, "now": now}

        def update(db: sqlite3.Connection) -> Schedule | None:
            db.execute(SCHEDULES.set_paused, params)
            row = db.execute(SCHEDULES.one, {"name": name}).fetchone()
            return None if row is None else schedule_from_row(row)

        return await self._write(update, now)

    async def delete_schedule(self, name: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            return db.execute(SCHEDULES.delete, {"name": name}).rowcount > 0

        return await self._write(delete)

    async def sync_schedules(
        self, owner: str, wanted: Sequence[NewSchedule], *, now: float
    ) -> Synced:
        def sync(db: sqlite3.Connection) -> Synced:
            existing = builtins.list(schedule_from_row(row) for row in db.execute(SCHEDULES.all))
            plan = sync_plan(owner, existing, wanted)
            db.executemany(SCHEDULES.insert, [new_row(new, now) for new in plan.insert])
            db.executemany(SCHEDULES.update, [new_row(new, now) for new in plan.update])
            db.executemany(SCHEDULES.delete, [{"name": name} for name in plan.delete])
            return plan.synced

        return await self._write(sync, now)

    async def tick_schedules(
        self, *, now: float, plan: Planner, limit: int
    ) -> builtins.list[Ticked]:
        def tick(db: sqlite3.Connection) -> builtins.list[Ticked]:
            due = db.execute(SCHEDULES.due, {"now": now, "limit": limit}).fetchall()
            ticked: builtins.list[Ticked] = []
            for schedule in map(schedule_from_row, due):
                planned = plan(schedule)
                if planned is None:
                    continue
                (dispatch_id,), _ = _dispatch(db, [planned.call], now, None)
                db.execute(SCHEDULES.advance, advance_row(schedule, planned, dispatch_id))
                ticked.append(Ticked(schedule.name, planned.tick, dispatch_id))
            return ticked

        return await self._write(tick, now)

    async def next_schedule_tick(self) -> float | None:
        def select(db: sqlite3.Connection) -> float | None:
            value: float | None = db.execute(SCHEDULES.earliest).fetchone()[0]
            return value

        return await self._select(select)

    async def close(self) -> None:
        def shut() -> None:
            if self._connection is not None:
                self._writer.thread_settings()  # its close checkpoints as SQLite does
                self._connection.close()
                self._connection = None

        # The readers first: the writer's connection, closed last, then checkpoints.
        if self._readers is not self._executor:
            await asyncio.get_running_loop().run_in_executor(None, self._readers.shutdown)
        for connection in self._reading:
            connection.close()
        self._reading.clear()
        self._writer.stop_on_loop()
        try:
            await self._run(shut)
        finally:
            self._executor.shutdown(wait=True)
            for descriptor in (self._file, self._wal):
                if descriptor is not None:
                    os.close(descriptor)
            self._file = self._wal = None


SMALL_DISPATCH = 16
"""The most calls of a Dispatch whose transaction may run on the event loop when the
writer's thread is idle (~0.1 ms for one call, a few more for each other)."""
MANUAL_SYNC = os.name == "posix"
"""Whether the writer syncs the WAL itself after a durable COMMIT; elsewhere (Windows)
every COMMIT does, with ``synchronous = FULL`` (a lease's too), and a Dispatch's
handed-over calls start after it."""
_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync; SQLite uses fsync


def _same_file(descriptor: int, path: str) -> bool:
    """Whether ``path`` is still the file ``descriptor`` was opened on."""
    opened = os.fstat(descriptor)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


_REPAIR = (
    "restore {path} from a backup, or recover what it holds into a new file with "
    "`sqlite3 {path} .recover | sqlite3 {path}.recovered` and start the scheduler on "
    "that file (--db {path}.recovered)"
)


def _insert(db: sqlite3.Connection, calls: Sequence[NewCall], now: float) -> list[str]:
    ids, rows = rows_to_insert(calls, now)
    db.executemany(SQL.insert, rows)
    return ids


def _insert_handing(
    db: sqlite3.Connection, calls: Sequence[NewCall], now: float, handoff: Handoff
) -> tuple[list[str], list[Claimed]]:
    """``calls`` stored in order, those ``handoff`` chooses already leased to it (the
    row a claim would leave, written once rather than written and then updated)."""
    ids, rows = rows_to_insert(calls, now)
    expires = now + handoff.lease_seconds
    leased: list[Claimed] = []
    start = 0  # the first row not yet stored: rows go in their order
    for index in handoff.chosen(calls, now):  # in order
        db.executemany(SQL.insert, rows[start:index])
        start = index + 1
        params = {**rows[index], "owner": handoff.owner, "expires": expires}
        leased.append(newly_leased(db.execute(SQL.insert_leased, params).fetchone(), expires))
    db.executemany(SQL.insert, rows[start:])
    return ids, leased


def _insert_keyed(db: sqlite3.Connection, children: Sequence[NewCall], now: float) -> list[str]:
    """A Poll's children, some with keys: those whose key is known follow its call."""
    known: dict[str, str] = {}
    for key in keys_of(children):
        for found, dispatch_id in db.execute(IDEMPOTENCY.find_keys, {"keys": key}):
            known[found] = dispatch_id
    keyed = KeyedChildren(children, known)
    ids, rows = keyed.rows(now)
    db.executemany(SQL.insert, rows)
    db.executemany(IDEMPOTENCY.insert_key, keyed.new_keys(ids))
    return ids


def _dispatch(
    db: sqlite3.Connection,
    calls: Sequence[NewCall],
    now: float,
    request: RequestId | None,
    handoff: Handoff | None = None,
) -> tuple[list[str], list[Claimed]]:
    """``Store.dispatch`` in one transaction: a known request id answered with its ids,
    calls with known keys answered with their calls' ids, the others stored, and those
    of them that ``handoff`` chooses leased to it."""
    if request is not None:
        row = db.execute(IDEMPOTENCY.find_request, {"request_id": request.id}).fetchone()
        if row is not None:
            return repeated(request, row[0], row[1]), []
    known: dict[str, str] = {}
    for key in keys_of(calls):
        for found, dispatch_id in db.execute(IDEMPOTENCY.find_keys, {"keys": key}):
            known[found] = dispatch_id
    keyed = KeyedCalls(calls, known)
    handed: list[Claimed] = []
    if handoff is None:
        stored = _insert(db, keyed.fresh, now)
    else:
        stored, handed = _insert_handing(db, keyed.fresh, now, handoff)
    moved = mailboxes_moved(keyed.fresh, stored)
    if moved:  # a resume's
        db.executemany(SQL.move_messages, moved)
    db.executemany(IDEMPOTENCY.insert_key, keyed.new_keys(stored))
    ids = keyed.ids(stored)
    if request is not None:
        db.execute(IDEMPOTENCY.insert_request, request_row(request, ids, now))
    return ids, handed


def _call_of(db: sqlite3.Connection, dispatch_id: str) -> Call | None:
    row = db.execute(SQL.get, {"id": dispatch_id}).fetchone()
    return None if row is None else call_from_row(row)


def _history_of(db: sqlite3.Connection, dispatch_id: str) -> AttemptHistory:
    return history_of(db.execute(SQL.history, {"id": dispatch_id}).fetchall())


def _lease(db: sqlite3.Connection, ids: Sequence[str], owner: str, expires: float) -> list[Claimed]:
    """Lease the calls ``ids`` to ``owner`` until ``expires``, as a claim does: each its
    attempt counted and a new fencing token; a resume with its undelivered results."""
    claimed = []
    for dispatch_id in ids:
        claim = {"owner": owner, "expires": expires, "ids": dispatch_id}
        row = db.execute(SQL.claim, claim).fetchone()
        call = call_from_row(row[2:])
        results: tuple[ChildResult, ...] = ()
        if call.poll:
            results = _undelivered(db, dispatch_id, row[1])
        lease = Lease(dispatch_id, row[0], expires, tuple(r.dispatch_id for r in results))
        claimed.append(Claimed(call, lease, results))
    return claimed


def _add_attempt(db: sqlite3.Connection, lease: Lease, attempt: NewAttempt | None) -> None:
    """Add ``attempt`` to the history of the call under ``lease`` (just updated under
    it, in this transaction), keeping its latest ``attempt.keep``."""
    if attempt is None or attempt.keep <= 0:
        return
    params = fenced(lease, **attempt_params(attempt))
    (number,) = db.execute(SQL.add_attempt, params).fetchone()
    if number > attempt.keep:
        db.execute(SQL.trim_attempts, {**params, "number": number})


def _statements(migration: Step) -> list[str]:
    """A migration's statements: one process has the database, so an index is built and
    a column filled plainly, in the migration's one transaction."""
    if isinstance(migration, Index):
        return [migration.create()]
    if isinstance(migration, Backfill):
        return [migration.update(SQLITE.calls)]
    return [statement for statement in migration.split(";") if statement.strip()]


def _backfill_destinations(db: sqlite3.Connection) -> None:
    rows = db.execute("SELECT rowid, endpoint FROM calls WHERE destination = ''").fetchall()
    db.executemany(
        "UPDATE calls SET destination = ? WHERE rowid = ?",
        [(destination(endpoint), rowid) for rowid, endpoint in rows],
    )


def _running(db: sqlite3.Connection, destinations: set[str], now: float) -> dict[str, int]:
    """Leases in force per destination (none: not listed)."""
    running: dict[str, int] = {}
    for where in destinations:
        for row in db.execute(SQL.running, {"now": now, "destinations": where}):
            running[row[0]] = row[1]
    return running


def _limits_of(db: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[str, Limits]]:
    """The function and limits of each of the calls ``ids``."""
    rows = [db.execute(SQL.limits_of, {"ids": i}).fetchone() for i in dict.fromkeys(ids)]
    return limits_by_id([row for row in rows if row is not None])


def _usage(db: sqlite3.Connection, limited: dict[str, tuple[str, Limits]], now: float) -> Usage:
    """What the functions of ``limited`` calls use now (``limits``)."""
    usage = Usage()
    for function in sorted({f for f, _ in limited.values()}):
        params = {"now": now, "functions": function}
        for _, key, count in db.execute(SQL.limited_running, params):
            usage.add_running(function, key, count)
    for function, period in rate_periods(limited):
        params = {"function": function, "since": now - period}
        usage.started[function, period] = db.execute(SQL.count_starts, params).fetchone()[0]
    return usage


def _rate_limited(ids: Sequence[str], limited: dict[str, tuple[str, Limits]]) -> bool:
    """Whether a call of ``ids`` has a rate limit (its start is to be recorded)."""
    return any(limited.get(i, ("", NO_LIMITS))[1].rate_count > 0 for i in ids)


def _record_starts(
    db: sqlite3.Connection, ids: Sequence[str], limited: dict[str, tuple[str, Limits]], now: float
) -> None:
    """Record the starts of the rate-limited calls among ``ids``, those no period still
    counts dropped."""
    for dispatch_id in ids:
        function, lim = limited.get(dispatch_id, ("", NO_LIMITS))
        if lim.rate_count > 0:
            db.execute(SQL.prune_starts, {"function": function, "since": now - lim.rate_period})
            started = {"function": function, "now": now, "rate_count": lim.rate_count}
            db.execute(SQL.add_start, {**started, "rate_period": lim.rate_period})


def _undelivered(db: sqlite3.Connection, parent_id: str, limit: int) -> tuple[ChildResult, ...]:
    rows = db.execute(SQL.undelivered, {"id": parent_id, "limit": max(limit, 1)}).fetchall()
    return tuple(child_result_from_row(row) for row in rows)


def _deliver(db: sqlite3.Connection, ids: Sequence[str]) -> None:
    db.executemany(SQL.deliver, [{"ids": i} for i in ids])


def _end_descendants(
    db: sqlite3.Connection,
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
    queue = {"ids": dispatch_id, "status": status, "result": result}
    queued = db.execute(SQL.queue_endings, {**queue, "set_aside_only": int(set_aside_only)})
    return _end_batch(db, queued.fetchall(), now, END_BATCH, settled=False)


def _end_batch(
    db: sqlite3.Connection, queued: list[Any], now: float, limit: int, *, settled: bool
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
        ended = db.execute(
            SQL.end_children, {**params, "set_aside_only": set_aside_only, "limit": asked}
        ).fetchall()
        done += len(ended)
        if len(ended) < asked:
            db.execute(SQL.ended_all, {"id": source})
            if settled:
                done += 1
        for (child,) in ended:
            queue = {"ids": child, "status": status, "result": result, "set_aside_only": 0}
            work.extend(db.execute(SQL.queue_endings, queue).fetchall())
    return done


def _check_bounds(
    db: sqlite3.Connection, dispatch_id: str, root_id: str, adding: int, bounds: TreeBounds
) -> None:
    """Raise ``TreeLimitExceeded`` if ``adding`` children of the call would take its tree
    beyond ``bounds``; else count them in its root."""
    if not adding:
        return
    if bounds.max_children is not None:
        pending = db.execute(SQL.pending_children, {"id": dispatch_id}).fetchone()[0]
        if pending + adding > bounds.max_children:
            raise TreeLimitExceeded("children", bounds.max_children, pending, adding)
    most = UNBOUNDED if bounds.max_descendants is None else bounds.max_descendants
    params = {"root": root_id, "adding": adding, "most": most}
    if db.execute(SQL.add_descendants, params).rowcount != 1:
        count = db.execute(SQL.descendants, params).fetchone()[0]
        raise TreeLimitExceeded("descendants", most, count, adding)


def _receive(
    db: sqlite3.Connection,
    parent_id: str,
    children: Sequence[NewCall],
    ids: Sequence[str],
    now: float,
) -> None:
    """The receives among a Poll's children just stored: each takes the oldest message
    kept on its topic, or waits for one."""
    for child, child_id in zip(children, ids, strict=True):
        if child.topic is None:
            continue
        receive = {"id": child_id, "topic": child.topic}
        taken = db.execute(SQL.take_message, {"id": parent_id, "topic": child.topic}).fetchone()
        if taken is None:
            db.execute(SQL.await_message, receive)
        else:
            ended = {"status": Status.OK.value, "result": taken[0], "now": now}
            db.execute(SQL.received, {**receive, **ended})


def _wake(db: sqlite3.Connection, parent_id: str, now: float) -> None:
    """Make a waiting parent ready once it has the results it waits for."""
    db.execute(SQL.wake, {"id": parent_id, "now": now})
