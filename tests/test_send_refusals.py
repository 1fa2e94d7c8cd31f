"""Messages the scheduler refuses, in process through the API, the client and the
command line: a call whose mailbox is full (429 ``resource_exhausted``), a call that
follows another (naming it) and a workflow's receive (``failed_precondition``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from dispatchlet import Client
from dispatchlet.cli.main import main
from dispatchlet.client import ClientError
from dispatchlet.core import values
from dispatchlet.core.dispatching import API_KEY_ENV, API_URL_ENV
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from dispatchlet.scheduler.store import MAILBOX_MESSAGES, NewCall, Sent
from scheduler_harness import API_KEY, ENDPOINT, harness

SEND = "/dispatchlet.scheduler.v1.CallService/Send"
POLL = b""


def new_call(function: str, now: float, **fields: Any) -> NewCall:
    return NewCall(function=function, endpoint=ENDPOINT, input=b"", expires_at=now + 3600, **fields)


def message(value: object) -> bytes:
    return call_pb2.CallResult(output=values.to_any(value)).SerializeToString()


def test_a_full_mailbox_answers_429_to_the_api_the_client_and_the_command_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            monkeypatch.setenv(API_URL_ENV, h.url)
            monkeypatch.setenv(API_KEY_ENV, API_KEY)
            now = time.time()
            (workflow,) = await h.store.dispatch([new_call("workflow", now)], now=now)
            for n in range(MAILBOX_MESSAGES):
                assert await h.store.send(workflow, "t", message(n), now=now) is Sent.KEPT
            body = json.dumps({"dispatchId": workflow, "topic": "t", "value": {}}).encode()
            status, answer = await h.post(SEND, body, content_type="application/json")
            assert status == 429, answer
            refused = json.loads(answer)
            assert refused["code"] == "resource_exhausted"
            assert f"keeps {MAILBOX_MESSAGES} messages" in refused["message"]

            with Client(h.url, API_KEY) as client, pytest.raises(ClientError) as raised:
                await asyncio.to_thread(client.send, workflow, "t", 1)
            assert raised.value.code == "resource_exhausted"

            capsys.readouterr()
            assert await asyncio.to_thread(main, ["calls", "send", workflow, "t", "1"]) != 0
            err = capsys.readouterr().err
            assert f"resource_exhausted: the call {workflow!r} keeps" in err
            assert "Traceback" not in err

    asyncio.run(scenario())


def test_a_message_to_a_follower_names_the_call_it_follows(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, running=False) as h:
            now = time.time()
            (first,) = await h.store.dispatch([new_call("charge", now, key="k")], now=now)
            (parent,) = await h.store.dispatch([new_call("parent", now)], now=now)
            claimed = await h.store.claim(owner="t", now=now, limit=10, lease_seconds=60)
            (lease,) = [c.lease for c in claimed if c.call.dispatch_id == parent]
            kids = [
                new_call("charge", now, correlation_id=1, key="k"),
                new_call("dispatchlet.receive", now, correlation_id=2, topic="approval"),
            ]
            ids = await h.store.suspend(
                lease, POLL, kids, min_results=1, max_results=2, until=now + 600, now=now
            )
            assert ids is not None
            follower, waiting = ids
            for to, words in (
                (follower, f"follows the call {first!r}"),
                (waiting, "is a workflow's receive"),
            ):
                body = json.dumps({"dispatchId": to, "topic": "t", "value": {}}).encode()
                status, answer = await h.post(SEND, body, content_type="application/json")
                refused = json.loads(answer)
                assert (status, refused["code"]) == (400, "failed_precondition"), answer
                assert words in refused["message"]

    asyncio.run(scenario())
