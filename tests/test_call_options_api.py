"""What the scheduler's Dispatch makes of a call's options (``dispatchletOptions`` in
Connect JSON, field 1000 in protobuf), in process: a delay or a start time becomes when
the call may start, its expiration counted from then; its policy is stored with it; bad
values are a 400 naming the call and the option, and nothing is stored."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.scheduler.store import CallPolicy
from scheduler_harness import API_KEY, ENDPOINT, Harness, harness

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"


def scenario(tmp_path: Path, body: Any) -> None:
    async def run() -> None:
        async with harness(tmp_path, running=False) as h:
            await body(h)

    asyncio.run(run())


async def send(h: Harness, *options: dict[str, Any]) -> tuple[int, Any]:
    calls = [
        {"function": "f", "endpoint": ENDPOINT, "dispatchletOptions": given} for given in options
    ]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    data = json.dumps({"calls": calls}).encode()
    async with h.session.post(h.url + DISPATCH, data=data, headers=headers) as answer:
        return answer.status, json.loads(await answer.read())


def test_a_delay_and_a_policy_are_stored_with_the_call(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        status, answer = await send(
            h,
            {
                "delay": "600s",
                "maxAttempts": 4,
                "attemptTimeout": "45s",
                "backoff": {"initial": "2s", "maximum": "60s", "multiplier": 3},
            },
            {"startAt": "2000-01-01T00:00:00Z"},  # past: it may start at once
            {},
        )
        assert status == 200, answer
        delayed, past, plain = [await h.store.get(i) for i in answer["dispatchIds"]]
        assert delayed is not None
        assert past is not None
        assert plain is not None
        assert delayed.ready_at == delayed.created_at + 600
        # Its expiration counts from when it may start (the default: a day).
        assert delayed.expires_at - delayed.ready_at == plain.expires_at - plain.created_at
        assert delayed.policy == CallPolicy(4, 45.0, 2.0, 60.0, 3.0)
        assert past.ready_at == past.created_at
        assert (past.policy, plain.policy) == (None, None)

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": "-5s"}, "call 1: a delay must be 0 to"),
        ({"delay": "40000000s"}, "call 1: a delay must be 0 to"),
        ({"startAt": "2999-01-01T00:00:00Z"}, "call 1: start_at is more than a year ahead"),
        ({"attemptTimeout": "-1s"}, "call 1: attempt_timeout must be 0 to"),
        ({"backoff": {"initial": "1s", "multiplier": 0.5}}, "backoff multiplier must be 1 to"),
        ({"key": "k" * 300}, "call 1: an idempotency key longer than 256 characters"),
    ],
)
def test_bad_options_are_refused_with_a_400_and_nothing_is_stored(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    async def body(h: Harness) -> None:
        status, answer = await send(h, {}, options)
        assert status == 400, answer
        assert message in answer["message"]
        assert await h.store.list() == []

    scenario(tmp_path, body)
