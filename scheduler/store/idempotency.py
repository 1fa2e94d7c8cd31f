"""Idempotent Dispatch, the part every store shares: a repeated request id is answered
with the first request's dispatch ids, and a call whose idempotency key is known gets
the id of the call that has it, storing nothing new.

Two tables beside the calls (``MIGRATIONS`` in ``statements``): ``{calls}_by_request``
(a request id, the digest of what the request asked, the dispatch ids it got) and
``{calls}_by_key`` (a key and its call, deleted with the call). Both are filled in the
transaction that stores the calls. Their primary keys make a concurrent duplicate (two
processes on one PostgreSQL database) fail as a unique violation, which the store
answers by running the transaction again: it then finds what the other one stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from . import NewCall, RequestConflict, RequestId
from .limits import NO_LIMITS
from .statements import Dialect, rows_to_insert

CONFLICT_RETRIES = 3
"""How many times a store runs a Dispatch again after a unique violation: each retry
finds what the concurrent transaction stored, so one is enough unless several race."""


class IdempotencyStatements:
    """The statements of idempotent Dispatch, in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        r = dialect.render
        self.find_request = r(
            "SELECT digest, dispatch_ids FROM {calls}_by_request WHERE request_id = :request_id"
        )
        self.insert_request = r(
            "INSERT INTO {calls}_by_request (request_id, digest, dispatch_ids, created_at) "
            "VALUES (:request_id, :digest, :dispatch_ids, :now)"
        )
        self.find_keys = r(
            "SELECT call_key, dispatch_id FROM {calls}_by_key "
            f"WHERE {dialect.one_of('call_key', 'keys')}"
        )
        self.insert_key = r(
            "INSERT INTO {calls}_by_key (call_key, dispatch_id) VALUES (:key, :dispatch_id)"
        )


def request_row(request: RequestId, ids: Sequence[str], now: float) -> dict[str, Any]:
    """The parameters of ``insert_request``."""
    return {
        "request_id": request.id,
        "digest": request.digest,
        "dispatch_ids": ",".join(ids),
        "now": now,
    }


def repeated(request: RequestId, digest: bytes, dispatch_ids: str) -> list[str]:
    """The answer to a request id found stored with ``digest`` and ``dispatch_ids``: the
    ids it got, or ``RequestConflict`` when the request asked something else."""
    if bytes(digest) != request.digest:
        raise RequestConflict(
            f"the request id (Idempotency-Key) {request.id[:100]!r} was used for another "
            "Dispatch request, with other calls: a new request needs a new id"
        )
    return dispatch_ids.split(",") if dispatch_ids else []


def keys_of(calls: Sequence[NewCall]) -> list[str]:
    """The distinct idempotency keys of ``calls``, in order."""
    return list(dict.fromkeys(call.key for call in calls if call.key))


class KeyedCalls:
    """A Dispatch's calls once their keys are looked up: which to store (``fresh``), and
    the dispatch id each call is answered with."""

    def __init__(self, calls: Sequence[NewCall], known: Mapping[str, str]) -> None:
        self.fresh: list[NewCall] = []
        # Per call: the known dispatch id (str), or the index of its call in ``fresh``.
        self._slots: list[str | int] = []
        first: dict[str, int] = {}
        for call in calls:
            if call.key in known:
                self._slots.append(known[call.key])
            elif call.key in first:  # the same key earlier in this request
                self._slots.append(first[call.key])
            else:
                if call.key:
                    first[call.key] = len(self.fresh)
                self._slots.append(len(self.fresh))
                self.fresh.append(call)

    def ids(self, stored: Sequence[str]) -> list[str]:
        """Every call's dispatch id in order, given the ids of ``fresh`` as stored."""
        return [slot if isinstance(slot, str) else stored[slot] for slot in self._slots]

    def new_keys(self, stored: Sequence[str]) -> list[dict[str, str]]:
        """The rows of ``insert_key`` for the keys of ``fresh``."""
        return [
            {"key": call.key, "dispatch_id": dispatch_id}
            for call, dispatch_id in zip(self.fresh, stored, strict=True)
            if call.key
        ]


class KeyedChildren:
    """A Poll's children once their keys are looked up. Each is stored (so that its
    parent gets a result for its correlation id), but one whose key a stored call has,
    or an earlier child of the same Poll, runs nothing: it follows that call, and ends
    with its outcome (``NewCall.follows``). The others' keys are stored with them."""

    def __init__(self, children: Sequence[NewCall], known: Mapping[str, str]) -> None:
        self.calls: list[NewCall] = []
        self.earlier: dict[int, int] = {}
        """By the index of a child that follows an earlier one, that one's index."""
        first: dict[str, int] = {}
        for index, child in enumerate(children):
            key = child.key
            if key in known:
                child = _follower(child, known[key])
            elif key in first:
                self.earlier[index] = first[key]
                child = _follower(child, None)
            elif key:
                first[key] = index
            self.calls.append(child)

    def rows(self, now: float) -> tuple[list[str], list[dict[str, Any]]]:
        """The children's dispatch ids and their rows for ``Statements.insert``."""
        ids, rows = rows_to_insert(self.calls, now)
        for index, earlier in self.earlier.items():
            rows[index]["follows"] = ids[earlier]
        return ids, rows

    def new_keys(self, stored: Sequence[str]) -> list[dict[str, str]]:
        """The rows of ``insert_key`` for the keys of the children that run."""
        return [
            {"key": call.key, "dispatch_id": dispatch_id}
            for call, dispatch_id in zip(self.calls, stored, strict=True)
            if call.key
        ]


def _follower(child: NewCall, follows: str | None) -> NewCall:
    # It runs nothing: no delay, no policy, no key of its own, and no limits, since
    # each of its checks of the call it follows would otherwise count as an attempt in
    # flight and a start of its function, holding that call back.
    return dataclasses.replace(
        child, key="", follows=follows, ready_at=None, policy=None, limits=NO_LIMITS
    )
