"""Cancelling a tree larger than one batch says so: the API's ``more_ending``, the
client's ``Cancelled.more_ending`` and the command line's line tell that the rest of the
tree ends in the background, beside the count of what ended at once; a tree that fits in
the batch says nothing more (in process, over SQLite)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from dispatchlet import Client
from dispatchlet.cli.main import main
from dispatchlet.core.dispatching import API_KEY_ENV, API_URL_ENV
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.store import END_BATCH
from scheduler_harness import API_KEY, harness
from test_scheduler_tree_limits import stored_tree

CANCEL = "/dispatchlet.scheduler.v1.CallService/Cancel"
LATER = 3600.0  # the calls are ready an hour from now: the engine runs none meanwhile


def test_the_api_tells_that_the_rest_of_a_large_tree_is_still_ending(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            large, _ = await stored_tree(h.store, [2, END_BATCH], time.time() + LATER)
            small, _ = await stored_tree(h.store, [3, 4], time.time() + LATER)
            request = calls_pb2.CancelRequest
            answer = await h.rpc(CANCEL, request(dispatch_id=large), calls_pb2.CancelResponse)
            assert (answer.cancelled, answer.more_ending) == (1 + END_BATCH, True)
            answer = await h.rpc(CANCEL, request(dispatch_id=small), calls_pb2.CancelResponse)
            assert (answer.cancelled, answer.more_ending) == (1 + 3 + 12, False)

    asyncio.run(scenario())


def test_the_client_and_the_command_line_tell_that_the_rest_is_ending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            later = time.time() + LATER
            by_client, _ = await stored_tree(h.store, [2, END_BATCH], later)
            by_command, _ = await stored_tree(h.store, [2, END_BATCH], later)
            small, _ = await stored_tree(h.store, [2], later)
            with Client(h.url, API_KEY) as client:
                cancelled = await asyncio.to_thread(client.cancel, by_client)
                assert cancelled == 1 + END_BATCH
                assert cancelled.more_ending
                again = await asyncio.to_thread(client.cancel, by_client)
                assert (again, again.more_ending) == (0, False)

            monkeypatch.setenv(API_URL_ENV, h.url)
            monkeypatch.setenv(API_KEY_ENV, API_KEY)
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["calls", "cancel", by_command]) == 0
            assert capsys.readouterr().out == (
                f"cancelled {1 + END_BATCH} call(s); "
                "the rest of its tree is ending in the background\n"
            )
            assert await asyncio.to_thread(main, ["calls", "cancel", small]) == 0
            assert capsys.readouterr().out == "cancelled 3 call(s)\n"

    asyncio.run(scenario())
