"""Waiting for many calls at once: the WaitMany RPC (answered as soon as one of them is
final, its answer bounded however large their results) and the client's ``wait_all``
and ``as_completed`` on it, against the API and engine in process on a SQLite store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dispatchlet import CallInfo, Client, ClientError, Status
from dispatchlet.core import values
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.api import MAX_WAIT_MANY, WAIT_MANY_BYTES
from dispatchlet.scheduler.call_answer import LARGE_RESULT
from dispatchlet.scheduler.http_caller import Outcome
from dispatchlet.scheduler.retry import RetryPolicy
from scheduler_harness import API_KEY, Harness, call, harness, raised, returned

WAIT_MANY = "/dispatchlet.scheduler.v1.CallService/WaitMany"
SLOW_RETRIES = RetryPolicy(base=3600.0, cap=3600.0)
"""A call that failed once waits half an hour for its retry: it stays unfinished."""
BOUND = 60.0
T = TypeVar("T")


def by_input(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
    """``["ok", value]`` returns value; ``["fail", text]`` a permanent error;
    ``["big", n]`` n bytes; ``["stuck"]`` a temporary error (retried much later)."""
    kind, *rest = values.from_any(request.input)
    if kind == "fail":
        return raised("ValueError", rest[0], Status.PERMANENT_ERROR)
    if kind == "big":
        return returned(b"x" * rest[0])
    if kind == "stuck":
        return raised("ConnectionError", "down", Status.TEMPORARY_ERROR)
    return returned(rest[0])


async def in_thread(h: Harness, use: Callable[[Client], T], bound: float = BOUND) -> T:
    """``use`` of a real client of the harness's API, in a thread (the client blocks)."""

    def run() -> T:
        with Client(h.url, API_KEY) as client:
            return use(client)

    return await asyncio.wait_for(asyncio.to_thread(run), bound)


async def retrying(h: Harness, dispatch_id: str) -> None:
    """Once the call's first attempt failed and it waits (long) for its retry."""

    async def failed_once() -> None:
        with h.engine.watching(dispatch_id) as until:
            while True:
                found = await h.store.get(dispatch_id)
                assert found is not None
                if found.attempts and found.state.value == "ready":
                    return
                await until(0.2)

    await asyncio.wait_for(failed_once(), BOUND)


async def wait_many(h: Harness, ids: list[str], timeout: float | None = None) -> Any:
    request = calls_pb2.WaitManyRequest(dispatch_ids=ids)
    if timeout is not None:
        request.timeout.FromMilliseconds(int(timeout * 1000))
    answer = h.rpc(WAIT_MANY, request, calls_pb2.WaitManyResponse)
    return await asyncio.wait_for(answer, BOUND)


def test_wait_all_gives_each_call_done_in_order_over_several_requests(tmp_path: Path) -> None:
    inputs = [["fail", f"no {n}"] if n % 7 == 3 else ["ok", n] for n in range(MAX_WAIT_MANY + 50)]
    asked: list[int] = []

    async def scenario() -> list[CallInfo]:
        async with harness(tmp_path, by_input) as h:
            get_many = h.store.get_many

            async def counted(ids: list[str]) -> Any:
                asked.append(len(ids))
                return await get_many(ids)

            h.store.get_many = counted  # type: ignore[method-assign]
            ids: list[str] = []
            for first in range(0, len(inputs), 500):
                ids += await h.dispatch(*(call("f", given) for given in inputs[first:][:500]))
            # Asked in an order of the user's, a call twice.
            order = [*reversed(ids), ids[5]]
            infos = await in_thread(h, lambda client: client.wait_all(order))
            assert [info.dispatch_id for info in infos] == order
            return infos[:-1][::-1]

    infos = asyncio.run(scenario())
    for given, info in zip(inputs, infos, strict=True):
        assert info.done
        if given[0] == "ok":
            assert (info.status, info.output) == (Status.OK, given[1])
        else:
            assert info.status == Status.PERMANENT_ERROR
            assert info.error is not None
            assert info.error.message == given[1]
    # No request asks for more than the scheduler takes; a waiting one reads again only
    # the calls that changed, not all it waits for at each change.
    assert max(asked) == MAX_WAIT_MANY
    assert sum(asked) < 3 * len(inputs), asked


def test_wait_many_answers_once_one_is_final_with_those_final_then(tmp_path: Path) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with harness(tmp_path, by_input, policy=SLOW_RETRIES) as h:
            stuck = await h.dispatch(call("f", ["stuck"]))
            # Nothing final: the answer waits for its timeout, then tells each as it is.
            await retrying(h, stuck[0])
            timed_out = await wait_many(h, stuck, timeout=0.5)
            (done,) = await h.dispatch(call("f", ["ok", "yes"]))
            answered = await wait_many(h, [*stuck, done])
            return timed_out, answered

    timed_out, answered = asyncio.run(scenario())
    (shown,) = timed_out.calls
    assert (shown.done, shown.state, shown.last_status) == (False, "ready", Status.TEMPORARY_ERROR)
    assert (shown.error.type, shown.error.message) == ("ConnectionError", "down")
    assert not shown.HasField("input")
    (final,) = answered.calls
    assert final.done
    assert values.from_any(final.output) == "yes"
    assert list(answered.large) == []


def test_a_waiting_wait_many_is_answered_when_a_call_ends(tmp_path: Path) -> None:
    async def scenario() -> Any:
        async with harness(tmp_path, by_input, policy=SLOW_RETRIES, running=False) as h:
            ids = await h.dispatch(call("f", ["ok", 1]), call("f", ["ok", 2]))
            waiting = asyncio.create_task(wait_many(h, ids))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # nothing ran yet
            task = asyncio.create_task(h.engine.run())
            try:
                return await waiting
            finally:
                h.engine.stop()
                await asyncio.wait_for(task, BOUND)

    answer = asyncio.run(scenario())
    assert answer.calls
    assert all(info.done for info in answer.calls)


def test_results_too_large_for_one_answer_come_whole_to_wait_all(tmp_path: Path) -> None:
    fits = LARGE_RESULT - 1024  # each under the size named in ``large``
    count = WAIT_MANY_BYTES // fits + 3  # more than one answer holds

    async def scenario() -> tuple[Any, Any, list[CallInfo]]:
        async with harness(tmp_path, by_input) as h:
            ids = await h.dispatch(*(call("f", ["big", fits]) for _ in range(count)))
            (large,) = await h.dispatch(call("f", ["big", 2 * LARGE_RESULT]))
            for dispatch_id in [*ids, large]:
                await h.done(dispatch_id)
            first = await wait_many(h, [*ids, large])
            json_status, json_body = await h.post(
                WAIT_MANY,
                json.dumps({"dispatchIds": [large, ids[0]]}).encode(),
                content_type="application/json",
            )
            assert json_status == 200, json_body
            infos = await in_thread(h, lambda client: client.wait_all([large, *ids]))
            return first, json.loads(json_body), infos

    first, in_json, infos = asyncio.run(scenario())
    # One answer holds what fits in its room, in order; the large one is only named.
    assert len(first.calls) == WAIT_MANY_BYTES // fits < count
    assert sum(len(info.output.value) for info in first.calls) <= WAIT_MANY_BYTES
    assert len(first.large) == 1
    assert in_json["large"] == [first.large[0]]
    assert len(in_json["calls"]) == 1
    # The client gets every one whole, the large one with a Wait of its own.
    assert [len(info.output) for info in infos] == [2 * LARGE_RESULT] + [fits] * count  # type: ignore[arg-type]


def test_as_completed_yields_calls_as_they_end_and_times_out_on_the_rest(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[list[CallInfo], list[CallInfo]]:
        async with harness(tmp_path, by_input, policy=SLOW_RETRIES) as h:
            ids = await h.dispatch(call("f", ["ok", 1]), call("f", ["stuck"]), call("f", ["ok", 2]))
            await retrying(h, ids[1])
            for dispatch_id in (ids[0], ids[2]):
                await h.done(dispatch_id, timeout=BOUND)
            seen: list[CallInfo] = []

            def consume(client: Client) -> None:
                for info in client.as_completed(ids, timeout=2.0):
                    seen.append(info)

            with pytest.raises(TimeoutError):
                await in_thread(h, consume)
            # wait_all after its timeout: each as it is, in order.
            as_they_are = await in_thread(h, lambda client: client.wait_all(ids, timeout=0.5))
            return seen, as_they_are

    seen, as_they_are = asyncio.run(scenario())
    assert sorted(info.output for info in seen) == [1, 2]  # type: ignore[type-var]
    assert [info.done for info in as_they_are] == [True, False, True]
    assert as_they_are[1].last_status == Status.TEMPORARY_ERROR


def test_bad_wait_many_requests_are_refused_with_their_reason(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, Any]]:
        async with harness(tmp_path, by_input) as h:
            (known,) = await h.dispatch(call("f", ["ok", 1]))
            answers = []
            for ids in ([], [known, "0" * 32], [str(n) for n in range(1001)]):
                body = calls_pb2.WaitManyRequest(dispatch_ids=ids).SerializeToString()
                status, answer = await h.post(WAIT_MANY, body)
                answers.append((status, json.loads(answer)))

            def unknown(client: Client) -> ClientError:
                with pytest.raises(ClientError) as raised:
                    client.wait_all([known, "f" * 32])
                return raised.value

            error = await in_thread(h, unknown)
            answers.append((error.http_status or 0, {"code": error.code, "message": str(error)}))
            return answers

    empty, unknown, too_many, from_client = asyncio.run(scenario())
    assert empty == (400, {"code": "invalid_argument", "message": "missing dispatch_ids"})
    assert unknown[0] == 404
    assert "0" * 32 in unknown[1]["message"]
    assert too_many[0] == 400
    assert "at most 1000" in too_many[1]["message"]
    assert from_client[0] == 404
    assert from_client[1]["code"] == "not_found"
    assert "f" * 32 in from_client[1]["message"]


def test_as_completed_over_more_calls_than_a_request_holds_misses_none_behind_others(
    tmp_path: Path,
) -> None:
    async def scenario() -> CallInfo:
        async with harness(tmp_path, by_input, policy=SLOW_RETRIES) as h:
            stuck = await h.dispatch(*(call("f", ["stuck"]) for _ in range(MAX_WAIT_MANY)))
            (last,) = await h.dispatch(call("f", ["ok", "behind"]))
            await h.done(last, timeout=BOUND)

            def first(client: Client) -> CallInfo:
                # The only call done is the last one asked for: it comes first.
                return next(client.as_completed([*stuck, last]))

            # Well before the first thousand's request would end (50 s), however loaded
            # the machine; each of the client's requests waits 1 s when it rotates.
            return await in_thread(h, first, bound=30.0)

    info = asyncio.run(scenario())
    assert (info.done, info.output) == (True, "behind")
