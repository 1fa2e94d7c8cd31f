"""Idempotent Dispatch, in process: the API answers a repeated request id with the first
ids (proto and JSON), refuses one reused for another request, and honours call keys;
the client sends a request id, the same on its own retry; ``Function.options`` carries
a key and an expiration and refuses what it does not implement."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import json
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from dispatchlet import Client, Endpoint
from dispatchlet.core.call_options import OPTIONS_FIELD, call_options, set_call_options
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2
from scheduler_harness import API_KEY, ENDPOINT, Harness, call, harness
from support import EndpointServer

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"
PROTO, JSON = "application/proto", "application/json"


def keyed(function: str, key: str) -> call_pb2.Call:
    built = call(function)
    set_call_options(built, options_pb2.CallOptions(key=key))
    return built


def encoded(calls: Sequence[call_pb2.Call], codec: str) -> bytes:
    """A DispatchRequest in ``codec``; in JSON, each call's options as
    ``dispatchletOptions`` (what the scheduler's JSON parser reads)."""
    if codec == PROTO:
        return dispatch_pb2.DispatchRequest(calls=calls).SerializeToString()
    members = []
    for each in calls:
        member: dict[str, Any] = {"function": each.function, "endpoint": each.endpoint}
        key = call_options(each).key
        if key:
            member["dispatchletOptions"] = {"key": key}
        members.append(member)
    return json.dumps({"calls": members}).encode()


async def send(
    h: Harness, calls: Sequence[call_pb2.Call], codec: str, request_id: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": codec, "Authorization": f"Bearer {API_KEY}"}
    if request_id is not None:
        headers["Idempotency-Key"] = request_id
    async with h.session.post(h.url + DISPATCH, data=encoded(calls, codec), headers=headers) as r:
        body = await r.read()
        if r.status != 200:
            return r.status, json.loads(body)
        if codec == JSON:
            return r.status, json.loads(body).get("dispatchIds", [])
        return r.status, list(dispatch_pb2.DispatchResponse.FromString(body).dispatch_ids)


async def count(h: Harness) -> int:
    return len(await h.store.list(limit=1000))


def scenario(tmp_path: Path, body: Any) -> None:
    async def run() -> None:
        async with harness(tmp_path, running=False) as h:
            await body(h)

    asyncio.run(run())


@pytest.mark.parametrize("codec", [PROTO, JSON])
def test_a_repeated_request_id_is_answered_with_the_first_ids(tmp_path: Path, codec: str) -> None:
    async def body(h: Harness) -> None:
        calls = [call("a"), call("b")]
        status, first = await send(h, calls, codec, "req-1")
        assert status == 200
        assert await send(h, calls, codec, "req-1") == (200, first)
        assert await count(h) == 2
        # Without a request id, as plain Dispatch clients send: a new request each time.
        status, plain = await send(h, calls, codec)
        assert status == 200
        assert set(plain).isdisjoint(first)
        assert await count(h) == 4

    scenario(tmp_path, body)


@pytest.mark.parametrize("codec", [PROTO, JSON])
def test_a_request_id_reused_for_other_calls_is_a_conflict(tmp_path: Path, codec: str) -> None:
    async def body(h: Harness) -> None:
        status, _ = await send(h, [call("a")], codec, "req-1")
        assert status == 200
        status, error = await send(h, [call("b")], codec, "req-1")
        assert status == 409
        assert error["code"] == "already_exists"
        assert "'req-1' was used for another Dispatch request" in error["message"]
        assert await count(h) == 1

    scenario(tmp_path, body)


def test_the_same_request_in_either_codec_is_the_same_request(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        calls = [keyed("a", "k"), call("b")]
        status, first = await send(h, calls, PROTO, "req-1")
        assert status == 200
        assert await send(h, calls, JSON, "req-1") == (200, first)

    scenario(tmp_path, body)


@pytest.mark.parametrize("codec", [PROTO, JSON])
def test_calls_with_a_known_key_get_its_calls_id(tmp_path: Path, codec: str) -> None:
    async def body(h: Harness) -> None:
        status, ids = await send(h, [keyed("a", "k1"), call("b"), keyed("c", "k1")], codec)
        assert status == 200
        assert ids[2] == ids[0] != ids[1]
        status, again = await send(h, [keyed("x", "k1"), keyed("y", "k2")], codec)
        assert status == 200
        assert again[0] == ids[0]
        assert again[1] not in ids
        assert await count(h) == 3

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("request_id", "key", "message"),
    [
        ("x" * 256, "k", "invalid Idempotency-Key header: expected 1 to 255 printable ASCII"),
        ("", "k", "invalid Idempotency-Key header"),
        (None, "k" * 257, "call 1: an idempotency key longer than 256 characters"),
        (None, "a\x00b", "call 1: an idempotency key with a control character: 'a\\x00b'"),
        (None, "line\nbreak", "call 1: an idempotency key with a control character"),
    ],
)
def test_request_ids_and_keys_that_cannot_be_used_are_refused(
    tmp_path: Path, request_id: str | None, key: str, message: str
) -> None:
    async def body(h: Harness) -> None:
        status, error = await send(h, [call("a"), keyed("b", key)], PROTO, request_id)
        assert (status, error["code"]) == (400, "invalid_argument")
        assert message in error["message"]
        assert await count(h) == 0

    scenario(tmp_path, body)


def test_the_options_mirror_is_the_dispatch_call_with_one_field_more() -> None:
    """The scheduler reads calls with ``options_pb2.Call``: every field of
    dispatch.sdk.v1.Call, same number, name and type, and the options in a field the
    Call does not have."""

    def fields(descriptor: Any) -> dict[int, tuple[str, int, str | None]]:
        return {
            f.number: (f.name, f.type, f.message_type.full_name if f.message_type else None)
            for f in descriptor.fields
        }

    mirror = fields(options_pb2.Call.DESCRIPTOR)
    options = mirror.pop(OPTIONS_FIELD)
    assert options[0] == "dispatchlet_options"
    assert mirror == fields(call_pb2.Call.DESCRIPTOR)
    request = fields(options_pb2.DispatchRequest.DESCRIPTOR)
    assert request.keys() == fields(dispatch_pb2.DispatchRequest.DESCRIPTOR).keys()


def test_options_survive_copies_and_are_skipped_by_plain_parsers() -> None:
    built = keyed("a", "order-17")
    request = dispatch_pb2.DispatchRequest(calls=[built])
    wire = request.SerializeToString()
    # A plain Dispatch parser (dispatch-py's messages are these) reads the call as it is.
    plain = dispatch_pb2.DispatchRequest.FromString(wire)
    assert (plain.calls[0].function, plain.calls[0].endpoint) == ("a", ENDPOINT)
    assert call_options(plain.calls[0]).key == "order-17"  # and passes it on
    read = options_pb2.DispatchRequest.FromString(wire)
    assert read.calls[0].dispatchlet_options.key == "order-17"


# --- the client ------------------------------------------------------------------------


class Dropping(http.server.BaseHTTPRequestHandler):
    """A scheduler that reads each Dispatch whole, then, the first time, resets the
    connection instead of answering; it keeps the request ids it was sent."""

    protocol_version = "HTTP/1.1"
    request_ids: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        Dropping.request_ids.append(self.headers.get("Idempotency-Key"))
        if len(Dropping.request_ids) % 2 == 1:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        body = dispatch_pb2.DispatchResponse(dispatch_ids=["d1"]).SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dropping() -> Iterator[str]:
    Dropping.request_ids = []
    server = EndpointServer(("127.0.0.1", 0), Dropping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_client_resends_a_dispatch_with_the_same_request_id(dropping: str) -> None:
    with Client(dropping, "k") as client:
        assert client.dispatch([call("a")]) == ["d1"]
        assert client.dispatch([call("a")]) == ["d1"]
        assert client.dispatch([call("a")], request_id="mine") == ["d1"]
    first, retry, second, second_retry, mine, mine_retry = Dropping.request_ids
    assert first is not None
    assert len(first) >= 16
    assert retry == first
    assert second == second_retry != first  # each request its own id
    assert mine == mine_retry == "mine"


# --- Function.options ----------------------------------------------------------------


class Recorder:
    """A dispatcher that keeps the calls it is given."""

    def __init__(self) -> None:
        self.calls: list[call_pb2.Call] = []

    def dispatch(self, calls: Sequence[call_pb2.Call]) -> list[str]:
        self.calls.extend(calls)
        return [f"id-{n}" for n in range(len(calls))]


@pytest.fixture
def endpoint() -> Endpoint:
    return Endpoint(insecure=True, endpoint_url="https://functions.example.com")


def test_options_carry_a_key_and_an_expiration(endpoint: Endpoint) -> None:
    sent = endpoint.client = Recorder()

    @endpoint.function
    def charge(order: str, cents: int) -> str:
        return order

    assert charge.options(key="charge-o-17").dispatch("o-17", 500) == "id-0"
    charge.options(expiration=datetime.timedelta(minutes=5)).dispatch("o-18", 1)
    charge.options(expiration=2.5, key="k").dispatch("o-19", 1)
    with endpoint.batch() as batch:
        batch.add(charge.options(key="b1"), "o-20", 1)
        batch.add(charge, "o-21", 1)
    built = charge.options(key="built").build_call("o-22", 1)
    keys = [call_options(c).key for c in [*sent.calls, built]]
    assert keys == ["charge-o-17", "", "k", "b1", "", "built"]
    assert [c.expiration.ToMilliseconds() for c in sent.calls[:3]] == [0, 300_000, 2500]
    assert sent.calls[0].function == "charge"
    assert not sent.calls[0].HasField("expiration")
