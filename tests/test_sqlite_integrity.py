"""A damaged SQLite database, or one whose file is deleted or replaced under a running
scheduler: refused at start with a message that says what to do, reported as an
internal error (never as "try again"), and no call taken from it any more."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from dispatchlet.proto.dispatch.sdk.v1 import dispatch_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.store import DatabaseBroken, NewCall, corrupt, unavailable
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from scheduler_harness import call, harness

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"
LIST = "/dispatchlet.scheduler.v1.CallService/List"
GET = "/dispatchlet.scheduler.v1.CallService/Get"
PAGE = 4096
SCHEDULER = [sys.executable, "-m", "dispatchlet.cli", "scheduler"]


async def filled(path: Path, count: int = 2000) -> list[str]:
    """A database of ``count`` calls (waiting far in the future: nothing to claim),
    closed cleanly."""
    store = await SQLiteStore.open(path)
    try:
        batch = [NewCall("f", "http://127.0.0.1:1", b"x" * 300, 4e9)] * 100
        ids: list[str] = []
        for _ in range(count // 100):
            ids += await store.dispatch(batch, now=4e9)  # ready only in 2096
        return ids
    finally:
        await store.close()


def damage(path: Path, kind: str) -> None:
    """Overwrite part of the file: every third page past the first few (the table's and
    its indexes' pages), or the header (then it is no SQLite file at all)."""
    size = path.stat().st_size
    with path.open("r+b") as file:
        if kind == "header":
            file.write(b"\x55" * 100)
            return
        for offset in range(4 * PAGE, size - PAGE, 3 * PAGE):
            file.seek(offset)
            file.write(b"\x55" * PAGE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pages", "header"])
def test_the_scheduler_refuses_to_start_on_a_damaged_database(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "calls.db"
    asyncio.run(filled(path))
    damage(path, kind)
    process = subprocess.Popen(
        [*SCHEDULER, "--insecure", "--db", str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the scheduler started on a damaged database: {out}")
    assert process.returncode != 0, out
    assert "listening" not in out
    assert "Traceback" not in err, err
    assert f"the database {path} is damaged" in err
    assert f"restore {path} from a backup" in err
    assert f"sqlite3 {path} .recover | sqlite3 {path}.recovered" in err


def test_a_damaged_database_is_refused_when_the_store_opens(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    asyncio.run(filled(path))
    damage(path, "pages")
    with pytest.raises(DatabaseBroken, match=r"is damaged \(.*\): the scheduler will not start"):
        asyncio.run(SQLiteStore.open(path))


@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_a_database_file_replaced_or_deleted_stops_dispatches(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scheduler.db"

    async def scenario() -> None:
        async with harness(tmp_path) as h:
            assert await h.dispatch(call("before"))
            if how == "replaced":
                other = tmp_path / "other.db"
                sqlite3.connect(other).close()
                os.replace(other, path)
            else:
                path.unlink()
            request = dispatch_pb2.DispatchRequest(calls=[call("after")])
            for _ in range(2):
                status, body = await h.post(DISPATCH, request.SerializeToString())
                assert status == 500, body  # not 503: trying again cannot help
                error = json.loads(body)
                assert error["code"] == "internal"
                assert f"the database file {path} was {how}" in error["message"]
                assert "accepts no calls" in error["message"]
                assert "/proc/" in error["message"]  # where the file opened lives on
            status, body = await h.post(LIST, b"")
            assert status == 500, body
            # The engine takes no call from the file it opened any more, nor ends any.
            assert await h.store.claim(owner="t", now=5e9, limit=10, lease_seconds=30) == []
            assert await h.store.end_descendants(now=5e9) == 0

    with caplog.at_level(logging.CRITICAL):
        asyncio.run(scenario())
    said = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(said) == 1, said  # loudly, once
    assert f"the database file {path} was {how}" in said[0].getMessage()


def test_damage_found_later_is_an_internal_error_and_stops_claims(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scheduler.db"
    asyncio.run(filled(path))

    async def scenario() -> None:
        async with harness(tmp_path) as h:
            damage(path, "pages")  # under the open store
            status, body = await h.post(LIST, b"")
            assert status == 500, body  # not 503 "try again"
            error = json.loads(body)
            assert error["code"] == "internal"
            assert f"the database {path} is corrupt" in error["message"]
            assert ".recover" in error["message"]
            request = dispatch_pb2.DispatchRequest(calls=[call("after")])
            status, body = await h.post(DISPATCH, request.SerializeToString())
            assert status == 500, body
            assert await h.store.claim(owner="t", now=5e9, limit=10, lease_seconds=30) == []

    with caplog.at_level(logging.CRITICAL):
        asyncio.run(scenario())
    said = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(said) == 1, said


def test_damage_found_by_a_lookup_is_an_internal_error_and_stops_claims(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Get reads its call by key on the event loop's own connection, not a reading
    # thread's: damage found there is reported and stops the store all the same.
    path = tmp_path / "scheduler.db"
    ids = asyncio.run(filled(path))

    async def scenario() -> None:
        async with harness(tmp_path) as h:
            damage(path, "pages")  # under the open store
            answers = []
            for dispatch_id in ids[::50]:  # some of them on damaged pages
                request = calls_pb2.GetRequest(dispatch_id=dispatch_id)
                answers.append(await h.post(GET, request.SerializeToString()))
            failed = [(status, body) for status, body in answers if status != 200]
            assert failed, "no Get read a damaged page"
            for status, body in failed:
                assert status == 500, body  # not 503 "try again"
                error = json.loads(body)
                assert error["code"] == "internal"
                assert f"the database {path} is corrupt" in error["message"]
            assert await h.store.claim(owner="t", now=5e9, limit=10, lease_seconds=30) == []

    with caplog.at_level(logging.CRITICAL):
        asyncio.run(scenario())
    said = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(said) == 1, said


def test_sqlites_corruption_codes_are_not_worth_retrying(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database " * 1000)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        db.execute("SELECT * FROM sqlite_master").fetchall()
    db.close()
    assert corrupt(raised.value)
    assert not unavailable(raised.value)
    assert not unavailable(DatabaseBroken("replaced"))
    busy = sqlite3.OperationalError("database is locked")
    assert unavailable(busy)
    assert not corrupt(busy)
