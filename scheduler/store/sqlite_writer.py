"""The SQLite store's writes, on the one thread that owns its connection.

Group commit: the thread commits every write alone while they come one at a time, and
takes those queued meanwhile (up to ``BATCH``) into one transaction when they queue up
behind a commit: ``BEGIN IMMEDIATE``, each write in a savepoint of its own (a write that
raises is rolled back to it, alone, and the others go on), one clock mark, one
``COMMIT``, then every write's outcome. Nothing is answered before the ``COMMIT``; an
error that aborts the transaction (I/O, disk full, damage, the file replaced) fails
every write of it, as it would have failed each alone.

Durability: the connection commits with ``synchronous = NORMAL`` (no fsync in the
COMMIT), and a transaction any of whose writes must be durable, or that records the
clock mark, is made so by the thread itself right after its COMMIT: one ``fdatasync`` of
the WAL file (``sync``), what ``synchronous = FULL`` does at each COMMIT; only then are
its writes answered. In between, a write may be told it committed (``committed``): a
Dispatch's handed-over calls start while the fsync runs, and their Dispatch is answered
once it is on disk (lost to a power loss, the Dispatch was never acknowledged, and its
client sends it again). A batch of writes that need not be durable (claims, a lease's
extension: losing one on a power loss only makes a call ready again) has no fsync of
its own. The next fsync makes them durable too, as WAL recovery keeps a checksummed
prefix; a SIGKILL loses nothing either way, the operating system has the pages.

A small write that finds the thread idle (a Dispatch of a few calls, on a quiet
scheduler) runs on the event loop instead, at once: two thread hand-offs (to the thread
and back, 50-150 us each on a busy 2-core machine) are most of its wait, the transaction
itself ~0.1 ms. The thread is marked busy meanwhile, so that the connection is never
used by both; it still does the fsync, and answers the write after it, so the loop never
waits on the disk. Nor on a lock or a checkpoint: that transaction commits with no busy
wait (a lock held by another process sends the write to the thread, which waits for it)
and no automatic checkpoint, which is left to the thread's next commit. Its ``committed``
is called there and then, and the thread is woken for the fsync only in the loop's next
turn: the attempts a Dispatch hands over have sent their Run requests by then (woken
earlier, the thread would take the interpreter from them, and the saving with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import StoreError

T = TypeVar("T")

BATCH = 256
"""The most writes committed in one transaction."""
MARK = "UPDATE clock SET mark = max(mark, ?)"
BUSY_TIMEOUT_MS = 5000
"""How long the thread's transaction waits for a lock another process holds."""
SQLITE_BUSY = 5
"""SQLite's result code (``sqlite3.SQLITE_BUSY`` from Python 3.11)."""
AUTOCHECKPOINT_PAGES = 1000
"""SQLite's default: the commit that finds the WAL this long checkpoints it."""


class NeedsDurability(StoreError):
    """Raised by a write that finds, in a transaction to be committed without an fsync,
    that it must be durable after all: it is rolled back and run again in one that is."""


@dataclass(eq=False)
class Write(Generic[T]):
    """One write waiting for the thread, and the future that gets its outcome."""

    fn: Callable[[sqlite3.Connection], T]
    now: float | None
    durable: bool
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop = field(repr=False)
    committed: Callable[[T], None] | None = None
    """Called on the loop with the result once committed, before the fsync."""


Outcome = tuple[Write[Any], bool, Any]
"""A write, whether it succeeded, and its result or exception."""


class Writer:
    """Runs writes on ``executor`` (one thread) against ``connection()``, checking the
    file with ``check()`` before each transaction and making a durable one's COMMIT
    durable with ``sync()``; ``now``, the time a write writes by, recorded in ``clock``
    when it is ``mark_every`` past the last mark."""

    def __init__(
        self,
        executor: Executor,
        connection: Callable[[], sqlite3.Connection | None],
        check: Callable[[], None],
        sync: Callable[[], None],
        mark_every: float,
        *,
        on_loop: bool = False,
    ) -> None:
        self._executor = executor
        self._on_loop = on_loop
        """Whether a small write may run on the event loop when the thread is idle (the
        connection usable from any thread, the COMMIT not syncing)."""
        self._connection = connection
        self._check = check
        self._sync = sync
        self._mark_every = mark_every
        self._marked = float("-inf")
        """The latest time recorded in ``clock`` by this process."""
        self._queue: deque[Write[Any]] = deque()
        self._lock = threading.Lock()
        self._draining = False
        self._unsynced: tuple[asyncio.Handle, list[Outcome]] | None = None
        """A transaction committed on the loop whose fsync the thread is not asked for yet."""
        self.durable = True
        """Whether the transaction under way is made durable (the thread's own)."""
        self._loop_settings = False
        """Whether the connection has the loop's settings (no wait for a lock, no
        checkpoint), which the thread puts back before it uses the connection itself."""

    async def write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        now: float | None,
        *,
        durable: bool = True,
        committed: Callable[[T], None] | None = None,
        small: bool = False,
    ) -> T:
        """``fn``'s result once the transaction that ran it committed (and, if
        ``durable``, is on disk); ``committed(result)`` called on this loop as soon as
        it committed, before its fsync. A ``small`` write (a short transaction) runs on
        this loop if the thread is idle."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        write = Write(fn, now, durable, future, loop, committed)
        with self._lock:
            here = small and self._on_loop and not self._draining
            if not here:
                self._queue.append(write)
            start = not self._draining
            self._draining = True
        if here:
            self._run_here(write)
        elif start:
            self._schedule()
        return await future

    def stop_on_loop(self) -> None:
        """Run every write on the thread from now on (the connection is being closed
        there), after the fsync of the one committed on the loop last, if still to come."""
        with self._lock:
            self._on_loop = False
        if self._unsynced is not None:
            handle, outcomes = self._unsynced
            handle.cancel()
            self._sync_then_answer(outcomes)

    def _run_here(self, write: Write[Any]) -> None:
        """``write`` alone, on the event loop, the thread held idle; its fsync and its
        answer on the thread."""
        connection = self._connection()
        try:
            if connection is None:
                raise StoreError("the store is closed")
            if not self._loop_settings:
                # Left so until the thread's next transaction of its own: loop
                # transactions one after another set nothing (each PRAGMA a statement
                # on the call's way to its start).
                connection.execute("PRAGMA busy_timeout = 0")
                connection.execute("PRAGMA wal_autocheckpoint = 0")
                self._loop_settings = True
            outcomes, _ = self._transact([write], on_loop=True)
        except BaseException as exc:
            if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                # Another process holds the lock: the thread waits for it (nothing was
                # committed here).
                with self._lock:
                    self._queue.appendleft(write)
                self._schedule()
                return
            outcomes = [(write, False, exc)]
        ok, value = outcomes[0][1], outcomes[0][2]
        if ok and write.committed is not None:
            # Told here, not through the loop's self-pipe: a Dispatch's handed-over
            # calls start in this turn of the loop.
            try:
                write.committed(value)
            except Exception as exc:
                write.loop.call_exception_handler(
                    {"message": "a committed write's callback failed", "exception": exc}
                )
        if write.durable and ok:
            # After the tasks just started have sent their requests: the thread's
            # waking would otherwise take the interpreter from them.
            handle = write.loop.call_soon(self._sync_then_answer, outcomes)
            self._unsynced = (handle, outcomes)
            return
        _set(outcomes)
        self._next()

    def thread_settings(self) -> None:
        """On the thread, before it uses the connection: SQLite's waits for a lock and
        checkpoints back, if the loop's transactions took them away."""
        connection = self._connection()
        if self._loop_settings and connection is not None:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
            self._loop_settings = False

    def _sync_then_answer(self, outcomes: list[Outcome]) -> None:
        self._unsynced = None
        try:
            self._executor.submit(self._finish, outcomes)
        except RuntimeError:  # the executor was shut down: the store is closed
            _set([(write, False, StoreError("the store is closed")) for write, _, _ in outcomes])
            self._next()

    def _finish(self, outcomes: list[Outcome]) -> None:
        """On the thread: make a transaction committed on the loop durable, answer its
        writes, then go on with those queued meanwhile."""
        try:
            try:
                self._sync()
            except BaseException as exc:  # each caller gets it
                outcomes = [(write, False, exc) for write, _, _ in outcomes]
            _settle(outcomes)
        finally:
            self._next()

    def queued(self) -> int:
        """How many writes wait for the thread."""
        return len(self._queue)

    def _schedule(self) -> None:
        try:
            self._executor.submit(self._drain)
        except RuntimeError:  # the executor was shut down: the store is closed
            with self._lock:
                stranded = list(self._queue)
                self._queue.clear()
                self._draining = False
            closed = StoreError("the store is closed")
            _settle([(write, False, closed) for write in stranded])

    def _drain(self) -> None:
        """Commit the writes queued now; then, behind whatever else the thread has to
        do, those queued meanwhile."""
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH))]
        try:
            self._commit(batch)
        finally:
            self._next()

    def _next(self) -> None:
        """The thread is done: on with the writes queued meanwhile, if any."""
        with self._lock:
            more = bool(self._queue)
            self._draining = more
        if more:
            self._schedule()

    def _commit(self, batch: list[Write[Any]]) -> None:
        # A write whose caller stopped waiting before it began is not run.
        batch = [write for write in batch if not write.future.done()]
        while batch:
            try:
                outcomes, batch = self._transact(batch)
            except NeedsDurability as exc:  # a write alone, rolled back: again, durably
                if batch[0].durable:  # it was: never to be asked again
                    outcomes, batch = [(batch[0], False, StoreError(str(exc)))], []
                else:
                    batch[0].durable = True
                    continue
            except BaseException as exc:  # each caller gets it
                outcomes, batch = [(write, False, exc) for write in batch], []
            _settle(outcomes)

    def _transact(
        self, batch: list[Write[Any]], *, on_loop: bool = False
    ) -> tuple[list[Outcome], list[Write[Any]]]:
        """``batch`` in one transaction: the outcomes once committed (and synced, if it
        is durable), and the writes to run again in a durable one. ``on_loop``: run by
        the event loop, which tells the writes and has the thread sync afterwards."""
        connection = self._connection()
        if connection is None:
            raise StoreError("the store is closed")
        if not on_loop:
            self.thread_settings()
        self._check()
        if connection.in_transaction:  # left by a ROLLBACK that failed
            connection.execute("ROLLBACK")
        now = max((write.now for write in batch if write.now is not None), default=None)
        marking = now is not None and now >= self._marked + self._mark_every
        self.durable = marking or any(write.durable for write in batch)
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                again: list[Write[Any]] = []
                if len(batch) == 1:  # alone, as before group commit: no savepoint
                    outcomes = [(batch[0], True, batch[0].fn(connection))]
                else:
                    outcomes, again = _each(connection, batch, durable=self.durable)
                if marking:
                    connection.execute(MARK, (now,))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            if not on_loop:
                _tell_committed(outcomes)
            if self.durable and not on_loop:
                self._sync()
        finally:
            self.durable = True
        if marking and now is not None:
            self._marked = now
        for write in again:
            write.durable = True
        return outcomes, again


def _each(
    connection: sqlite3.Connection, batch: list[Write[Any]], *, durable: bool
) -> tuple[list[Outcome], list[Write[Any]]]:
    """Each write of ``batch`` in a savepoint: the outcome of each, and those that need
    a durable transaction (if this one is not). An error that ends the transaction is
    raised."""
    outcomes: list[Outcome] = []
    again: list[Write[Any]] = []
    for write in batch:
        connection.execute("SAVEPOINT write")
        try:
            result = write.fn(connection)
        except Exception as exc:
            if _aborts(exc) or not connection.in_transaction:
                raise
            connection.execute("ROLLBACK TO write")
            connection.execute("RELEASE write")
            if isinstance(exc, NeedsDurability) and not durable:
                again.append(write)
            else:
                outcomes.append((write, False, exc))
        else:
            connection.execute("RELEASE write")
            outcomes.append((write, True, result))
    return outcomes, again


def _aborts(exc: Exception) -> bool:
    """Whether ``exc`` is an error of the database itself (I/O, disk full, damage,
    locked), after which no write of the transaction is to be trusted, rather than one
    write's own (a constraint, a limit, a refusal)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError
    )


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLITE_BUSY: a lock held by another connection."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11 and later
    return code == SQLITE_BUSY if code is not None else "locked" in str(exc)


def _tell_committed(outcomes: list[Outcome]) -> None:
    """Tell the writes that asked, on their loops, that they committed."""
    for write, ok, value in outcomes:
        if ok and write.committed is not None:
            # A loop closed has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                write.loop.call_soon_threadsafe(write.committed, value)


def _settle(outcomes: list[Outcome]) -> None:
    """Give each write its outcome, on its event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        # A loop closed has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_set, settled)


def _set(outcomes: list[Outcome]) -> None:
    for write, ok, value in outcomes:
        if write.future.done():
            continue
        if ok:
            write.future.set_result(value)
        else:
            write.future.set_exception(value)
