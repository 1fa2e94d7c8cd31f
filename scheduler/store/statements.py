"""The SQL of both stores, written once.

Each statement is a template in which a few words differ by database, and
``Statements(dialect)`` renders all of them for one database when its store module is
imported. The words a template may use:

- ``:name``, a parameter (rendered ``:name`` for SQLite, ``%(name)b`` for psycopg);
  every statement takes its parameters by name;
- ``{calls}``, the table; ``{seq}``, the column in creation order (SQLite's ``rowid``,
  PostgreSQL's ``seq``); ``{empty}``, an empty BLOB; ``{true}`` and ``{false}``;
- ``{double}`` and ``{blob}``, column types, for migrations.

``one_of(column, name)`` is a membership test: PostgreSQL's store passes the whole list
once (``= ANY``), SQLite's runs the statement once per value (``=``), which SQLite does
as fast without a round trip. The few statements only one database has (PostgreSQL's
row locks, notifications and batches of finishes; each database's own skip scan) are
here too, so that a new column is added to every statement in this one file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...core.status import Status
from ..calls import destination
from . import (
    ERROR_MESSAGE_BYTES,
    LISTED_ERROR_BYTES,
    Lease,
    NewAttempt,
    NewCall,
    limit_columns,
    new_dispatch_id,
    policy_columns,
    stored_correlation_id,
    stored_text,
)
from .limits import LIMIT_COLUMNS, LIMITED

CHANNEL = "dispatchlet_ready"
"""The PostgreSQL channel that is notified when a call becomes claimable now."""
CHANGED = "dispatchlet_changed"
"""The PostgreSQL channel that is notified when calls end (payload: a line for each,
its dispatch id and root id) or a retry of one is recorded (its dispatch id), for their
waiters."""
ENDED_PER_NOTICE = 100
"""The most ended calls told in one notification: 6,600 bytes, of the 8,000 a payload
may have (a dispatch id is 32 characters)."""


@dataclass(frozen=True)
class Dialect:
    """The words in which one database's SQL differs from the other's."""

    name: str
    calls: str
    seq: str
    empty: str
    true: str
    false: str
    double: str
    blob: str
    parameter: str
    """A named parameter, ``{}`` standing for its name."""
    many: bool
    """Whether ``one_of`` takes a whole list (else one value a run)."""
    in_order: str = ""
    """What ends an index's columns so that its entries of one key are in creation order
    (SQLite's indexes end with the rowid already; PostgreSQL's name ``seq``)."""

    def render(self, template: str) -> str:
        """``template`` in this dialect."""
        words = {
            "calls": self.calls,
            "seq": self.seq,
            "empty": self.empty,
            "true": self.true,
            "false": self.false,
            "double": self.double,
            "blob": self.blob,
            "in_order": self.in_order,
        }
        text = template.format_map(words)
        # A parameter is ``:name``; ``::type`` (a PostgreSQL cast) is not one.
        return _PARAMETER.sub(lambda m: self.parameter.format(m.group(1)), text)

    def one_of(self, column: str, name: str) -> str:
        """``column`` is one of the values of the parameter ``name``."""
        return f"{column} = ANY(:{name})" if self.many else f"{column} = :{name}"


_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)")

SQLITE = Dialect(
    name="sqlite",
    calls="calls",
    seq="rowid",
    empty="x''",
    true="1",
    false="0",
    double="REAL",
    blob="BLOB",
    parameter=":{}",
    many=False,
)
POSTGRES = Dialect(
    name="postgres",
    calls="dispatchlet_calls",
    seq="seq",
    empty="''",
    true="TRUE",
    false="FALSE",
    double="DOUBLE PRECISION",
    blob="BYTEA",
    # Sent in binary: psycopg writes an array out as text element by element in Python
    # (a batch of ten finishes' eight arrays: ~0.3 ms), in binary in C (~0.04 ms); each
    # value also reaches the server typed, with nothing left to parse.
    parameter="%({})b",
    many=True,
    in_order=", seq",
)


@dataclass(frozen=True)
class Index:
    """A migration that builds an index on a table that may be large and in use:
    PostgreSQL's store builds it ``CONCURRENTLY`` (reads and writes go on meanwhile),
    outside any transaction, again if an earlier build failed and left it invalid;
    SQLite's (one process) plainly, with the rest of its migration."""

    name: str
    on: str
    """What follows the name: ``ON table (columns) [WHERE ...]``."""

    def render(self, dialect: Dialect) -> Index:
        return Index(dialect.render(self.name), dialect.render(self.on))

    def create(self, *, concurrently: bool = False) -> str:
        how = "CONCURRENTLY " if concurrently else ""
        return f"CREATE INDEX {how}IF NOT EXISTS {self.name} {self.on}"


@dataclass(frozen=True)
class Backfill:
    """A migration that fills a column in every call ``where`` selects: PostgreSQL's
    store runs it in batches of calls by dispatch id, one short transaction each (it
    must give the same result run again: a process that stops midway runs it whole
    again), so that no row stays locked for long; SQLite's in one statement."""

    set: str
    where: str

    def render(self, dialect: Dialect) -> Backfill:
        return Backfill(dialect.render(self.set), dialect.render(self.where))

    def update(self, calls: str, *, within: str = "") -> str:
        """The update of ``calls`` (also ``within``: a batch's bounds)."""
        where = f"({self.where}) AND {within}" if within else self.where
        return f"UPDATE {calls} SET {self.set} WHERE {where}"


@dataclass(frozen=True)
class Only:
    """A migration of one database's schema (``Dialect.name``): nothing but the
    version's update for the other."""

    dialect: str
    sql: str

    def render(self, dialect: Dialect) -> str:
        return dialect.render(self.sql) if dialect.name == self.dialect else ""


Step = str | Index | Backfill
"""A schema change in one database's SQL: plain DDL, run in one transaction with the
version's update; else an index or a backfill of a table that may be large."""
Migration = Step | Only

STARTS = "{calls}_starts"
"""The starts of rate-limited calls (``limits``): function, time, and the limit (count
and period) it started under."""
MESSAGES = "{calls}_messages"
"""The mailboxes: messages sent to calls that no receive has taken yet (``send``)."""

MIGRATIONS: tuple[Migration, ...] = (
    # Idempotent Dispatch: request ids and call keys (see ``idempotency``); a key is
    # deleted with its call.
    "CREATE TABLE {calls}_by_request ("
    "  request_id TEXT PRIMARY KEY,"
    "  digest {blob} NOT NULL,"
    "  dispatch_ids TEXT NOT NULL,"
    "  created_at {double} NOT NULL"
    ");"
    "CREATE TABLE {calls}_by_key ("
    "  call_key TEXT PRIMARY KEY,"
    "  dispatch_id TEXT NOT NULL REFERENCES {calls} (dispatch_id) ON DELETE CASCADE"
    ");"
    "CREATE INDEX {calls}_by_key_call ON {calls}_by_key (dispatch_id)",
    # How often a call's outcome could not be stored (a poison call ends after a few);
    # each root's count of calls below it, kept by the Poll that adds them, for a bound
    # on a tree's size that costs one row's update (counted for the trees there are by
    # the backfill after); and the ended calls whose unfinished descendants are still
    # to end (``ENDINGS``), in batches. A column with a constant default is added
    # without rewriting the table: the lock it takes is held for an instant.
    """
    ALTER TABLE {calls} ADD COLUMN unstored INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE {calls} ADD COLUMN descendants INTEGER NOT NULL DEFAULT 0
    """,
    Backfill(
        set="descendants = (SELECT count(*) FROM {calls} AS member"
        " WHERE member.root_id = {calls}.dispatch_id) - 1",
        where="dispatch_id = root_id AND EXISTS ("
        "SELECT 1 FROM {calls} AS child WHERE child.parent_id = {calls}.dispatch_id)",
    ),
    # (If not there already: the shared entries were numbered otherwise before they
    # shipped, so a database of a build between may hold it at a lower version.)
    """
    CREATE TABLE IF NOT EXISTS dispatchlet_endings (
        dispatch_id    TEXT PRIMARY KEY,
        status         INTEGER NOT NULL,
        result         {blob} NOT NULL,
        set_aside_only INTEGER NOT NULL
    )
    """,
    # What List filters on, each in creation order, so that a filtered page is a range
    # of one index read from its end (newest first) or its start, never a scan of the
    # table: a state, a function, a root (the (root_id, dispatch_id) index is in
    # dispatch id order, not creation order), a final status, the failed calls (the OK
    # status written out: a partial index serves only a query that says the same).
    # The states' indexes are split by ``finished_at``, which only List's queries name,
    # so that a claim, which filters on a state too, keeps to its own indexes.
    Index("{calls}_list_unfinished", "ON {calls} (state{in_order}) WHERE finished_at IS NULL"),
    Index("{calls}_list_finished", "ON {calls} (state{in_order}) WHERE finished_at IS NOT NULL"),
    Index("{calls}_list_function", "ON {calls} (function{in_order})"),
    Index("{calls}_list_root", "ON {calls} (root_id{in_order})"),
    Index("{calls}_list_status", "ON {calls} (status{in_order}) WHERE state = 'done'"),
    Index(
        "{calls}_list_failed",
        f"ON {{calls}} (state{{in_order}}) WHERE state = 'done' AND status <> {Status.OK.value:d}",
    ),
    # The latest time one SQLite process wrote (within a second), from which the next
    # one's clock starts when the wall clock is behind it (``SQLiteStore``). PostgreSQL's
    # processes keep the database's time.
    Only("sqlite", "CREATE TABLE clock (mark REAL NOT NULL); INSERT INTO clock VALUES (0)"),
    # Re-runs (``CallService.Rerun``): the call each is a re-run of. The children of a call and
    # the re-runs of one are listed in creation order, each through its own index, which
    # holds only the calls that have one.
    "ALTER TABLE {calls} ADD COLUMN rerun_of TEXT",
    Index("{calls}_list_parent", "ON {calls} (parent_id{in_order}) WHERE parent_id IS NOT NULL"),
    Index("{calls}_list_rerun", "ON {calls} (rerun_of{in_order}) WHERE rerun_of IS NOT NULL"),
    # The trace context of the span a call's attempts are children of (``Call``'s
    # ``trace_context``); empty without tracing. A constant default: no rewrite.
    "ALTER TABLE {calls} ADD COLUMN trace_context TEXT NOT NULL DEFAULT ''",
    # The calls finished within a window (the overview's last hour), read as a range
    # of this index rather than a scan of every call kept.
    Index("{calls}_finished_at", "ON {calls} (finished_at) WHERE finished_at IS NOT NULL"),
    # Retention (``PurgeStatements``): the finished roots in the order they finished,
    # and the request ids by the time of their Dispatch, so that a batch of deletions
    # reads a range of an index, never the whole table.
    Index(
        "{calls}_finished_roots",
        "ON {calls} (finished_at) WHERE state = 'done' AND dispatch_id = root_id",
    ),
    Index("{calls}_by_request_created", "ON {calls}_by_request (created_at)"),
    # Each call's history of attempts (``ATTEMPTS``): its latest few, numbered in the
    # call's life (the last number is how many were recorded), deleted with the call.
    "CREATE TABLE {calls}_attempts ("
    "  dispatch_id TEXT NOT NULL REFERENCES {calls} (dispatch_id) ON DELETE CASCADE,"
    "  number INTEGER NOT NULL,"
    "  function TEXT NOT NULL,"
    "  started_at {double} NOT NULL,"
    "  duration {double} NOT NULL,"
    "  status INTEGER NOT NULL,"
    "  error_type TEXT NOT NULL,"
    "  error_message TEXT NOT NULL,"
    "  PRIMARY KEY (dispatch_id, number)"
    ")",
    # List's calls created within a time range: a range of this index, read in its order
    # (creation time, then creation order) from its end (newest first) or its start.
    Index("{calls}_list_created", "ON {calls} (created_at{in_order})"),
    # Messages to workflows (``core.messages``): a receive is a child call marked with
    # its topic (NULL for every other call: no rewrite), and the messages sent to a call
    # before a receive of it took them wait in its mailbox, in the order they were sent
    # (numbered per call), deleted with the call.
    "ALTER TABLE {calls} ADD COLUMN topic TEXT;"
    f"CREATE TABLE {MESSAGES} ("
    "  dispatch_id TEXT NOT NULL REFERENCES {calls} (dispatch_id) ON DELETE CASCADE,"
    "  number INTEGER NOT NULL,"
    "  topic TEXT NOT NULL,"
    "  result {blob} NOT NULL,"
    "  sent_at {double} NOT NULL,"
    "  PRIMARY KEY (dispatch_id, number)"
    ")",
    # A call's own retry policy (``CallPolicy``), 0 for the scheduler's settings; the
    # call a Poll's child with a known key takes its outcome from (``follows``).
    # Constant defaults: no rewrite of the table.
    """
    ALTER TABLE {calls} ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE {calls} ADD COLUMN attempt_timeout {double} NOT NULL DEFAULT 0;
    ALTER TABLE {calls} ADD COLUMN backoff_initial {double} NOT NULL DEFAULT 0;
    ALTER TABLE {calls} ADD COLUMN backoff_maximum {double} NOT NULL DEFAULT 0;
    ALTER TABLE {calls} ADD COLUMN backoff_multiplier {double} NOT NULL DEFAULT 0;
    ALTER TABLE {calls} ADD COLUMN follows TEXT
    """,
    # Schedules (cron, ``schedules``): a table of their own, not tied to the calls, so
    # that retention never deletes one; small (a row a schedule), its index serving the
    # ticker's look for the due ones.
    "CREATE TABLE {calls}_schedules ("
    "  name TEXT PRIMARY KEY,"
    "  cron TEXT NOT NULL,"
    "  timezone TEXT NOT NULL,"
    "  function TEXT NOT NULL,"
    "  endpoint TEXT NOT NULL,"
    "  input {blob} NOT NULL,"
    "  paused INTEGER NOT NULL DEFAULT 0,"
    "  next_tick {double} NOT NULL,"
    "  last_tick {double},"
    "  last_dispatch_id TEXT NOT NULL DEFAULT '',"
    "  owner TEXT NOT NULL DEFAULT '',"
    "  created_at {double} NOT NULL,"
    "  updated_at {double} NOT NULL,"
    "  options {blob} NOT NULL,"
    "  expiration {double} NOT NULL"
    ");"
    "CREATE INDEX {calls}_schedules_due ON {calls}_schedules (next_tick) WHERE paused = 0",
    # Concurrency and rate limits (``limits``): each call's, constant defaults (no
    # rewrite); the starts of rate-limited calls, counted per function within a period;
    # and the running limited calls per function and key, the only rows a claim of a
    # limited call counts (an unlimited call is not in that index).
    "ALTER TABLE {calls} ADD COLUMN concurrency INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE {calls} ADD COLUMN concurrency_key TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE {calls} ADD COLUMN concurrency_per_key INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE {calls} ADD COLUMN rate_count INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE {calls} ADD COLUMN rate_period {double} NOT NULL DEFAULT 0;"
    f"CREATE TABLE {STARTS} (function TEXT NOT NULL, started_at {{double}} NOT NULL,"
    "  rate_count INTEGER NOT NULL, rate_period {double} NOT NULL);"
    f"CREATE INDEX {STARTS}_function ON {STARTS} (function, started_at)",
    Index(
        "{calls}_limited_running",
        f"ON {{calls}} (function, concurrency_key) WHERE state = 'running' AND {LIMITED}",
    ),
)
"""Schema changes written once for both stores, after each store's own history (its
module's ``MIGRATIONS``, which ship as they are): each entry moves both schemas one
version up, e.g. ``"ALTER TABLE {calls} ADD COLUMN started_at {double}"``; an index of
``{calls}`` is an ``Index``, the filling of a new column a ``Backfill``, each an entry
of its own (on PostgreSQL each runs while the scheduler's other processes work on)."""

# A call's own retry policy (``stored_policy``).
_POLICY = "max_attempts, attempt_timeout, backoff_initial, backoff_maximum, backoff_multiplier"
# A call's limits (``Limits``).
_CALL_LIMITS = "concurrency, concurrency_key, concurrency_per_key, rate_count, rate_period"
# The columns of a Call, in its fields' order (``call_from_row`` reads them).
COLUMNS = (
    "dispatch_id, function, endpoint, input, version, correlation_id, parent_id, "
    "root_id, state, status, result, attempts, created_at, expires_at, ready_at, "
    "finished_at, poll, restarts, rerun_of, trace_context, topic, "
    + _POLICY
    + ", follows, "
    + _CALL_LIMITS
)
# The columns of a Call as List shows it (``Store.list``): its input and poll state
# left out, its result only when it is an error of at most LISTED_ERROR_BYTES. Nothing
# else of those BLOBs is read (a length is known without reading the value).
SUMMARY = (
    "dispatch_id, function, endpoint, CAST({empty} AS {blob}), version, correlation_id, "
    "parent_id, root_id, state, status, "
    f"CASE WHEN status <> {Status.OK.value:d} AND length(result) <= {LISTED_ERROR_BYTES:d} "
    "THEN result ELSE CAST({empty} AS {blob}) END, "
    "attempts, created_at, expires_at, ready_at, finished_at, CAST({empty} AS {blob}), "
    "restarts, rerun_of, trace_context, topic, " + _POLICY + ", follows, " + _CALL_LIMITS
)
# The columns a new call is given (its state is 'ready').
INSERTED = (
    "dispatch_id",
    "root_id",
    "parent_id",
    "correlation_id",
    "function",
    "endpoint",
    "destination",
    "version",
    "input",
    "created_at",
    "expires_at",
    "ready_at",
    "rerun_of",
    "trace_context",
    "concurrency",
    "concurrency_key",
    "concurrency_per_key",
    "rate_count",
    "rate_period",
    "poll",
    *_POLICY.split(", "),
    "follows",
)
# Each inserted column's PostgreSQL type, for a batch's rows inserted in one statement
# (``Statements.insert_rows``): one array per column.
_INSERTED_TYPES = {
    "correlation_id": "bigint",
    "input": "bytea",
    "poll": "bytea",
    **dict.fromkeys(
        ("created_at", "expires_at", "ready_at", "rate_period", "attempt_timeout"),
        "double precision",
    ),
    **dict.fromkeys(
        ("backoff_initial", "backoff_maximum", "backoff_multiplier"), "double precision"
    ),
    **dict.fromkeys(
        ("concurrency", "concurrency_per_key", "rate_count", "max_attempts"), "integer"
    ),
}
"""The others are text."""
# What a call's lease is, once it has none.
_UNLEASED = "lease_owner = NULL, lease_expires = NULL"
# Only the current lease of a running call may change it.
_FENCED = "WHERE dispatch_id = :id AND lease_token = :token AND state = 'running'"
# The same, with the lease's owner too, where a claim may be lost and its token given
# again to another claim (PostgreSQL: a claim's commit is not waited for, and a server
# crash may lose it while the schedulers live on). Each claim's owner is its own.
_OWNED = f"{_FENCED} AND lease_owner = :owner"


def _ended(status: str, result: str, now: str, *, keep_failed_poll: bool = False) -> str:
    """What ending a call sets, given the SQL of its status, result and time. Its poll
    is dropped, or, with ``keep_failed_poll``, kept when the status is not OK: a failed
    workflow's journal, which a resume starts from (``CallService.Resume``)."""
    poll = "{empty}"
    if keep_failed_poll:
        poll = f"CASE WHEN {status} = {Status.OK.value:d} THEN {{empty}} ELSE poll END"
    return (
        f"state = 'done', status = {status}, result = {result}, finished_at = {now}, "
        f"{_UNLEASED}, poll = {poll}"
    )


# A lease still out is fenced off: its late answer is not recorded.
_FENCE_OFF = "lease_token = lease_token + 1"

# The claimable calls a claim considers, as (dispatch_id, root_id, destination, ready_at,
# seq, state, and whether the call has limits): the oldest of each claimable
# state, each read through its own partial index, so that neither finished calls nor a
# long backlog are scanned.
_CLAIMABLE = (
    f"dispatch_id, root_id, destination, ready_at, {{seq}} AS seq, state, {LIMITED} AS limited"
)


def _oldest_claimable(held: str = "") -> str:
    """The oldest claimable calls of each state (``_CLAIMABLE``), those ``held`` (a
    condition) says are held back by a limit left out."""
    return (
        f"SELECT * FROM (SELECT {_CLAIMABLE} FROM {{calls}}"
        f"  WHERE state = 'ready' AND ready_at <= :now{held} ORDER BY ready_at, {{seq}}"
        "  LIMIT :window) AS ready"
        f" UNION ALL SELECT * FROM (SELECT {_CLAIMABLE} FROM {{calls}}"
        f"  WHERE state = 'running' AND lease_expires <= :now{held} ORDER BY lease_expires"
        "  LIMIT :window) AS lapsed"
        f" UNION ALL SELECT * FROM (SELECT {_CLAIMABLE} FROM {{calls}}"
        f"  WHERE state = 'waiting' AND poll_until <= :now{held} ORDER BY poll_until"
        "  LIMIT :window) AS due"
    )


def _ranked_window(held: str = "") -> str:
    """The window's calls in round-robin order (each root's oldest, then each root's
    second, ...), the first :count of them, each with how many ready calls and how many
    roots the window holds, whether it has limits (read only for those that do:
    ``limits_of``), and how many destinations the window holds (a claim its full
    destinations left short deals the whole window only if one with room may be found
    there: ``claims.may_find_more``)."""
    return (
        f"WITH found AS ({_oldest_claimable(held)}), ranked AS ("
        "  SELECT *, ROW_NUMBER() OVER (PARTITION BY root_id ORDER BY ready_at, seq) AS turn"
        "  FROM found"
        ") SELECT dispatch_id, root_id, destination, ready_at, seq, state,"
        "  (SELECT count(*) FROM found WHERE state = 'ready'),"
        "  (SELECT count(DISTINCT root_id) FROM found), limited,"
        "  (SELECT count(DISTINCT destination) FROM found)"
        " FROM ranked ORDER BY turn, ready_at, seq LIMIT :count"
    )


# The window without the calls of the functions (:held_functions) and the keys
# (:held_keys, each ``function key``: a function name has no space) that a limit holds
# back, so that a backlog of them does not hide the calls behind it (``limits``). It
# reads past those calls in the index: only a claim that they left short runs it.
_HELD = {
    "sqlite": (
        " AND function NOT IN (SELECT value FROM json_each(:held_functions))"
        " AND function || ' ' || concurrency_key NOT IN"
        "  (SELECT value FROM json_each(:held_keys))"
    ),
    "postgres": (
        " AND function <> ALL(:held_functions::text[])"
        " AND function || ' ' || concurrency_key <> ALL(:held_keys::text[])"
    ),
}
# Whether the window's ready calls hold one of another destination than :destinations
# (``claims.may_find_more``, for a claim that its oldest calls decided): it reads no
# further than the first one, at most the window.
_OTHER_DESTINATION = (
    "SELECT 1 FROM (SELECT destination FROM {calls} WHERE state = 'ready'"
    "  AND ready_at <= :now ORDER BY ready_at, {seq} LIMIT :window) AS ready"
    " WHERE destination NOT IN ({destinations}) LIMIT 1"
)


def _values_of(name: str) -> dict[str, str]:
    """The values of the list parameter ``name`` as a subquery, in each database's form
    (SQLite's: a JSON array of them)."""
    return {
        "sqlite": f"SELECT value FROM json_each(:{name})",
        "postgres": f"SELECT unnest(:{name}::text[])",
    }


_DESTINATIONS = _values_of("destinations")
# The oldest ready call of each of the first :roots roots that have ready calls: a skip
# scan of the (root_id, ready_at) index, one seek per root, in each database's form.
_ROOT_HEADS = {
    "sqlite": (
        "WITH RECURSIVE roots (root_id, n) AS ("
        "  SELECT (SELECT min(root_id) FROM {calls} WHERE state = 'ready'), 1"
        "  UNION ALL SELECT (SELECT min(root_id) FROM {calls}"
        "    WHERE state = 'ready' AND root_id > roots.root_id), n + 1"
        "  FROM roots WHERE roots.root_id IS NOT NULL AND n < :roots"
        ") SELECT c.dispatch_id, c.root_id, c.destination, c.ready_at, c.rowid AS seq, c.state, "
        + LIMITED.replace("(", "(c.").replace(" OR ", " OR c.")
        + " AS limited FROM roots JOIN {calls} AS c ON c.rowid = ("
        "  SELECT rowid FROM {calls} WHERE state = 'ready' AND root_id = roots.root_id"
        "  AND ready_at <= :now ORDER BY ready_at, rowid LIMIT 1)"
    ),
    "postgres": (
        "WITH RECURSIVE roots (root_id, n) AS ("
        "  (SELECT root_id, 1 FROM {calls} WHERE state = 'ready'"
        "   ORDER BY root_id LIMIT 1)"
        "  UNION ALL SELECT (SELECT c.root_id FROM {calls} AS c"
        "    WHERE c.state = 'ready' AND c.root_id > r.root_id ORDER BY c.root_id LIMIT 1),"
        "   r.n + 1"
        "  FROM roots AS r WHERE r.root_id IS NOT NULL AND r.n < :roots"
        ") SELECT head.* FROM roots CROSS JOIN LATERAL ("
        f"  SELECT {_CLAIMABLE} FROM {{calls}}"
        "  WHERE state = 'ready' AND root_id = roots.root_id AND ready_at <= :now"
        # In the index's order, which the planner then reads rather than another.
        "  ORDER BY root_id, ready_at, seq LIMIT 1) AS head"
        " WHERE roots.root_id IS NOT NULL"
    ),
}
# A waiting call's undelivered results, the SQL of its id given.
_UNDELIVERED_COUNT = (
    "SELECT count(*) FROM {calls} AS child"
    "  WHERE child.parent_id = %s AND child.state = 'done' AND child.delivered = {false}"
)

# The calls not done, by the states the parent index holds.
_UNFINISHED = "state IN ('ready', 'running', 'waiting')"
# A child to end (the SQL of its table's prefix given): unfinished, and set aside by a
# restart if only those are to end.
_ENDABLE = (
    "%(p)sstate IN ('ready', 'running', 'waiting')"
    " AND (:set_aside_only = 0 OR %(p)sdelivered = {true})"
)
ENDINGS = "dispatchlet_endings"
"""The calls (done, or restarted) whose unfinished descendants are still to end."""
UNBOUNDED = 1 << 62
"""A bound on a count that no count reaches (a bound that is None)."""

# --- attempt history ----------------------------------------------------------------

ATTEMPTS = "{calls}_attempts"
"""The table of the calls' attempt histories (``Store.history``)."""
_ATTEMPT_COLUMNS = "number, function, started_at, duration, status, error_type, error_message"
# An attempt of :id added, numbered after the last one kept (its row is locked by the
# fenced update of the same transaction, so no other adds one meanwhile).
_ADD_ATTEMPT = (
    f"INSERT INTO {ATTEMPTS} (dispatch_id, {_ATTEMPT_COLUMNS})"
    f" SELECT :id, coalesce(max(number), 0) + 1, :attempt_function, :attempt_started_at,"
    "  :attempt_duration, :attempt_status, :attempt_error_type, :attempt_error_message"
    f" FROM {ATTEMPTS} WHERE dispatch_id = :id RETURNING number"
)
# Only the latest :attempt_keep kept, the one numbered :number added (run only once
# there are more: most calls have one attempt, and no row to delete).
_TRIM_ATTEMPTS = (
    f"DELETE FROM {ATTEMPTS} WHERE dispatch_id = :id AND number <= :number - :attempt_keep"
)


def attempt_params(attempt: NewAttempt) -> dict[str, Any]:
    """The parameters of ``attempt`` for the statements that add it (beside ``:id``)."""
    return {
        "attempt_function": attempt.function,
        "attempt_started_at": attempt.started_at,
        "attempt_duration": attempt.duration,
        "attempt_status": attempt.status,
        "attempt_error_type": stored_text(attempt.error_type, ERROR_MESSAGE_BYTES),
        "attempt_error_message": stored_text(attempt.error_message, ERROR_MESSAGE_BYTES),
        "attempt_keep": attempt.keep,
    }


# --- PostgreSQL only ---------------------------------------------------------------


def _done_under(row: str) -> str:
    """A join of ``row`` (with ``id`` and ``token``) to its call, done under that lease
    token, read by its primary key in a subquery of its own (``CROSS JOIN LATERAL (...
    OFFSET 0)``, which the planner cannot fold into a join): as a join, the planner may
    read instead the partial index of a state (every done call) whenever its statistics
    say that state is rare, as they do on a table that grew since it was last analyzed
    (a new database, a burst after a quiet hour), and the statement then costs as much
    as the history is long."""
    return (
        "CROSS JOIN LATERAL (SELECT 1 FROM {calls} AS c"
        f" WHERE c.dispatch_id = {row}.id AND c.lease_token = {row}.token"
        " AND c.state = 'done' OFFSET 0) AS c"
    )


# The batch's finishes that took effect: the call done under the finishing lease's token.
# Once per call: a finish under a claim a server crash lost has the token of the finish
# that took effect beside it (only ``finish_all`` tells them apart, by owner).
_FINISHES = (
    "finishes AS (SELECT * FROM unnest(:ids::text[], :tokens::bigint[],"
    "  :nows::double precision[], :orphan_statuses::integer[], :orphan_results::bytea[])"
    "  AS f (id, token, now, orphan_status, orphan_result)),"
    f" finished AS (SELECT DISTINCT ON (f.id) f.* FROM finishes AS f {_done_under('f')})"
)


def _unindexed_state(row: str, state: str) -> str:
    """``row``'s state is ``state``, said as a CASE, which no partial index of a state
    matches: the batch's rows are read by their primary key (see ``_done_under``)."""
    return f"CASE {row}.state WHEN '{state}' THEN TRUE END"


# --- the queue's depth and the calls finished lately (metrics, the overview) ---------

# Each count a range of a partial index of its state (ready_at, lease_expires,
# poll_until), never a read of the calls themselves.
_QUEUE_STATS = (
    "SELECT"
    " (SELECT count(*) FROM {calls} WHERE state = 'ready' AND ready_at <= :now),"
    " (SELECT count(*) FROM {calls} WHERE state = 'ready' AND ready_at > :now),"
    " (SELECT count(*) FROM {calls} WHERE state = 'running'),"
    " (SELECT count(*) FROM {calls} WHERE state = 'waiting'),"
    " (SELECT min(ready_at) FROM {calls} WHERE state = 'ready')"
)
# The calls finished in [:since, :now], a range of the finished_at index.
_RECENT = "finished_at >= :since AND finished_at <= :now"
# Each minute's finished calls by status (the minute in minutes since the epoch; SQLite's
# CAST truncates, PostgreSQL's rounds).
_FINISHED_PER_MINUTE = {
    name: f"SELECT {minute} AS minute, status, count(*) FROM {{calls}}"
    f" WHERE {_RECENT} GROUP BY minute, status ORDER BY minute, status"
    for name, minute in (
        ("sqlite", "CAST(finished_at / 60 AS INTEGER)"),
        ("postgres", "CAST(floor(finished_at / 60) AS BIGINT)"),
    )
}
# Each function's count, failures and nearest-rank p50 and p99 of seconds from creation
# to finish: the least duration whose rank (1, 2, ... in ascending order) reaches
# percent * count / 100, in integers. Window functions, which both databases have.
_FINISHED_BY_FUNCTION = (
    "WITH ranked AS (SELECT function, status, finished_at - created_at AS seconds,"
    "  ROW_NUMBER() OVER (PARTITION BY function ORDER BY finished_at - created_at) AS rank,"
    "  count(*) OVER (PARTITION BY function) AS n"
    f"  FROM {{calls}} WHERE {_RECENT})"
    " SELECT function, max(n) AS calls,"
    f"  sum(CASE WHEN status <> {Status.OK.value:d} THEN 1 ELSE 0 END),"
    "  min(CASE WHEN rank * 100 >= n * 50 THEN seconds END),"
    "  min(CASE WHEN rank * 100 >= n * 99 THEN seconds END)"
    " FROM ranked GROUP BY function ORDER BY calls DESC, function LIMIT :limit"
)


class Statements:
    """Every statement of the stores, in one dialect; those of a lease fenced by
    ``fence``."""

    def __init__(self, dialect: Dialect, *, fence: str = _FENCED) -> None:
        r = dialect.render
        self.dialect = dialect
        self.select = r(f"SELECT {COLUMNS} FROM {{calls}}")
        self.get = self.select + r(" WHERE dispatch_id = :id")
        ids = _values_of("ids")[dialect.name]
        self.get_many = self.select + r(f" WHERE dispatch_id IN ({ids})")
        self.insert = r(
            f"INSERT INTO {{calls}} ({', '.join(INSERTED)}, state) "
            f"VALUES ({', '.join(':' + column for column in INSERTED)}, 'ready')"
        )
        # A new call leased as it is stored (``Handoff``): the row a claim would leave,
        # with no claim after it.
        self.insert_leased = r(
            f"INSERT INTO {{calls}} ({', '.join(INSERTED)}, state, lease_owner, lease_token,"
            " lease_expires, attempts) "
            f"VALUES ({', '.join(':' + column for column in INSERTED)}, 'running', :owner, 1,"
            f" :expires, 1) RETURNING lease_token, poll_max, {COLUMNS}"
        )
        # PostgreSQL: a batch's rows in one statement, one array per column (each row
        # one execution of ``insert`` costs the server a statement each), in order.
        arrays = ", ".join(
            f":{column}::{_INSERTED_TYPES.get(column, 'text')}[]" for column in INSERTED
        )
        self.insert_rows = r(
            f"INSERT INTO {{calls}} ({', '.join(INSERTED)}, state) "
            f"SELECT {', '.join(INSERTED)}, 'ready' FROM unnest({arrays})"
            f" WITH ORDINALITY AS new ({', '.join(INSERTED)}, n) ORDER BY n"
        )
        # The same, those that :leased marks stored already leased (``insert_leased``;
        # the others as ``insert_rows`` stores them), returned as a claim returns its calls.
        leasing = (  # (column, its value leased, its value ready: the column's default)
            ("state", "'running'", "'ready'"),
            ("lease_owner", ":owner", "NULL"),
            ("lease_token", "1", "0"),
            ("lease_expires", ":expires", "NULL"),
            ("attempts", "1", "0"),
        )
        self.insert_rows_leasing = r(
            f"WITH inserted AS (INSERT INTO {{calls}} ({', '.join(INSERTED)}, "
            f"{', '.join(column for column, *_ in leasing)}) SELECT {', '.join(INSERTED)}, "
            + ", ".join(
                f"CASE WHEN leased THEN {leased} ELSE {ready} END" for _, leased, ready in leasing
            )
            + f" FROM unnest({arrays}, :leased::boolean[])"
            f" WITH ORDINALITY AS new ({', '.join(INSERTED)}, leased, n) ORDER BY n"
            f" RETURNING lease_token, poll_max, {COLUMNS}) "
            "SELECT * FROM inserted WHERE state = 'running'"
        )

        # Claims.
        self.oldest_claimable = r(_oldest_claimable())
        self.other_destination = r(
            _OTHER_DESTINATION.replace("{destinations}", _DESTINATIONS[dialect.name])
        )
        self.ranked_window = r(_ranked_window())
        self.ranked_window_unheld = r(_ranked_window(_HELD[dialect.name]))
        self.root_heads = r(_ROOT_HEADS[dialect.name])
        self.running = r(
            "SELECT destination, count(*) FROM {calls} WHERE state = 'running' "
            f"AND lease_expires > :now AND {dialect.one_of('destination', 'destinations')} "
            "GROUP BY destination"
        )
        # The limited calls in flight of :functions, by function and key, and the
        # starts of a rate-limited function (``limits``).
        self.limits_of = r(
            f"SELECT dispatch_id, {LIMIT_COLUMNS} FROM {{calls}} "
            f"WHERE {dialect.one_of('dispatch_id', 'ids')}"
        )
        self.limited_running = r(
            "SELECT function, concurrency_key, count(*) FROM {calls} "
            f"WHERE state = 'running' AND {LIMITED} AND lease_expires > :now "
            f"AND {dialect.one_of('function', 'functions')} GROUP BY function, concurrency_key"
        )
        self.count_starts = r(
            f"SELECT count(*) FROM {STARTS} WHERE function = :function AND started_at > :since"
        )
        self.add_start = r(
            f"INSERT INTO {STARTS} (function, started_at, rate_count, rate_period)"
            " VALUES (:function, :now, :rate_count, :rate_period)"
        )
        # The limited functions now (``limit_stats``): their running limited calls (a
        # read of that partial index), and each rate-limited one's latest start, with
        # the starts within its period.
        self.limited_in_flight = r(
            "SELECT function, max(concurrency), max(concurrency_per_key),"
            " count(DISTINCT CASE WHEN concurrency_key <> '' THEN concurrency_key END),"
            f" count(*) FROM {{calls}} WHERE state = 'running' AND {LIMITED}"
            " AND lease_expires > :now GROUP BY function"
        )
        self.rate_stats = r(
            "SELECT latest.function, latest.rate_count, latest.rate_period,"
            f" (SELECT count(*) FROM {STARTS} AS s WHERE s.function = latest.function"
            "   AND s.started_at > :now - latest.rate_period)"
            f" FROM {STARTS} AS latest WHERE latest.started_at = (SELECT max(started_at)"
            f"  FROM {STARTS} AS m WHERE m.function = latest.function)"
        )
        self.prune_starts = r(
            f"DELETE FROM {STARTS} WHERE function = :function AND started_at <= :since"
        )
        self.claim = r(
            "UPDATE {calls} SET state = 'running', lease_owner = :owner, "
            "lease_token = lease_token + 1, lease_expires = :expires, attempts = attempts + 1 "
            f"WHERE {dialect.one_of('dispatch_id', 'ids')} "
            f"RETURNING lease_token, poll_max, {COLUMNS}"
        )
        self.undelivered = r(
            "SELECT dispatch_id, correlation_id, status, result FROM {calls} "
            "WHERE parent_id = :id AND state = 'done' AND delivered = {false} "
            "ORDER BY finished_at, {seq} LIMIT :limit"
        )

        # What an attempt's lease does.
        # Back as it was before the claim: a resume keeps its poll to resume from.
        self.release = r(
            "UPDATE {calls} SET state = 'ready', ready_at = :ready_at, "
            f"attempts = attempts - 1, {_UNLEASED} {fence}"
        )
        self.extend = r(f"UPDATE {{calls}} SET lease_expires = :until {fence}")
        self.finish = r(
            "UPDATE {calls} SET "
            + _ended(":status", ":result", ":now", keep_failed_poll=True)
            + f" {fence} RETURNING parent_id"
        )
        self.suspend = r(
            "UPDATE {calls} SET state = 'waiting', poll = :poll, poll_min = :min_results, "
            "poll_max = :max_results, poll_until = :until, attempts = 0, status = NULL, "
            f"{_UNLEASED} {fence} RETURNING root_id"
        )
        self.restart = r(
            "UPDATE {calls} SET state = 'ready', ready_at = :now, poll = {empty}, "
            f"status = NULL, restarts = restarts + 1, {_UNLEASED} {fence}"
        )
        # The latest attempt's status and error are kept while the call waits.
        self.retry = r(
            "UPDATE {calls} SET state = 'ready', status = :status, result = :result, "
            f"ready_at = :ready_at, {_UNLEASED} {fence}"
        )
        self.tail_call = r(
            "UPDATE {calls} SET function = :function, endpoint = :endpoint, "
            "destination = :destination, input = :input, state = 'ready', ready_at = :now, "
            "attempts = 0, status = NULL, result = {empty}, poll = {empty}, "
            # The function handed over to is held to its own policy and limits.
            + ", ".join(f"{c} = :{c}" for c in (*_POLICY.split(", "), *_CALL_LIMITS.split(", ")))
            + f", {_UNLEASED} {fence}"
        )

        # A call tree's parents and children.
        self.deliver = r(
            "UPDATE {calls} SET delivered = {true} "
            f"WHERE {dialect.one_of('dispatch_id', 'ids')}"
        )
        # The call runs again with no Poll: its children's results are no longer for it.
        self.set_aside_children = r("UPDATE {calls} SET delivered = {true} WHERE parent_id = :id")
        # The call itself; its descendants end in batches (``end_children``).
        self.cancel = r(
            f"UPDATE {{calls}} SET {_ended(':status', ':result', ':now')}, {_FENCE_OFF} "
            "WHERE dispatch_id = :id AND state <> 'done' RETURNING parent_id"
        )
        # A waiting parent made ready once it has the results it waits for.
        self.wake = r(
            "UPDATE {calls} SET state = 'ready', ready_at = :now "
            "WHERE dispatch_id = :id AND state = 'waiting' "
            f"AND poll_min <= ({_UNDELIVERED_COUNT % ':id'})"
        )

        # --- call trees: their bounds, and descendants ended in batches; outcomes
        # that cannot be stored.
        self.count_unstored = r(
            f"UPDATE {{calls}} SET unstored = unstored + 1 {fence} RETURNING unstored"
        )
        self.pending_children = r(
            f"SELECT count(*) FROM {{calls}} WHERE parent_id = :id AND {_UNFINISHED}"
        )
        # The root's count grows only within the bound (:most); no row: it would not.
        self.add_descendants = r(
            "UPDATE {calls} SET descendants = descendants + :adding "
            "WHERE dispatch_id = :root AND descendants + :adding <= :most"
        )
        self.descendants = r("SELECT descendants FROM {calls} WHERE dispatch_id = :root")
        # Queued: the calls among :ids that have unfinished children to end (only those
        # set aside by a restart, with :set_aside_only), and what to end them with.
        self.queue_endings = r(
            f"INSERT INTO {ENDINGS} (dispatch_id, status, result, set_aside_only)"
            " SELECT parent.dispatch_id, :status, :result, :set_aside_only"
            f" FROM {{calls}} AS parent WHERE {dialect.one_of('parent.dispatch_id', 'ids')}"
            f" AND EXISTS (SELECT 1 FROM {{calls}} AS child"
            f"  WHERE child.parent_id = parent.dispatch_id AND {_ENDABLE % {'p': 'child.'}})"
            " ON CONFLICT (dispatch_id) DO UPDATE SET status = excluded.status,"
            "  result = excluded.result,"
            f"  set_aside_only = {ENDINGS}.set_aside_only * excluded.set_aside_only"
            " RETURNING dispatch_id, status, result, set_aside_only"
        )
        self.endings = r(
            f"SELECT dispatch_id, status, result, set_aside_only FROM {ENDINGS} LIMIT :limit"
            + (" FOR UPDATE SKIP LOCKED" if dialect.name == "postgres" else "")
        )
        # Up to :limit unfinished children of :id ended (the outer test of the state is
        # checked again on a row another transaction changed meanwhile).
        self.end_children = r(
            f"UPDATE {{calls}} SET {_ended(':status', ':result', ':now')}, {_FENCE_OFF} "
            f"WHERE state <> 'done' AND dispatch_id IN (SELECT dispatch_id FROM {{calls}}"
            f"  WHERE parent_id = :id AND {_ENDABLE % {'p': ''}} LIMIT :limit)"
            " RETURNING dispatch_id"
        )
        self.ended_all = r(f"DELETE FROM {ENDINGS} WHERE dispatch_id = :id")

        # --- messages (``Store.send``): the call, locked against a concurrent send or
        # suspension; the oldest receive of it waiting on the topic, not past its
        # timeout, ended with the message; else the message kept in its mailbox, unless
        # it holds :most already (nothing inserted).
        self.lock_call = r(
            "SELECT state, follows, topic FROM {calls} WHERE dispatch_id = :id"
            + (" FOR UPDATE" if dialect.name == "postgres" else "")
        )
        self.deliver_message = r(
            f"UPDATE {{calls}} SET {_ended(':status', ':result', ':now')} "
            "WHERE state = 'waiting' AND dispatch_id = (SELECT dispatch_id FROM {calls}"
            "  WHERE parent_id = :id AND state = 'waiting' AND topic = :topic"
            "  AND poll_until > :now ORDER BY {seq} LIMIT 1)"
            " RETURNING dispatch_id"
        )
        self.keep_message = r(
            f"INSERT INTO {MESSAGES} (dispatch_id, number, topic, result, sent_at)"
            " SELECT :id, coalesce(max(number), 0) + 1, :topic, :result, :now"
            f" FROM {MESSAGES} WHERE dispatch_id = :id HAVING count(*) < :most"
        )
        # A receive just stored under :id (its parent): the oldest message kept on its
        # topic taken, if any, and the receive ended with it; else it waits until its
        # expiration, when a claim finds it (and the engine ends it TIMEOUT).
        self.take_message = r(
            f"DELETE FROM {MESSAGES} WHERE dispatch_id = :id AND number = ("
            f"  SELECT min(number) FROM {MESSAGES} WHERE dispatch_id = :id AND topic = :topic)"
            " RETURNING result"
        )
        self.received = r(
            f"UPDATE {{calls}} SET topic = :topic, {_ended(':status', ':result', ':now')} "
            "WHERE dispatch_id = :id"
        )
        # A resumed workflow's new call takes over its failed call's mailbox, numbers
        # and order kept (the new call has none of its own yet).
        self.move_messages = r(f"UPDATE {MESSAGES} SET dispatch_id = :new WHERE dispatch_id = :old")
        self.await_message = r(
            "UPDATE {calls} SET topic = :topic, state = 'waiting', poll_min = 1,"
            " poll_until = expires_at WHERE dispatch_id = :id"
        )

        # --- actions on a call: retry now.
        # A ready call's next attempt brought forward to now (not a due one: idempotent).
        self.retry_now = r(
            "UPDATE {calls} SET ready_at = :now "
            "WHERE dispatch_id = :id AND state = 'ready' AND ready_at > :now"
        )
        self.state_of = r("SELECT state FROM {calls} WHERE dispatch_id = :id")
        # A failed workflow's steps, for a resume (``Store.children``).
        self.children = r(
            "SELECT dispatch_id, correlation_id, state, delivered, status, result, "
            "finished_at FROM {calls} WHERE parent_id = :id ORDER BY {seq}"
        )
        # The queue's depth and the calls finished lately (``stats.py``).
        self.queue_stats = r(_QUEUE_STATS)
        self.finished_per_minute = r(_FINISHED_PER_MINUTE[dialect.name])
        self.finished_by_function = r(_FINISHED_BY_FUNCTION)
        # The calls in each state, each count stopped at :cap (the index of the states
        # is read no further, however many calls are kept).
        self.count_by_state = r(
            " UNION ALL ".join(
                f"SELECT '{state}', count(*) FROM (SELECT 1 FROM {{calls}} WHERE state = "
                f"'{state}' AND finished_at IS {'NOT ' if state == 'done' else ''}NULL "
                f"LIMIT :cap) AS {state}_calls"
                for state in ("ready", "running", "waiting", "done")
            )
        )
        # --- attempt history.
        self.add_attempt = r(_ADD_ATTEMPT)
        self.trim_attempts = r(_TRIM_ATTEMPTS)
        self.history = r(
            f"SELECT {_ATTEMPT_COLUMNS} FROM {ATTEMPTS} WHERE dispatch_id = :id ORDER BY number"
        )

    def migrations(self) -> tuple[Step, ...]:
        """The shared schema changes, in this dialect."""
        return tuple(
            self.dialect.render(migration)
            if isinstance(migration, str)
            else migration.render(self.dialect)
            for migration in MIGRATIONS
        )

    def list(
        self,
        *,
        state: str | None,
        function: str | None,
        root_id: str | None,
        status: int | None,
        failed: bool,
        newest_first: bool,
        after: str | None,
        limit: int,
        parent_id: str | None = None,
        rerun_of: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The query of ``Store.list`` and its parameters: summaries (``SUMMARY``)."""
        clauses = []
        params: dict[str, Any] = {"limit": limit}
        for column, value in (
            ("state", state),
            ("function", function),
            ("root_id", root_id),
            ("status", status),
            ("parent_id", parent_id),
            ("rerun_of", rerun_of),
        ):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if state is not None:
            # What a call's state implies (it is done once it finished), said so that
            # the query may read the index of its states (see MIGRATIONS).
            clauses.append(f"finished_at IS {'NOT ' if state == 'done' else ''}NULL")
        if status is not None or failed:
            # Only a done call's status is final (a retried one keeps its last attempt's).
            clauses.append("state = 'done'")
        if failed:
            # Written out, as the partial index that serves it says it.
            clauses.append(f"status <> {Status.OK.value:d}")
        if created_after is not None:
            clauses.append("created_at >= :created_after")
            params["created_after"] = created_after
        if created_before is not None:
            clauses.append("created_at < :created_before")
            params["created_before"] = created_before
        # Creation order is the row order; a page starts after the last one's row. A time
        # range alone reads the index of creation times in its order (the same order,
        # but for calls that processes created at the same moment); with another filter,
        # that filter's index, the range checked on its rows.
        key = "{seq}"
        if by_creation_time(
            created_after,
            created_before,
            (state, function, root_id, status, failed, parent_id, rerun_of),
        ):
            key = "created_at, {seq}"
        order, beyond = ("DESC", "<") if newest_first else ("ASC", ">")
        if after is not None:
            clauses.append(
                f"({key}) {beyond} (SELECT {key} FROM {{calls}} WHERE dispatch_id = :after)"
            )
            params["after"] = after
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        ordered = ", ".join(f"{column.strip()} {order}" for column in key.split(","))
        # Only this module's own column names and keywords go into the text; values are
        # parameters.
        query = self.dialect.render(
            f"SELECT {SUMMARY} FROM {{calls}}{where} ORDER BY {ordered} LIMIT :limit"
        )
        return query, params


def by_creation_time(
    created_after: float | None, created_before: float | None, others: Sequence[object]
) -> bool:
    """Whether ``Store.list`` orders its calls by creation time (then creation order):
    when a time bound is its only filter (each of ``others`` None or False)."""
    timed = created_after is not None or created_before is not None
    return timed and not any(f is not None and f is not False for f in others)


class PostgresStatements(Statements):
    """The statements of the PostgreSQL store: the shared ones, and its row locks,
    notifications and batches of finishes."""

    def __init__(self) -> None:
        super().__init__(POSTGRES)
        r = POSTGRES.render
        # What a lease does, fenced by its owner too (``_OWNED``), under names of their
        # own: the shared ones take the same parameters in both databases.
        owned = Statements(POSTGRES, fence=_OWNED)
        self.release_owned = owned.release
        self.extend_owned = owned.extend
        self.suspend_owned = owned.suspend
        self.restart_owned = owned.restart
        self.tail_call_owned = owned.tail_call
        self.count_unstored_owned = owned.count_unstored
        # The first :wanted of :ids (in that order) still claimable, locked (those
        # another claim holds skipped) and leased at once: a locked row is checked as
        # it is now, after any claim that won (PostgreSQL evaluates the condition again
        # on the row it locks). Each with its place among :ids.
        self.claim_ids = r(
            "WITH wanted AS (SELECT * FROM unnest(:ids::text[]) WITH ORDINALITY AS w (id, n)),"
            " taken AS (SELECT c.dispatch_id AS taken_id, w.n FROM {calls} AS c"
            "  JOIN wanted AS w ON c.dispatch_id = w.id"
            # Said as a CASE, which no partial index of a state matches: the rows are
            # read by their primary key (see _done_under), never by a scan of every ready
            # call.
            "  WHERE CASE c.state WHEN 'ready' THEN c.ready_at"
            "   WHEN 'running' THEN c.lease_expires WHEN 'waiting' THEN c.poll_until END"
            "  <= :now"
            "  ORDER BY w.n LIMIT :wanted FOR UPDATE OF c SKIP LOCKED)"
            " UPDATE {calls} SET state = 'running', lease_owner = :owner,"
            "  lease_token = lease_token + 1, lease_expires = :expires, attempts = attempts + 1"
            " FROM taken WHERE dispatch_id = taken.taken_id"
            f" RETURNING taken.n, lease_token, poll_max, {COLUMNS}"
        )
        # The root's count grown, RETURNING a row if it was (pipelined: no rowcount).
        self.add_descendants_returning = self.add_descendants + " RETURNING descendants"
        # A waiting parent made ready once it has the results it waits for, and the
        # other processes told if it was.
        self.wake_notified = (
            f"WITH woken AS ({self.wake} RETURNING dispatch_id)"
            f" SELECT pg_notify('{CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM woken)"
        )
        # The undelivered results of the resumes a claim (its owner, :owner) just took,
        # each its poll's most, in the order ``undelivered`` gives them.
        self.undelivered_claimed = r(
            "SELECT parent.dispatch_id, child.* FROM {calls} AS parent CROSS JOIN LATERAL ("
            "  SELECT dispatch_id, correlation_id, status, result FROM {calls}"
            "  WHERE parent_id = parent.dispatch_id AND state = 'done' AND delivered = {false}"
            "  ORDER BY finished_at, seq LIMIT greatest(parent.poll_max, 1)) AS child"
            " WHERE parent.dispatch_id = ANY(:ids::text[]) AND parent.lease_owner = :owner"
            " AND parent.state = 'running' AND parent.poll <> {empty}"
        )
        # The rows of a claim's candidates locked, by primary key alone (the plan cannot
        # stray into a scan), with what shows whether each is still claimable.
        self.lock = r(
            "SELECT dispatch_id, state, ready_at, lease_expires, poll_until FROM {calls} "
            f"WHERE {POSTGRES.one_of('dispatch_id', 'ids')} FOR UPDATE SKIP LOCKED"
        )
        self.notify = f"SELECT pg_notify('{CHANNEL}', '')"
        # A limited function's claim lock, each in the order of its key (``limits``).
        self.lock_functions = (
            "SELECT pg_advisory_xact_lock(%(limits)s, k) FROM (SELECT DISTINCT"
            " hashtext(f) AS k FROM unnest(%(functions)s::text[]) AS f ORDER BY k) AS keys"
        )
        self.finish_all = r(
            "UPDATE {calls} AS c SET "
            + _ended("f.status", "f.result", "f.now", keep_failed_poll=True)
            + " FROM unnest(:ids::text[], :tokens::bigint[], :statuses::integer[],"
            "  :results::bytea[], :nows::double precision[],"
            "  :owners::text[]) AS f (id, token, status, result, now, owner)"
            " WHERE c.dispatch_id = f.id AND c.lease_token = f.token AND c.state = 'running'"
            " AND c.lease_owner = f.owner RETURNING c.dispatch_id, c.lease_token, f.owner"
        )
        # The results a finished resume was given are delivered.
        self.deliver_all = r(
            "UPDATE {calls} AS child SET delivered = {true}"
            " FROM unnest(:given::text[], :given_to::text[], :given_token::bigint[])"
            "  AS d (id, parent, token)"
            " JOIN {calls} AS p"
            "  ON p.dispatch_id = d.parent AND p.lease_token = d.token AND p.state = 'done'"
            " WHERE child.dispatch_id = d.id"
        )
        # The finished calls with unfinished children queued, to end their descendants
        # with that finish's orphans (``end_children``).
        self.queue_endings_all = r(
            f"WITH {_FINISHES}"
            f" INSERT INTO {ENDINGS} (dispatch_id, status, result, set_aside_only)"
            " SELECT f.id, f.orphan_status, f.orphan_result, 0 FROM finished AS f"
            " WHERE EXISTS (SELECT 1 FROM {calls} AS child"
            f"  WHERE child.parent_id = f.id AND child.{_UNFINISHED})"
            " ON CONFLICT (dispatch_id) DO UPDATE SET status = excluded.status,"
            "  result = excluded.result, set_aside_only = 0"
            " RETURNING dispatch_id, status, result, set_aside_only"
        )
        # The waiting parents of finished calls made ready, if they now have the results
        # they wait for; the other processes are told.
        self.wake_parents_all = r(
            f"WITH {_FINISHES},"
            " woken AS ("
            "  UPDATE {calls} AS parent SET state = 'ready', ready_at = w.now"
            "  FROM (SELECT c.parent_id, max(f.now) AS now FROM finished AS f"
            "   CROSS JOIN LATERAL (SELECT parent_id FROM {calls}"
            "    WHERE dispatch_id = f.id OFFSET 0) AS c"
            "   WHERE c.parent_id IS NOT NULL GROUP BY c.parent_id) AS w"
            "  WHERE parent.dispatch_id = w.parent_id"
            f"  AND {_unindexed_state('parent', 'waiting')}"
            f"  AND parent.poll_min <= ({_UNDELIVERED_COUNT % 'parent.dispatch_id'})"
            "  RETURNING parent.dispatch_id)"
            f" SELECT pg_notify('{CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM woken)"
        )

        # Waiters are told of the calls that ended and the retries recorded, in the same
        # transaction (a notification is sent at commit, and only then). The calls that
        # ended are told ENDED_PER_NOTICE to a notification, a line each (a notification
        # per call was 10% of the database's time for background calls).
        self.notify_ended = r(
            f"SELECT pg_notify('{CHANGED}', string_agg(dispatch_id || ' ' || root_id, E'\\n'))"
            f" FROM (SELECT dispatch_id, root_id, (row_number() OVER () - 1) / {ENDED_PER_NOTICE}"
            "  AS part FROM unnest(:ids::text[]) AS i (id) CROSS JOIN LATERAL ("
            "   SELECT dispatch_id, root_id FROM {calls}"
            "   WHERE dispatch_id = i.id AND state = 'done' OFFSET 0) AS c) AS ended GROUP BY part"
        )
        # The tree of ended descendants (their root, after a space: no call named).
        self.notify_tree = r(
            f"SELECT pg_notify('{CHANGED}', ' ' || root_id) FROM {{calls}}"
            f" WHERE {POSTGRES.one_of('dispatch_id', 'ids')}"
        )
        self.retry_notified = (
            f"WITH retried AS ({owned.retry} RETURNING dispatch_id)"
            f" SELECT pg_notify('{CHANGED}', dispatch_id) FROM retried"
        )
        # The same, and its attempt added to the history (one statement still: each
        # part of a WITH runs, read or not, on the snapshot the statement began with).
        self.retry_recorded = r(
            f"WITH retried AS ({owned.retry} RETURNING dispatch_id),"
            f" added AS (INSERT INTO {ATTEMPTS} (dispatch_id, {_ATTEMPT_COLUMNS})"
            "  SELECT dispatch_id, coalesce((SELECT max(number)"
            f"   FROM {ATTEMPTS} WHERE dispatch_id = :id), 0) + 1, :attempt_function,"
            "   :attempt_started_at, :attempt_duration, :attempt_status, :attempt_error_type,"
            "   :attempt_error_message FROM retried RETURNING number),"
            f" trimmed AS (DELETE FROM {ATTEMPTS} WHERE dispatch_id = :id"
            "  AND number <= (SELECT number FROM added) - :attempt_keep)"
            f" SELECT pg_notify('{CHANGED}', dispatch_id) FROM retried"
        )

        # --- attempt history: the attempts of a batch of finishes added, those of the
        # finishes that took effect (the call done under their lease), each call's
        # latest kept.
        self.add_attempts_all = r(
            "WITH given AS (SELECT * FROM unnest(:attempt_ids::text[],"
            "  :attempt_tokens::bigint[], :attempt_functions::text[],"
            "  :attempt_starts::double precision[], :attempt_durations::double precision[],"
            "  :attempt_statuses::integer[], :attempt_types::text[],"
            "  :attempt_messages::text[], :attempt_keeps::integer[])"
            "  AS a (id, token, function, started_at, duration, status, error_type,"
            "   error_message, keep)),"
            " took AS (SELECT a.*, coalesce((SELECT max(h.number)"
            f"   FROM {ATTEMPTS} AS h WHERE h.dispatch_id = a.id), 0) + 1 AS number"
            f"  FROM given AS a {_done_under('a')}),"
            f" added AS (INSERT INTO {ATTEMPTS} (dispatch_id, {_ATTEMPT_COLUMNS})"
            "  SELECT id, number, function, started_at, duration, status, error_type,"
            "   error_message FROM took)"
            # Only the calls past their history's bound (few: a call with more
            # attempts than it keeps) joined: whatever plan the join is given, it reads
            # nothing for a batch that trims no attempt.
            f" DELETE FROM {ATTEMPTS} AS h USING (SELECT * FROM took WHERE number > keep) AS t"
            " WHERE h.dispatch_id = t.id AND h.number <= t.number - t.keep"
        )


# --- retention ---------------------------------------------------------------------

DEPENDENT_TABLES: tuple[str, ...] = (
    "{calls}_by_key",
    ENDINGS,
)
"""The tables whose rows name a call by its ``dispatch_id`` and go with it: a purge
deletes them first, in the same transaction as the calls (a table added beside the
calls, e.g. their attempts, is added here and nowhere else)."""


class PurgeStatements:
    """The statements of retention (``Store.purge``), in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        r = dialect.render
        # The roots that finished first, before :before (a status filter appended),
        # whose trees hold no unfinished call and no call whose descendants are still to
        # end. Said as the partial index that serves it says it. PostgreSQL locks the
        # roots, skipping those another process is purging.
        self.roots = (
            "SELECT dispatch_id, created_at FROM {calls} AS root"
            # SQLite, without statistics, would rather read its index of every done
            # call, then sort them.
            + (" INDEXED BY {calls}_finished_roots" if dialect.name == "sqlite" else "")
            + " WHERE state = 'done' AND dispatch_id = root_id AND finished_at < :before"
            "%s"
            " AND NOT EXISTS (SELECT 1 FROM {calls} AS member"
            "  WHERE member.root_id = root.dispatch_id AND member.state <> 'done')"
            f" AND NOT EXISTS (SELECT 1 FROM {ENDINGS} AS ending"
            "  JOIN {calls} AS member ON member.dispatch_id = ending.dispatch_id"
            "  WHERE member.root_id = root.dispatch_id)"
            " ORDER BY finished_at LIMIT :limit"
            + (" FOR UPDATE OF root SKIP LOCKED" if dialect.name == "postgres" else "")
        )
        self.dialect = dialect
        # The newest :limit calls below :root (not the root itself: it goes last),
        # newest first: a child is newer than its parent, so that these hold the
        # children of each call they hold, and deleted in this order no call outlives
        # its parent (the parent's reference is checked at each deletion).
        self.members = r(
            "SELECT dispatch_id, created_at FROM {calls}"
            " WHERE root_id = :root AND dispatch_id <> :root ORDER BY {seq} DESC LIMIT :limit"
        )
        self.delete_dependents = tuple(
            r(f"DELETE FROM {table} WHERE {dialect.one_of('dispatch_id', 'ids')}")
            for table in DEPENDENT_TABLES
        )
        self.delete = r(f"DELETE FROM {{calls}} WHERE {dialect.one_of('dispatch_id', 'ids')}")
        # The request ids of Dispatches made when the deleted calls were (a Dispatch
        # writes its request id with the time of its calls), once none of the calls they
        # name is kept.
        named = {
            "sqlite": "json_each('[\"' || replace(request.dispatch_ids, ',', '\",\"') || '\"]')"
            " AS named",
            "postgres": "unnest(string_to_array(request.dispatch_ids, ',')) AS named (value)",
        }[dialect.name]
        self.delete_requests = r(
            "DELETE FROM {calls}_by_request AS request"
            f" WHERE {dialect.one_of('created_at', 'created')}"
            f" AND NOT EXISTS (SELECT 1 FROM {named}"
            "  JOIN {calls} AS kept ON kept.dispatch_id = named.value)"
        )

    def roots_query(self, *, status: int | None, failed: bool) -> tuple[str, dict[str, Any]]:
        """The query of the roots to purge, filtered by their final ``status`` (or any
        other than OK: ``failed``), and its parameters besides ``before`` and ``limit``."""
        where, params = "", {}
        if status is not None:
            where, params = " AND status = :status", {"status": status}
        elif failed:
            where = f" AND status <> {Status.OK.value:d}"
        return self.dialect.render(self.roots % where), params


def fenced(lease: Lease, **values: Any) -> dict[str, Any]:
    """The parameters of a statement fenced by ``lease`` (``:id``, ``:token``), and
    ``values``."""
    return {"id": lease.dispatch_id, "token": lease.token, **values}


def as_columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """``rows_to_insert``'s rows as one list per column (``Statements.insert_rows``)."""
    return {column: [row[column] for row in rows] for column in INSERTED}


def rows_to_insert(calls: Sequence[NewCall], now: float) -> tuple[list[str], list[dict[str, Any]]]:
    """The dispatch ids of new ``calls`` and their rows for ``Statements.insert``."""
    ids, rows = [], []
    for call in calls:
        dispatch_id = new_dispatch_id(now)
        rows.append(
            {
                "dispatch_id": dispatch_id,
                "root_id": call.root_id or dispatch_id,
                "parent_id": call.parent_id,
                "correlation_id": stored_correlation_id(call.correlation_id),
                "function": call.function,
                "endpoint": call.endpoint,
                "destination": destination(call.endpoint) if call.endpoint else "",
                "version": call.version,
                "input": call.input,
                "created_at": now,
                "expires_at": call.expires_at,
                "ready_at": now if call.ready_at is None else call.ready_at,
                "rerun_of": call.rerun_of,
                "trace_context": call.trace_context,
                **limit_columns(call.limits),
                "poll": call.poll,
                **policy_columns(call.policy),
                "follows": call.follows,
            }
        )
        ids.append(dispatch_id)
    return ids, rows
