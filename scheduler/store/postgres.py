"""The distributed store: one PostgreSQL database shared by several scheduler processes.

- Claims lock the rows they take with ``FOR UPDATE SKIP LOCKED``, so processes claiming
  at once take different calls and never wait on each other; each claim is a batch.
- A lease has an expiry and a fencing token. A process that died leaves leases that
  lapse; any process's next claim takes those calls again (no cron, no janitor).
- A hard cap per destination holds across processes: when one is asked for, claims are
  serialized by a transaction-scoped advisory lock and count the leases in force of
  every process, so that no two processes spend the same budget.
- Writes that make a call claimable now ``NOTIFY`` a channel every scheduler listens
  on; the engine's polling is the fallback when a notification is lost.
- The schema is versioned in ``dispatchlet_schema`` and migrated on open under an
  advisory lock, so several processes starting at once migrate it once.

psycopg 3 (``pip install 'dispatchlet[postgres]'``) is imported by this module only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ...core.status import Status
from ..concurrency import destination
from . import (
    Call,
    ChildResult,
    Claimed,
    Lease,
    NewCall,
    State,
    StoreError,
    call_from_row,
    children_of,
    claim_window,
    fitting,
    in_turns,
    needs_root_heads,
    new_dispatch_id,
    ranked_window,
)

T = TypeVar("T")
logger = logging.getLogger("dispatchlet.scheduler")

CHANNEL = "dispatchlet_ready"
# Advisory lock keys (one 64-bit number each): the migration, and capped claims.
MIGRATION_LOCK = 0x64697370_61746368
CLAIM_LOCK = 0x64697370_636C6169
# A pooled connection idle for longer is checked before use (a round trip), so that one
# the server dropped meanwhile (a restart) is replaced, not handed to a transaction. One
# in steady use is not: if it fails, the store's caller retries.
CHECK_AFTER_IDLE = 1.0
# Batches of finishes written at once; the finishes that arrive meanwhile wait for the
# next batch.
FINISH_FLUSHES = 1

# Each entry moves the schema one version up; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
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
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "dispatch_id, function, endpoint, input, version, correlation_id, parent_id, "
    "root_id, state, status, result, attempts, created_at, expires_at, ready_at, "
    "finished_at, poll, restarts"
)
_SELECT = "SELECT " + _COLUMNS + " FROM dispatchlet_calls"
# The claimable calls a claim considers, as (dispatch_id, root_id, destination, ready_at,
# seq, state): the oldest of each claimable state, each read through its own partial
# index, so that neither finished calls nor a long backlog are scanned.
_COLUMNS_CLAIMABLE = "dispatch_id, root_id, destination, ready_at, seq, state"
_OLDEST_CLAIMABLE = (
    f"(SELECT {_COLUMNS_CLAIMABLE} FROM dispatchlet_calls"
    "  WHERE state = 'ready' AND ready_at <= %(now)s ORDER BY ready_at, seq LIMIT %(window)s)"
    f" UNION ALL (SELECT {_COLUMNS_CLAIMABLE} FROM dispatchlet_calls"
    "  WHERE state = 'running' AND lease_expires <= %(now)s"
    "  ORDER BY lease_expires LIMIT %(window)s)"
    f" UNION ALL (SELECT {_COLUMNS_CLAIMABLE} FROM dispatchlet_calls"
    "  WHERE state = 'waiting' AND poll_until <= %(now)s ORDER BY poll_until LIMIT %(window)s)"
)
# The first of the window in round-robin order, with the window's counts.
_RANKED_WINDOW = ranked_window(_OLDEST_CLAIMABLE, "%(count)s")
# The oldest ready call of each of the first %(roots)s roots that have ready calls: a
# skip scan of dispatchlet_calls_ready_root, one index seek per root.
_ROOT_HEADS = (
    "WITH RECURSIVE roots (root_id, n) AS ("
    "  (SELECT root_id, 1 FROM dispatchlet_calls WHERE state = 'ready'"
    "   ORDER BY root_id LIMIT 1)"
    "  UNION ALL SELECT (SELECT c.root_id FROM dispatchlet_calls AS c"
    "    WHERE c.state = 'ready' AND c.root_id > r.root_id ORDER BY c.root_id LIMIT 1),"
    "   r.n + 1"
    "  FROM roots AS r WHERE r.root_id IS NOT NULL AND r.n < %(roots)s"
    ") SELECT head.* FROM roots CROSS JOIN LATERAL ("
    f"  SELECT {_COLUMNS_CLAIMABLE} FROM dispatchlet_calls"
    "  WHERE state = 'ready' AND root_id = roots.root_id AND ready_at <= %(now)s"
    # In the index's order, which the planner then reads rather than another.
    "  ORDER BY root_id, ready_at, seq LIMIT 1) AS head"
    " WHERE roots.root_id IS NOT NULL"
)


def _claimable(row: Sequence[Any], now: float) -> bool:
    """Whether a call with ``(state, ready_at, lease_expires, poll_until)`` may be
    claimed at ``now``."""
    state, ready_at, lease_expires, poll_until = row
    if state == "ready":
        return bool(ready_at <= now)
    if state == "running":
        return bool(lease_expires <= now)
    return state == "waiting" and bool(poll_until <= now)


# A call's subtree: the call and its descendants, by parent links.
_TREE = (
    "WITH RECURSIVE tree (id) AS ("
    "  SELECT dispatch_id FROM dispatchlet_calls WHERE dispatch_id = %(id)s"
    "  UNION SELECT c.dispatch_id FROM dispatchlet_calls c JOIN tree ON c.parent_id = tree.id"
    ") "
)
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"

Connection = psycopg.AsyncConnection[Any]


def _signed(correlation_id: int) -> int:
    """A uint64 correlation id as the BIGINT that holds its bits."""
    return correlation_id - (1 << 64) if correlation_id >= 1 << 63 else correlation_id


def _unsigned(stored: int) -> int:
    return stored + (1 << 64) if stored < 0 else stored


class PostgresStore:
    """The ``Store`` contract on a PostgreSQL database, for several processes at once."""

    def __init__(self, url: str, pool: AsyncConnectionPool[Connection]) -> None:
        self.url = url
        self._pool = pool
        self._listener: asyncio.Task[None] | None = None
        self._wake: list[Callable[[], None]] = []
        self._finishing: list[tuple[_Finish, asyncio.Future[bool]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

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
            await store._transaction(store._migrate)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _transaction(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        async with self._pool.connection() as connection, connection.transaction():
            return await fn(connection)

    async def _migrate(self, db: Connection) -> None:
        await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await db.execute("CREATE TABLE IF NOT EXISTS dispatchlet_schema (version INTEGER NOT NULL)")
        row = await (await db.execute("SELECT version FROM dispatchlet_schema")).fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}, newer than this "
                f"dispatchlet's {SCHEMA_VERSION}: upgrade dispatchlet to use it"
            )
        for number in range(version, SCHEMA_VERSION):
            await db.execute(MIGRATIONS[number].encode())
        if row is None:
            await db.execute("INSERT INTO dispatchlet_schema VALUES (%s)", (SCHEMA_VERSION,))
        else:
            await db.execute("UPDATE dispatchlet_schema SET version = %s", (SCHEMA_VERSION,))

    # --- wake-ups ----------------------------------------------------------------------

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any process makes a call claimable now."""
        self._wake.append(wake)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    delay = 0.1
                    # What was notified while no one listened is found by polling.
                    self._notify_local()
                    async for _ in connection.notifies():
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

    # --- the contract ------------------------------------------------------------------

    async def dispatch(self, calls: Sequence[NewCall], *, now: float) -> list[str]:
        async def insert(db: Connection) -> list[str]:
            ids = await _insert(db, calls, now)
            await db.execute(_NOTIFY)
            return ids

        return await self._transaction(insert)

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
        async def lease(db: Connection) -> list[Claimed]:
            if cap is not None:
                await db.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))
            # Round-robin across roots, as in the SQLite store, among the oldest
            # claimable calls and the oldest of each root's; more than the batch, since
            # rows other processes hold are skipped below, and with a cap some
            # destinations may be full.
            window = claim_window(limit)
            count = 4 * limit
            params = {"now": now, "window": window, "roots": count, "count": count}
            found = await (await db.execute(_RANKED_WINDOW, params)).fetchall()
            ready, roots = found[0][6:8] if found else (0, 0)
            candidates = [(row[0], row[2]) for row in found]
            if needs_root_heads(ready, roots, window, limit):
                heads = await (await db.execute(_ROOT_HEADS, params)).fetchall()
                candidates = in_turns([row[:6] for row in found] + heads, count)
            running = {}
            if cap is not None:
                running = await _running(db, sorted({row[1] for row in candidates}), now)
            ids = fitting(candidates, cap=cap, running=running, room=room)
            if not ids:
                return []
            # Locked by primary key alone (the plan cannot stray into a scan), then
            # checked: a locked row is read as it is now, after any claim that won.
            locked = await (
                await db.execute(
                    "SELECT dispatch_id, state, ready_at, lease_expires, poll_until "
                    "FROM dispatchlet_calls WHERE dispatch_id = ANY(%s) FOR UPDATE SKIP LOCKED",
                    (ids,),
                )
            ).fetchall()
            taken = {row[0] for row in locked if _claimable(row[1:], now)}
            order = [i for i in ids if i in taken][:limit]
            expires = now + lease_seconds
            rows = await (
                await db.execute(
                    "UPDATE dispatchlet_calls SET state = 'running', lease_owner = %s, "
                    "lease_token = lease_token + 1, lease_expires = %s, "
                    "attempts = attempts + 1 WHERE dispatch_id = ANY(%s) "
                    "RETURNING lease_token, poll_max, " + _COLUMNS,
                    (owner, expires, order),
                )
            ).fetchall()
            updated = {row[2]: row for row in rows}
            claimed = []
            for dispatch_id in order:  # in the order of turns
                row = updated[dispatch_id]
                call = _call(row[2:])
                results: tuple[ChildResult, ...] = ()
                if call.poll:
                    results = await _undelivered(db, dispatch_id, row[1])
                lease = Lease(
                    dispatch_id, int(row[0]), expires, tuple(r.dispatch_id for r in results)
                )
                claimed.append(Claimed(call, lease, results))
            return claimed

        return await self._transaction(lease)

    async def release(self, lease: Lease, *, ready_at: float) -> bool:
        return await self._update(
            "UPDATE dispatchlet_calls SET state = 'ready', ready_at = %s, "
            "attempts = attempts - 1, lease_owner = NULL, lease_expires = NULL "
            "WHERE dispatch_id = %s AND lease_token = %s AND state = 'running'",
            (ready_at, lease.dispatch_id, lease.token),
        )

    async def extend(self, lease: Lease, *, until: float) -> bool:
        return await self._update(
            "UPDATE dispatchlet_calls SET lease_expires = %s "
            "WHERE dispatch_id = %s AND lease_token = %s AND state = 'running'",
            (until, lease.dispatch_id, lease.token),
        )

    async def _update(self, query: str, params: tuple[Any, ...]) -> bool:
        # One statement: atomic by itself, one round trip with no BEGIN and COMMIT.
        async with self._pool.connection() as db:
            cursor = await db.execute(query.encode(), params)
            return cursor.rowcount == 1

    async def _select(self, query: Any, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as db:
            return await (await db.execute(query, params)).fetchall()

    async def finish(
        self,
        lease: Lease,
        status: int,
        result: bytes,
        *,
        now: float,
        orphans: tuple[int, bytes] = (0, b""),
    ) -> bool:
        # Group commit: finishes that arrive while FINISH_FLUSHES batches are being
        # written wait for the next batch, so that under load many share one
        # transaction, one commit and one WAL flush; each is still fenced by its own
        # lease.
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finishing.append(((lease, status, result, now, orphans), future))
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
        try:
            async with self._pool.connection() as db:
                async with db.pipeline(), db.transaction():
                    finished = await _finish_all(db, [finish for finish, _ in batch])
                done = [(f[0].dispatch_id, f[0].token) in finished for f, _ in batch]
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
    ) -> list[str] | None:
        async def update(db: Connection) -> list[str] | None:
            row = await (
                await db.execute(
                    "UPDATE dispatchlet_calls SET state = 'waiting', poll = %s, poll_min = %s, "
                    "poll_max = %s, poll_until = %s, lease_owner = NULL, lease_expires = NULL, "
                    "attempts = 0, status = NULL "
                    "WHERE dispatch_id = %s AND lease_token = %s AND state = 'running' "
                    "RETURNING root_id",
                    (poll, min_results, max_results, until, lease.dispatch_id, lease.token),
                )
            ).fetchone()
            if row is None:
                return None
            await _deliver(db, lease.delivered)
            ids = await _insert(db, children_of(lease.dispatch_id, row[0], children), now)
            # Results of earlier polls may be enough already.
            await _wake(db, lease.dispatch_id, now)
            if ids:
                await db.execute(_NOTIFY)
            return ids

        return await self._transaction(update)

    async def restart(self, lease: Lease, *, now: float, orphans: tuple[int, bytes]) -> bool:
        async def update(db: Connection) -> bool:
            cursor = await db.execute(
                "UPDATE dispatchlet_calls SET state = 'ready', ready_at = %s, poll = '', "
                "status = NULL, restarts = restarts + 1, lease_owner = NULL, lease_expires = NULL "
                "WHERE dispatch_id = %s AND lease_token = %s AND state = 'running'",
                (now, lease.dispatch_id, lease.token),
            )
            if cursor.rowcount != 1:
                return False
            await _end_descendants(db, lease.dispatch_id, orphans, now)
            # The old children's results belong to the run that was dropped.
            await _set_aside_children(db, lease.dispatch_id)
            return True

        return await self._transaction(update)

    async def retry(
        self, lease: Lease, status: int, result: bytes, *, ready_at: float, now: float
    ) -> bool:
        del now
        return await self._update(
            "UPDATE dispatchlet_calls SET state = 'ready', status = %s, result = %s, "
            "ready_at = %s, lease_owner = NULL, lease_expires = NULL "
            "WHERE dispatch_id = %s AND lease_token = %s AND state = 'running'",
            (status, result, ready_at, lease.dispatch_id, lease.token),
        )

    async def tail_call(
        self, lease: Lease, function: str, endpoint: str, input: bytes, *, now: float
    ) -> bool:
        async def update(db: Connection) -> bool:
            cursor = await db.execute(
                "UPDATE dispatchlet_calls SET function = %s, endpoint = %s, destination = %s, "
                "input = %s, state = 'ready', ready_at = %s, attempts = 0, status = NULL, "
                "result = '', "
                "lease_owner = NULL, lease_expires = NULL, poll = '' "
                "WHERE dispatch_id = %s AND lease_token = %s AND state = 'running'",
                (
                    function,
                    endpoint,
                    destination(endpoint),
                    input,
                    now,
                    lease.dispatch_id,
                    lease.token,
                ),
            )
            if cursor.rowcount != 1:
                return False
            # The function handed over to starts afresh: earlier children are not its.
            await _set_aside_children(db, lease.dispatch_id)
            return True

        return await self._transaction(update)

    async def get(self, dispatch_id: str) -> Call | None:
        rows = await self._select(f"{_SELECT} WHERE dispatch_id = %s".encode(), (dispatch_id,))
        return _call(rows[0]) if rows else None

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
    ) -> list[Call]:
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        for column, value in (
            ("state", None if state is None else state.value),
            ("function", function),
            ("root_id", root_id),
            ("status", status),
        ):
            if value is not None:
                clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if status is not None or failed:
            # Only a done call's status is final (a retried one keeps its last attempt's).
            clauses.append(sql.SQL("state = 'done'"))
        if failed:
            clauses.append(sql.SQL("status <> %s"))
            params.append(Status.OK.value)
        order, beyond = ("DESC", "<") if newest_first else ("ASC", ">")
        if after is not None:
            clauses.append(
                sql.SQL(f"seq {beyond} (SELECT seq FROM dispatchlet_calls WHERE dispatch_id = %s)")
            )
            params.append(after)
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        query = sql.SQL(_SELECT) + where + sql.SQL(f" ORDER BY seq {order} LIMIT %s")

        return [_call(row) for row in await self._select(query, (*params, limit))]

    async def cancel(self, dispatch_id: str, status: int, result: bytes, *, now: float) -> int:
        async def end(db: Connection) -> int:
            ended = await (
                await db.execute(
                    _TREE + "UPDATE dispatchlet_calls SET state = 'done', status = %(status)s, "
                    "result = %(result)s, finished_at = %(now)s, lease_owner = NULL, "
                    "lease_expires = NULL, poll = '', "
                    # A lease still out is fenced off: its late answer is not recorded.
                    "lease_token = lease_token + 1 "
                    "WHERE dispatch_id IN (SELECT id FROM tree) AND state <> 'done' "
                    "RETURNING dispatch_id, parent_id",
                    {"id": dispatch_id, "status": status, "result": result, "now": now},
                )
            ).fetchall()
            for ended_id, parent_id in ended:
                if ended_id == dispatch_id and parent_id is not None:
                    await _wake(db, parent_id, now)
            return len(ended)

        return await self._transaction(end)

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


_Finish = tuple[Lease, int, bytes, float, tuple[int, bytes]]
# The batch's finishes that took effect: the call done under the finishing lease's token.
_FINISHES = (
    "finishes AS (SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::bigint[],"
    "  %(nows)s::double precision[], %(orphan_statuses)s::integer[], %(orphan_results)s::bytea[])"
    "  AS f (id, token, now, orphan_status, orphan_result)),"
    " finished AS (SELECT f.* FROM finishes AS f JOIN dispatchlet_calls AS c"
    "  ON c.dispatch_id = f.id AND c.lease_token = f.token AND c.state = 'done')"
)
_FINISH_ALL = (
    "UPDATE dispatchlet_calls AS c SET state = 'done', status = f.status, result = f.result,"
    " finished_at = f.now, lease_owner = NULL, lease_expires = NULL, poll = ''"
    " FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(statuses)s::integer[],"
    "  %(results)s::bytea[], %(nows)s::double precision[]) AS f (id, token, status, result, now)"
    " WHERE c.dispatch_id = f.id AND c.lease_token = f.token AND c.state = 'running'"
    " RETURNING c.dispatch_id, c.lease_token"
)
# The results a finished resume was given are delivered.
_DELIVER_ALL = (
    "UPDATE dispatchlet_calls AS child SET delivered = TRUE"
    " FROM unnest(%(given)s::text[], %(given_to)s::text[], %(given_token)s::bigint[])"
    "  AS d (id, parent, token)"
    " JOIN dispatchlet_calls AS p"
    "  ON p.dispatch_id = d.parent AND p.lease_token = d.token AND p.state = 'done'"
    " WHERE child.dispatch_id = d.id"
)
# The unfinished descendants of each finished call end with that finish's orphans.
_END_DESCENDANTS_ALL = (
    f"WITH RECURSIVE {_FINISHES},"
    " tree (id, seed) AS ("
    "  SELECT c.dispatch_id, f.id FROM finished AS f"
    "   JOIN dispatchlet_calls AS c ON c.parent_id = f.id"
    "  UNION SELECT c.dispatch_id, tree.seed FROM dispatchlet_calls AS c"
    "   JOIN tree ON c.parent_id = tree.id)"
    " UPDATE dispatchlet_calls AS c SET state = 'done', status = f.orphan_status,"
    " result = f.orphan_result, finished_at = f.now, lease_owner = NULL,"
    " lease_expires = NULL, poll = '', lease_token = c.lease_token + 1"
    " FROM tree JOIN finished AS f ON f.id = tree.seed"
    " WHERE c.dispatch_id = tree.id AND c.state <> 'done'"
)
# The waiting parents of finished calls made ready, if they now have the results they
# wait for; the other processes are told.
_WAKE_PARENTS_ALL = (
    f"WITH {_FINISHES},"
    " woken AS ("
    "  UPDATE dispatchlet_calls AS parent SET state = 'ready', ready_at = w.now"
    "  FROM (SELECT c.parent_id, max(f.now) AS now FROM finished AS f"
    "   JOIN dispatchlet_calls AS c ON c.dispatch_id = f.id"
    "   WHERE c.parent_id IS NOT NULL GROUP BY c.parent_id) AS w"
    "  WHERE parent.dispatch_id = w.parent_id AND parent.state = 'waiting'"
    "  AND parent.poll_min <= ("
    "   SELECT count(*) FROM dispatchlet_calls AS child"
    "   WHERE child.parent_id = parent.dispatch_id AND child.state = 'done'"
    "   AND NOT child.delivered)"
    "  RETURNING parent.dispatch_id)"
    f" SELECT pg_notify('{CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM woken)"
)


async def _finish_all(db: Connection, finishes: Sequence[_Finish]) -> set[tuple[str, int]]:
    """Record a batch of finishes, each fenced by its own lease, in four statements for
    the whole batch (pipelined: the later ones act only on the finishes that took
    effect); the (dispatch id, lease token) of each finish that took effect."""
    leases = [lease for lease, *_ in finishes]
    params = {
        "ids": [lease.dispatch_id for lease in leases],
        "tokens": [lease.token for lease in leases],
        "statuses": [status for _, status, *_ in finishes],
        "results": [result for _, _, result, *_ in finishes],
        "nows": [now for *_, now, _ in finishes],
        "orphan_statuses": [orphans[0] for *_, orphans in finishes],
        "orphan_results": [orphans[1] for *_, orphans in finishes],
        "given": [child for lease in leases for child in lease.delivered],
        "given_to": [lease.dispatch_id for lease in leases for _ in lease.delivered],
        "given_token": [lease.token for lease in leases for _ in lease.delivered],
    }
    finished = await db.execute(_FINISH_ALL, params)
    if params["given"]:
        await db.execute(_DELIVER_ALL, params)
    await db.execute(_END_DESCENDANTS_ALL, params)
    await db.execute(_WAKE_PARENTS_ALL, params)
    return {(row[0], int(row[1])) for row in await finished.fetchall()}


async def _running(db: Connection, destinations: list[str], now: float) -> dict[str, int]:
    """Leases in force per destination, every process's (the caller holds the claim
    lock, so that none is taken meanwhile)."""
    rows = await (
        await db.execute(
            "SELECT destination, count(*) FROM dispatchlet_calls "
            "WHERE state = 'running' AND lease_expires > %s AND destination = ANY(%s) "
            "GROUP BY destination",
            (now, destinations),
        )
    ).fetchall()
    return {row[0]: int(row[1]) for row in rows}


async def _insert(db: Connection, calls: Sequence[NewCall], now: float) -> list[str]:
    ids = []
    rows = []
    for call in calls:
        dispatch_id = new_dispatch_id(now)
        rows.append(
            (
                dispatch_id,
                call.root_id or dispatch_id,
                call.parent_id,
                _signed(call.correlation_id),
                call.function,
                call.endpoint,
                destination(call.endpoint) if call.endpoint else "",
                call.version,
                call.input,
                now,
                call.expires_at,
                now,
            )
        )
        ids.append(dispatch_id)
    if rows:
        async with db.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO dispatchlet_calls (dispatch_id, root_id, parent_id, "
                "correlation_id, function, endpoint, destination, version, input, state, "
                "created_at, expires_at, ready_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'ready', %s, %s, %s)",
                rows,
            )
    return ids


async def _undelivered(db: Connection, parent_id: str, limit: int) -> tuple[ChildResult, ...]:
    rows = await (
        await db.execute(
            "SELECT dispatch_id, correlation_id, status, result FROM dispatchlet_calls "
            "WHERE parent_id = %s AND state = 'done' AND NOT delivered "
            "ORDER BY finished_at, seq LIMIT %s",
            (parent_id, max(limit, 1)),
        )
    ).fetchall()
    return tuple(ChildResult(r[0], _unsigned(r[1]), r[2], bytes(r[3])) for r in rows)


async def _deliver(db: Connection, ids: Sequence[str]) -> None:
    if ids:
        await db.execute(
            "UPDATE dispatchlet_calls SET delivered = TRUE WHERE dispatch_id = ANY(%s)",
            (list(ids),),
        )


async def _end_descendants(
    db: Connection, dispatch_id: str, orphans: tuple[int, bytes], now: float
) -> None:
    """End the call's unfinished descendants with ``orphans``."""
    status, result = orphans
    await db.execute(
        _TREE + "UPDATE dispatchlet_calls SET state = 'done', status = %(status)s, "
        "result = %(result)s, finished_at = %(now)s, lease_owner = NULL, lease_expires = NULL, "
        "poll = '', lease_token = lease_token + 1 "
        "WHERE dispatch_id IN (SELECT id FROM tree) AND dispatch_id <> %(id)s "
        "AND state <> 'done'",
        {"id": dispatch_id, "status": status, "result": result, "now": now},
    )


async def _set_aside_children(db: Connection, dispatch_id: str) -> None:
    """The call is ready again with no Poll: its children's results are no longer for
    it; the others are told it is ready."""
    await db.execute(
        "UPDATE dispatchlet_calls SET delivered = TRUE WHERE parent_id = %s", (dispatch_id,)
    )
    await db.execute(_NOTIFY)


async def _wake(db: Connection, parent_id: str, now: float) -> None:
    """Make a waiting parent ready once it has the results it waits for."""
    cursor = await db.execute(
        "UPDATE dispatchlet_calls SET state = 'ready', ready_at = %(now)s "
        "WHERE dispatch_id = %(id)s AND state = 'waiting' AND poll_min <= ("
        "  SELECT count(*) FROM dispatchlet_calls AS child"
        "  WHERE child.parent_id = %(id)s AND child.state = 'done' AND NOT child.delivered)",
        {"id": parent_id, "now": now},
    )
    if cursor.rowcount:
        await db.execute(_NOTIFY)


def _call(row: Sequence[Any]) -> Call:
    # As the SQLite store reads its rows, the correlation id's bits made unsigned again.
    return call_from_row((*row[:5], _unsigned(row[5]), *row[6:]))


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the database"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})
