"""A large output costs the scheduler about its size, not several times it, and is
answered byte for byte as before: the engine serializes an answer's result once and lets
the parsed answer go (``settled``); Get and Wait frame the stored CallResult's output and
error into their answer from its bytes (``CallAnswer``), in proto and in JSON."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from dispatchlet.core import proto_json
from dispatchlet.core.errors import STEP_MISMATCH
from dispatchlet.core.proto_json import Base64, Utf8Text, json_chunks, json_size, message_to_json
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, error_pb2, function_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler import outcome as outcome_module
from dispatchlet.scheduler.call_answer import CallAnswer
from dispatchlet.scheduler.engine import attempt_summary
from dispatchlet.scheduler.outcome import Outcome, settled
from dispatchlet.scheduler.rules import Limits, after_attempt
from dispatchlet.scheduler.store import Call, State
from google.protobuf import any_pb2, wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler_harness import harness
from test_direct_api import exchange, post

NOW = 1_700_000_000.0
CALLS = "/dispatchlet.scheduler.v1.CallService/"

texts = st.text(max_size=40)
blobs = st.binary(max_size=300)


@st.composite
def outputs(draw: st.DrawFn) -> any_pb2.Any:
    """An Any of a type the scheduler knows (bytes, a string) or of a user's own."""
    kind = draw(st.sampled_from(["bytes", "string", "unknown", "empty"]))
    if kind == "bytes":
        packed = any_pb2.Any()
        packed.Pack(wrappers_pb2.BytesValue(value=draw(blobs)))
        return packed
    if kind == "string":
        packed = any_pb2.Any()
        packed.Pack(wrappers_pb2.StringValue(value=draw(texts)))
        return packed
    if kind == "unknown":
        return any_pb2.Any(type_url="type.googleapis.com/acme.Receipt", value=draw(blobs))
    return any_pb2.Any()


@st.composite
def results(draw: st.DrawFn) -> bytes:
    result = call_pb2.CallResult(
        correlation_id=draw(st.integers(0, 2**64 - 1)), dispatch_id=draw(texts)
    )
    if draw(st.booleans()):
        result.output.CopyFrom(draw(outputs()))
    if draw(st.booleans()):
        result.error.CopyFrom(
            error_pb2.Error(
                type=draw(texts), message=draw(texts), value=draw(blobs), traceback=draw(blobs)
            )
        )
    return result.SerializeToString()


@st.composite
def infos(draw: st.DrawFn) -> calls_pb2.CallInfo:
    info = calls_pb2.CallInfo(
        dispatch_id=draw(texts),
        function=draw(texts),
        endpoint=draw(texts),
        done=draw(st.booleans()),
        attempts=draw(st.integers(0, 2**31 - 1)),
        parent_dispatch_id=draw(texts),
        root_dispatch_id=draw(texts),
        state=draw(st.sampled_from(["ready", "running", "waiting", "done"])),
        status=draw(st.sampled_from([0, Status.OK.value, Status.TIMEOUT.value])),  # type: ignore[arg-type]
        last_status=draw(st.sampled_from([0, Status.OK.value])),  # type: ignore[arg-type]
    )
    if draw(st.booleans()):
        info.input.CopyFrom(draw(outputs()))  # an input of an unknown type too
    if draw(st.booleans()):
        info.coroutine_state.CopyFrom(draw(outputs()))
    for name in ("created_at", "expires_at", "finished_at", "ready_at"):
        if draw(st.booleans()):
            getattr(info, name).FromSeconds(draw(st.integers(0, 2**33)))
    # The attempt history, which Get and Wait carry after the fields of the result.
    for number in range(draw(st.integers(0, 3))):
        attempt = info.history.add(
            number=number + 1,
            function=draw(texts),
            status=draw(st.sampled_from([Status.OK.value, Status.TIMEOUT.value])),  # type: ignore[arg-type]
            error_type=draw(texts),
            error_message=draw(texts),
        )
        attempt.started_at.FromSeconds(draw(st.integers(0, 2**33)))
        attempt.duration.FromNanoseconds(draw(st.integers(0, 10**12)))
        info.attempts_total = number + 1 + draw(st.integers(0, 100))
    return info


@settings(max_examples=300, deadline=None)
@given(infos(), results(), st.sampled_from([calls_pb2.GetResponse, calls_pb2.WaitResponse]))
def test_an_answer_framed_from_the_stored_bytes_is_the_built_one(
    info: calls_pb2.CallInfo, result: bytes, kind: Any
) -> None:
    answer = CallAnswer(kind, info, result)
    kept = calls_pb2.CallInfo()
    kept.CopyFrom(info)
    built = CallAnswer(kind, kept, result).message()  # the answer as it is built whole
    assert b"".join(answer.proto()) == built.SerializeToString()
    text = message_to_json(built)
    assert b"".join(answer.json()) == text
    assert json_size(answer._json_value()) == len(text)  # its Content-Length


def test_a_call_result_that_is_not_plain_is_answered_the_usual_way() -> None:
    output = any_pb2.Any(type_url="t", value=b"x" * 300_000)
    twice = call_pb2.CallResult(output=output).SerializeToString() * 2  # protobuf merges them
    answer = CallAnswer(calls_pb2.GetResponse, calls_pb2.CallInfo(dispatch_id="d"), twice)
    assert not answer.framed
    assert answer.message().call.output == output


def stored(**fields: Any) -> Call:
    values: dict[str, Any] = {
        "dispatch_id": "d1",
        "function": "f",
        "endpoint": "http://endpoint.test",
        "input": b"",
        "version": "",
        "correlation_id": 0,
        "parent_id": None,
        "root_id": "d1",
        "state": State.RUNNING,
        "status": None,
        "result": b"",
        "attempts": 1,
        "created_at": NOW - 10,
        "expires_at": NOW + 3600,
        "ready_at": NOW - 10,
        "finished_at": None,
    }
    values.update(fields)
    return Call(**values)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([Status.OK, Status.TEMPORARY_ERROR, Status.INCOMPATIBLE_STATE]),
    results(),
    st.booleans(),
    st.sampled_from([texts, st.just(STEP_MISMATCH)]).flatmap(lambda kinds: kinds),
)
def test_a_settled_outcome_is_decided_and_logged_as_the_answer_itself(
    status: Status, result: bytes, resumed: bool, error_type: str
) -> None:
    response = function_pb2.RunResponse(status=status.value)
    response.exit.result.MergeFromString(result)
    if response.exit.result.HasField("error"):
        response.exit.result.error.type = error_type
    outcome = Outcome(Status.OK, response)
    call = stored(poll=b"\x08\x01" if resumed else b"")
    for lighter_from in (0, outcome_module.SETTLED_SIZE):  # the parsed answer let go, or kept
        with mock.patch.object(outcome_module, "SETTLED_SIZE", lighter_from):
            light = settled(outcome)
        assert light.result == response.exit.result.SerializeToString()
        assert (light.response is response) == (len(light.result) <= lighter_from)
        for limits in (Limits(), Limits(max_output_size=len(result) // 2)):
            assert after_attempt(call, light, limits, NOW, jitter=0.5) == after_attempt(
                call, outcome, limits, NOW, jitter=0.5
            )
        assert attempt_summary(light) == attempt_summary(outcome)


LARGE = 6 * 1024 * 1024


def large_answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.exit.result.output.Pack(wrappers_pb2.BytesValue(value=b"\x00\xfe" * (LARGE // 2)))
    return Outcome(Status.OK, response)


def test_a_large_output_is_answered_whole_by_get_and_wait(tmp_path: Path) -> None:
    async def scenario() -> dict[str, tuple[int, bytes]]:
        async with harness(tmp_path, large_answer) as h:
            (dispatch_id,) = await h.dispatch(call_pb2.Call(function="f", endpoint="http://e.test"))
            await h.done(dispatch_id)
            answers = {}
            for name, request in (
                ("Get", calls_pb2.GetRequest(dispatch_id=dispatch_id)),
                ("Wait", calls_pb2.WaitRequest(dispatch_id=dispatch_id)),
            ):
                answers[name + " proto"] = await h.post(CALLS + name, request.SerializeToString())
                answers[name + " json"] = await h.post(
                    CALLS + name,
                    json.dumps({"dispatchId": dispatch_id}).encode(),
                    content_type="application/json",
                )
            return answers

    value = b"\x00\xfe" * (LARGE // 2)
    for name, (status, body) in asyncio.run(scenario()).items():
        assert status == 200, (name, body[:200])
        if name.endswith("proto"):
            kind = calls_pb2.GetResponse if name.startswith("Get") else calls_pb2.WaitResponse
            info = kind.FromString(body).call
            output = wrappers_pb2.BytesValue()
            assert info.output.Unpack(output)
            assert output.value == value, name
            assert info.status == Status.OK.value
            assert [a.status for a in info.history] == [Status.OK.value], name
            assert info.attempts_total == 1
        else:
            shown = json.loads(body)["call"]
            assert shown["status"] == "STATUS_OK"
            assert [a["status"] for a in shown["history"]] == ["STATUS_OK"], name
            assert shown["attemptsTotal"] == "1"
            assert shown["output"] == {
                "@type": "type.googleapis.com/google.protobuf.BytesValue",
                "value": base64.b64encode(value).decode(),
            }, name


def test_a_large_output_is_written_in_pieces_alike_directly_and_by_aiohttp(
    tmp_path: Path,
) -> None:
    """A Get read whole is answered without aiohttp (``direct_api.py``), its large
    output framed in pieces as aiohttp's answer is: the same bytes, in both codecs."""

    async def scenario() -> None:
        async with harness(tmp_path, large_answer) as h:
            (dispatch_id,) = await h.dispatch(call_pb2.Call(function="f", endpoint="http://e.test"))
            await h.done(dispatch_id)
            port = int(h.url.rsplit(":", 1)[1])
            proto = calls_pb2.GetRequest(dispatch_id=dispatch_id).SerializeToString()
            text = json.dumps({"dispatchId": dispatch_id}).encode()
            for body, content_type in ((proto, "application/proto"), (text, "application/json")):
                data = post(CALLS + "Get", body, content_type=content_type)
                direct = await exchange(port, data)
                split = data.index(b"\r\n\r\n") + 4
                aiohttp = await exchange(port, data[:split], data[split:], pause=0.2)
                assert not direct.by_aiohttp
                assert aiohttp.by_aiohttp
                assert direct.status == aiohttp.status == 200
                assert len(direct.body) > LARGE
                assert direct.body == aiohttp.body

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_large_output_costs_the_scheduler_a_few_times_its_size() -> None:
    """Peak RSS of a real scheduler process (RSS: protobuf's own allocations are not
    Python's), with a generous bound: an attempt, a Get in proto and one in JSON of an
    8 MiB output each cost less than 4 times it (they cost 4.1, 5.1 and 6.8 times it
    when the answer was parsed, copied and serialized again at each step)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    try:
        import memory  # bench/memory.py
    finally:
        sys.path.pop(0)
    size = 8 * 1024 * 1024
    figures = memory.measure(size)
    for name in ("attempt", "get_proto", "get_json"):
        assert figures[name] < 4 * size, (name, figures[name] / size, figures)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.text(max_size=200), st.integers(1, 12))
def test_json_written_in_pieces_is_json_dumps(data: bytes, text: str, chunk: int) -> None:
    utf8 = Utf8Text(text.encode())
    written = {"value": Base64(data), "text": text, "list": [utf8, 1, None, 2.5]}
    plain = {"value": base64.b64encode(data).decode(), "text": text, "list": [text, 1, None, 2.5]}
    with mock.patch.object(proto_json, "JSON_CHUNK", chunk):  # many pieces
        pieces = b"".join(json_chunks(written))
        size = json_size(written)
    assert pieces == json.dumps(plain, separators=(",", ":")).encode()
    assert size == len(pieces)
