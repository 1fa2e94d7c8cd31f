"""What the scheduler's API answers when it cannot serve a request: a database it cannot
reach now is "unavailable, try again"; an error of its own is "internal", logged once
with its traceback and told to no one; a missing or wrong API key says which variable to
set."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.store import AttemptHistory, Call, StoreError
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from scheduler_harness import harness

GET = "/dispatchlet.scheduler.v1.CallService/Get"
DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"


class Failing(SQLiteStore):
    """A store whose reads raise ``error``."""

    error: BaseException = RuntimeError()

    async def get(self, dispatch_id: str) -> Call | None:
        raise self.error

    async def get_with_history(self, dispatch_id: str) -> tuple[Call, AttemptHistory] | None:
        raise self.error


def get_with_failing_store(tmp_path: Path, error: BaseException) -> tuple[int, dict[str, Any]]:
    async def scenario() -> tuple[int, dict[str, Any]]:
        store = await Failing.open(tmp_path / "s.db")
        store.error = error
        async with harness(tmp_path, store=store, running=False) as h:
            request = calls_pb2.GetRequest(dispatch_id="some-call")
            status, body = await h.post(GET, request.SerializeToString())
            return status, json.loads(body)

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("database is locked"),
        psycopg.OperationalError("connection refused"),
        StoreError("the store is closed"),
    ],
    ids=["sqlite", "postgres", "closed"],
)
def test_a_database_that_cannot_be_used_now_is_unavailable(
    tmp_path: Path, error: BaseException
) -> None:
    status, answer = get_with_failing_store(tmp_path, error)
    assert (status, answer["code"]) == (503, "unavailable")
    assert answer["message"] == "the scheduler cannot reach its database now; try again"


@pytest.mark.parametrize(
    "error",
    [
        KeyError("secret-column"),
        RuntimeError("secret internals"),
        sqlite3.IntegrityError("secret constraint"),  # a bug, not an outage
    ],
    ids=["KeyError", "RuntimeError", "IntegrityError"],
)
def test_an_error_of_the_schedulers_own_is_internal_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    with caplog.at_level(logging.ERROR, logger="dispatchlet.scheduler"):
        status, answer = get_with_failing_store(tmp_path, error)
    assert (status, answer["code"]) == (500, "internal")
    assert "secret" not in answer["message"]
    assert "internal error" in answer["message"]
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is error
    assert "GetRequest" in logged[0].getMessage()


def test_a_missing_or_wrong_api_key_says_which_variable_to_set(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        async with harness(tmp_path, running=False) as h:
            answers = []
            for key in (None, "wrong"):
                status, body = await h.post(DISPATCH, b"", key=key)
                answers.append((status, json.loads(body)))
            return answers

    (missing_status, missing), (wrong_status, wrong) = asyncio.run(scenario())
    assert (missing_status, missing["code"]) == (401, "unauthenticated")
    assert missing["message"].startswith("missing API key: set DISPATCH_API_KEY")
    assert "Authorization: Bearer <key>" in missing["message"]
    assert (wrong_status, wrong["code"]) == (401, "unauthenticated")
    assert wrong["message"].startswith("invalid API key: ")
    assert "DISPATCH_API_KEY" in wrong["message"]
