"""The client's CallService half against a scheduler whose answers a test scripts: a
small HTTP server on loopback, in this process."""

from __future__ import annotations

import datetime
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from dispatchlet import CallInfo, Client, ClientError, Status
from dispatchlet.core import values
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from google.protobuf import message

WAIT = "/dispatchlet.scheduler.v1.CallService/Wait"
LIST = "/dispatchlet.scheduler.v1.CallService/List"

Answer = tuple[int, str, bytes]


@dataclass
class Scheduler:
    """Answers each request with ``respond(path, body)``; keeps what it was sent."""

    respond: Callable[[str, bytes], Answer]
    received: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def requests(self, path: str, kind: type[message.Message]) -> list[message.Message]:
        return [kind.FromString(body) for p, body, _ in self.received if p == path]


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    fake = Scheduler(lambda path, body: (404, "text/plain", b"no"))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fake.received.append((self.path, body, dict(self.headers)))
            status, content_type, answer = fake.respond(self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def proto(reply: message.Message) -> Answer:
    return 200, "application/proto", reply.SerializeToString()


def call(state: str, attempts: int, **fields: object) -> calls_pb2.CallInfo:
    info = calls_pb2.CallInfo(dispatch_id="d1", function="f", state=state, attempts=attempts)
    info.created_at.FromSeconds(1_700_000_000)
    info.expires_at.FromSeconds(1_700_086_400)
    for name, value in fields.items():
        if name == "error":
            info.error.type, info.error.message = value  # type: ignore[misc]
        elif name == "ready_at":
            info.ready_at.FromSeconds(value)  # type: ignore[arg-type]
        elif name == "output":
            info.output.CopyFrom(values.to_any(value))
        else:
            setattr(info, name, value)
    return info


def failed(attempt: int) -> calls_pb2.CallInfo:
    """The call as a scheduler tells it once ``attempt`` failed and a retry waits."""
    return call(
        "ready",
        attempt,
        last_status=Status.TCP_ERROR.value,
        error=("ConnectionRefusedError", f"refused {attempt}"),
        ready_at=1_700_000_000 + attempt,
    )


DONE = call("done", 3, done=True, status=Status.OK.value, output="hi")


def scripted(*answers: calls_pb2.CallInfo) -> Callable[[str, bytes], Answer]:
    """Wait answers, in order, whatever the request asks."""
    left = list(answers)

    def respond(path: str, body: bytes) -> Answer:
        assert path == WAIT
        return proto(calls_pb2.WaitResponse(call=left.pop(0)))

    return respond


def test_wait_tells_each_failed_attempt_once(scheduler: Scheduler) -> None:
    scheduler.respond = scripted(
        failed(1),
        failed(1),  # the same attempt again (a Wait that timed out): not told twice
        call("running", 2, error=("ConnectionRefusedError", "refused 1")),
        failed(2),
        DONE,
    )
    told: list[CallInfo] = []
    with Client(scheduler.url, "k") as client:
        info = client.wait("d1", on_attempt=told.append)
    assert (info.done, info.status, info.output) == (True, Status.OK, "hi")
    assert [(a.attempts, a.last_status, a.error and a.error.message) for a in told] == [
        (1, Status.TCP_ERROR, "refused 1"),
        (2, Status.TCP_ERROR, "refused 2"),
    ]
    assert told[0].ready_at == datetime.datetime(
        2023, 11, 14, 22, 13, 21, tzinfo=datetime.timezone.utc
    )
    sent = scheduler.requests(WAIT, calls_pb2.WaitRequest)
    assert [r.attempts_seen for r in sent] == [0, 1, 1, 1, 2]  # type: ignore[attr-defined]


def test_wait_blocks_until_done_when_the_scheduler_ignores_attempts_seen(
    scheduler: Scheduler,
) -> None:
    # An older scheduler answers only when done or when its timeout passed.
    scheduler.respond = scripted(call("running", 1), failed(4), DONE)
    told: list[int] = []
    with Client(scheduler.url, "k") as client:
        info = client.wait("d1", on_attempt=lambda a: told.append(a.attempts))
    assert info.done
    assert told == [4]

    scheduler.respond = scripted(failed(1), DONE)
    with Client(scheduler.url, "k") as client:
        assert client.wait("d1").done
    plain = scheduler.requests(WAIT, calls_pb2.WaitRequest)[-1]
    assert not plain.HasField("attempts_seen")


def test_an_exception_in_on_attempt_ends_the_wait(scheduler: Scheduler) -> None:
    scheduler.respond = scripted(failed(1), DONE)

    def stop(info: CallInfo) -> None:
        raise KeyboardInterrupt

    with Client(scheduler.url, "k") as client, pytest.raises(KeyboardInterrupt):
        client.wait("d1", on_attempt=stop)


def test_call_info_carries_input_next_try_and_last_status() -> None:
    info = failed(2)
    info.input.CopyFrom(values.to_any({"a": [1, 2]}))
    decoded = CallInfo.from_proto(info)
    assert decoded.input == {"a": [1, 2]}
    assert decoded.last_status is Status.TCP_ERROR
    assert decoded.status is None
    assert decoded.ready_at == datetime.datetime.fromtimestamp(1_700_000_002, datetime.timezone.utc)
    bare = CallInfo.from_proto(call("ready", 0, last_status=99))
    assert (bare.input, bare.ready_at, bare.last_status) == (None, None, None)


def test_list_pages_carry_filters_and_a_cursor(scheduler: Scheduler) -> None:
    pages = {"": (["a", "b"], "after-b"), "after-b": (["c"], "")}

    def respond(path: str, body: bytes) -> Answer:
        request = calls_pb2.ListRequest.FromString(body)
        ids, token = pages[request.page_token]
        infos = [calls_pb2.CallInfo(dispatch_id=i, state="done") for i in ids]
        return proto(calls_pb2.ListResponse(calls=infos, next_page_token=token))

    scheduler.respond = respond
    with Client(scheduler.url, "k") as client:
        page = client.list_page(status="failed", newest_first=True, page_size=2)
        assert ([c.dispatch_id for c in page.calls], page.cursor) == (["a", "b"], "after-b")
        last = client.list_page(status="failed", newest_first=True, cursor=page.cursor)
        assert ([c.dispatch_id for c in last.calls], last.cursor) == (["c"], None)
        every = [c.dispatch_id for c in client.list(status="OK", newest_first=True)]
    assert every == ["a", "b", "c"]
    sent = scheduler.requests(LIST, calls_pb2.ListRequest)
    assert [(r.status, r.newest_first) for r in sent] == [  # type: ignore[attr-defined]
        ("failed", True),
        ("failed", True),
        ("OK", True),
        ("OK", True),
    ]


def unauthenticated(path: str, body: bytes) -> Answer:
    error = {"code": "unauthenticated", "message": "missing API key: send Authorization"}
    return 401, "application/json", json.dumps(error).encode()


def test_a_refusal_without_a_key_names_the_variable(scheduler: Scheduler) -> None:
    scheduler.respond = unauthenticated
    with Client(scheduler.url, "") as client, pytest.raises(ClientError) as refused:
        client.get("d1")
    assert refused.value.code == "unauthenticated"
    assert refused.value.message == (
        "missing API key: send Authorization (set DISPATCH_API_KEY; `dispatchlet dev` prints it)"
    )
    assert "Authorization" not in scheduler.received[-1][2]

    # A scheduler that names the variable itself: it is not named twice.
    def named(path: str, body: bytes) -> Answer:
        error = {"code": "unauthenticated", "message": "missing API key: set DISPATCH_API_KEY"}
        return 401, "application/json", json.dumps(error).encode()

    scheduler.respond = named
    with Client(scheduler.url, "") as client, pytest.raises(ClientError) as named_refusal:
        client.get("d1")
    assert named_refusal.value.message == (
        "missing API key: set DISPATCH_API_KEY (`dispatchlet dev` prints the DISPATCH_API_KEY "
        "to export)"
    )

    # A key was sent: it is the wrong one, and the hint would mislead.
    scheduler.respond = unauthenticated
    with Client(scheduler.url, "wrong") as client, pytest.raises(ClientError) as wrong:
        client.get("d1")
    assert "DISPATCH_API_KEY" not in str(wrong.value)

    # The scheduler itself has no key: exporting one on this side would not help.
    def keyless(path: str, body: bytes) -> Answer:
        message = "no API key configured: set DISPATCH_API_KEY for the scheduler"
        return (
            401,
            "application/json",
            json.dumps({"code": "unauthenticated", "message": message}).encode(),
        )

    scheduler.respond = keyless
    with Client(scheduler.url, "") as client, pytest.raises(ClientError) as unconfigured:
        client.get("d1")
    assert unconfigured.value.message == (
        "no API key configured: set DISPATCH_API_KEY for the scheduler"
    )


def test_list_sends_its_time_range_in_utc(scheduler: Scheduler) -> None:
    scheduler.respond = lambda path, body: proto(calls_pb2.ListResponse())
    since = datetime.datetime(
        2026, 12, 5, 19, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    until = datetime.datetime(2026, 12, 5, 18, 30, 0, 500_000)  # naive: UTC
    with Client(scheduler.url, "k") as client:
        assert client.list_page(created_after=since, created_before=until).calls == []
        assert list(client.list(function="f")) == []
    timed, plain = scheduler.requests(LIST, calls_pb2.ListRequest)
    assert timed.created_after.ToDatetime(datetime.timezone.utc) == since  # type: ignore[attr-defined]
    assert timed.created_before.ToDatetime() == until  # type: ignore[attr-defined]
    assert not plain.HasField("created_after")
    assert not plain.HasField("created_before")
