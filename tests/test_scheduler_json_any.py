"""The CallService in JSON shows a value whose type the scheduler does not know (a
user's own message, in an ``Any``) as ``{"@type", "value": base64}``: Get, Wait and List
answer, where they used to fail with a bare 500."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, function_pb2
from dispatchlet.scheduler.http_caller import Outcome
from google.protobuf import any_pb2
from scheduler_harness import harness

CALLS = "/dispatchlet.scheduler.v1.CallService/"
UNKNOWN_INPUT = any_pb2.Any(type_url="type.googleapis.com/acme.Order", value=b"\x08\x2a")
UNKNOWN_OUTPUT = any_pb2.Any(type_url="type.googleapis.com/acme.Receipt", value=b"\x12\x02ok")


def answer(endpoint: str, request: function_pb2.RunRequest) -> Outcome:
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.exit.result.output.CopyFrom(UNKNOWN_OUTPUT)
    return Outcome(Status.OK, response)


def opaque(value: any_pb2.Any) -> dict[str, str]:
    return {"@type": value.type_url, "value": base64.b64encode(value.value).decode()}


def test_get_wait_and_list_in_json_show_values_of_unknown_types(tmp_path: Path) -> None:
    async def scenario() -> dict[str, tuple[int, Any]]:
        async with harness(tmp_path, answer) as h:
            sent = call_pb2.Call(function="order", endpoint="http://endpoint.test")
            sent.input.CopyFrom(UNKNOWN_INPUT)
            (dispatch_id,) = await h.dispatch(sent)  # in proto: no JSON on the way in
            await h.done(dispatch_id)
            answers = {}
            for name, request in (
                ("Wait", {"dispatchId": dispatch_id, "timeout": "30s"}),
                ("Get", {"dispatchId": dispatch_id}),
                ("List", {"pageSize": 10}),
            ):
                status, body = await h.post(
                    CALLS + name, json.dumps(request).encode(), content_type="application/json"
                )
                answers[name] = (status, json.loads(body))
            return answers

    answers = asyncio.run(scenario())
    for name, (status, body) in answers.items():
        assert status == 200, (name, body)
    for name in ("Get", "Wait"):
        shown = answers[name][1]["call"]
        assert shown["done"] is True
        assert shown["status"] == "STATUS_OK"
        assert shown["input"] == opaque(UNKNOWN_INPUT)
        assert shown["output"] == opaque(UNKNOWN_OUTPUT)
    # List answers summaries (no input or output): the call is listed all the same.
    (listed,) = answers["List"][1]["calls"]
    assert listed["function"] == "order"
    assert listed.get("output", opaque(UNKNOWN_OUTPUT)) == opaque(UNKNOWN_OUTPUT)


def test_known_values_are_shown_as_protobufs_json_mapping_shows_them() -> None:
    from dispatchlet.core import values
    from dispatchlet.core.proto_json import message_to_dict
    from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
    from google.protobuf import json_format

    info = calls_pb2.CallInfo(dispatch_id="d", function="f", attempts=2, done=True)
    info.input.CopyFrom(values.to_any({"a": [1, "b"]}))
    info.output.CopyFrom(values.to_any("text"))
    info.created_at.FromSeconds(1_800_000_000)
    info.error.type = "ValueError"
    listed = calls_pb2.ListResponse(calls=[info, info], next_page_token="t")
    assert message_to_dict(listed) == json_format.MessageToDict(listed)
    # One unknown value among known ones: only it is opaque.
    listed.calls[1].output.CopyFrom(UNKNOWN_OUTPUT)
    shown = message_to_dict(listed)
    assert isinstance(shown, dict)
    assert shown["calls"][0] == json_format.MessageToDict(info)
    assert shown["calls"][1]["output"] == opaque(UNKNOWN_OUTPUT)
    assert shown["calls"][1]["createdAt"] == "2027-01-15T08:00:00Z"
