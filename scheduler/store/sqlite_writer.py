"""The SQLite store's writes, on the one thread that owns its connection.

Group commit: the thread commits every write alone while they come one at a time, and
takes those queued meanwhile (up to ``BATCH``) into one transaction when they queue up
behind a commit: ``BEGIN IMMEDIATE``, each write in a savepoint of its own (a write that
raises is rolled back to it, alone, and the others go on), one clock mark, one
``COMMIT``, then every write's outcome. Nothing is answered before the ``COMMIT``; an
error that aborts the transaction (I/O, disk full, damage, the file replaced) fails
every write of it, as it would have failed each alone.

Durability: a transaction is committed with ``synchronous = FULL`` (one fsync of the
WAL) if any of its writes must be durable, or if it records the clock mark; a batch of
writes that need not be (claims, a lease's extension: losing one on a power
loss only makes a call ready again) commits with ``NORMAL``, no fsync of its own. The
next durable commit's fsync makes them durable too, as WAL recovery keeps a checksummed
prefix; a SIGKILL loses nothing either way, the operating system has the pages.
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


Outcome = tuple[Write[Any], bool, Any]
"""A write, whether it succeeded, and its result or exception."""


class Writer:
    """Runs writes on ``executor`` (one thread) against ``connection()``, checking the
    file with ``check()`` before each transaction; ``now``, the time a write writes by,
    recorded in ``clock`` when it is ``mark_every`` past the last mark."""

    def __init__(
        self,
        executor: Executor,
        connection: Callable[[], sqlite3.Connection | None],
        check: Callable[[], None],
        mark_every: float,
    ) -> None:
        self._executor = executor
        self._connection = connection
        self._check = check
        self._mark_every = mark_every
        self._marked = float("-inf")
        """The latest time recorded in ``clock`` by this process."""
        self._queue: deque[Write[Any]] = deque()
        self._lock = threading.Lock()
        self._draining = False
        self.durable = True
        """Whether the transaction under way commits with an fsync (the thread's own)."""
        self._normal = False
        """Whether the connection may still be at ``synchronous = NORMAL``: set back to
        ``FULL`` before the next durable transaction (a failed ROLLBACK can leave it)."""

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], now: float | None, *, durable: bool = True
    ) -> T:
        """``fn``'s result once the transaction that ran it committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        write = Write(fn, now, durable, future, loop)
        with self._lock:
            self._queue.append(write)
            start = not self._draining
            self._draining = True
        if start:
            self._schedule()
        return await future

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

    def _transact(self, batch: list[Write[Any]]) -> tuple[list[Outcome], list[Write[Any]]]:
        """``batch`` in one transaction: the outcomes once committed, and the writes to
        run again in a durable one."""
        connection = self._connection()
        if connection is None:
            raise StoreError("the store is closed")
        self._check()
        if connection.in_transaction:  # left by a ROLLBACK that failed
            connection.execute("ROLLBACK")
        now = max((write.now for write in batch if write.now is not None), default=None)
        marking = now is not None and now >= self._marked + self._mark_every
        self.durable = marking or any(write.durable for write in batch)
        if self.durable and self._normal:
            self._restore(connection)  # raises, failing the batch, if it cannot
        elif not self.durable:
            self._normal = True
            connection.execute("PRAGMA synchronous = NORMAL")
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
        finally:
            if not self.durable:
                with contextlib.suppress(sqlite3.Error):
                    # Still in a transaction its ROLLBACK could not end: the error that
                    # did it is the one raised; the next transaction restores it.
                    self._restore(connection)
            self.durable = True
        if marking and now is not None:
            self._marked = now
        for write in again:
            write.durable = True
        return outcomes, again

    def _restore(self, connection: sqlite3.Connection) -> None:
        """Every transaction but those that choose otherwise commits with an fsync."""
        connection.execute("PRAGMA synchronous = FULL")
        self._normal = False


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
