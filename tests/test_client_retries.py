"""The client sends a request again when the scheduler answers 503 or no answer comes
(connection refused or reset), with the same request id, honouring Retry-After, within
its bounds; it never sends again a request answered otherwise (4xx, 500). Against a
loopback stub that counts what it is sent, and a real scheduler shedding connections."""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dispatchlet import Client, ClientError
from dispatchlet.client.retries import RETRY_AFTER_CAP, Backoff
from dispatchlet.proto.dispatch.sdk.v1 import dispatch_pb2
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from scheduler_harness import call
from test_dev_loop import closed_port
from test_scheduler_connections import address, connect, read_answer, sockets, start_scheduler

WAIT = 60.0
DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"
WAIT_RPC = "/dispatchlet.scheduler.v1.CallService/Wait"
UNAVAILABLE = b'{"code": "unavailable", "message": "busy; try again"}'


@dataclass
class Reply:
    """What the stub answers one request with (``status`` 0: the connection reset; -1:
    an answer cut short, the connection closed before the body it announced)."""

    status: int
    retry_after: str | None = None
    body: bytes = UNAVAILABLE
    content_type: str = "application/json"


@dataclass
class Script:
    """The stub's answers in turn, then ``then`` to every request past them; what it
    was sent: each request's path, Idempotency-Key and arrival (monotonic)."""

    replies: list[Reply]
    then: Reply | None = None
    seen: list[tuple[str, str | None, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, path: str, request_id: str | None) -> Reply:
        with self.lock:
            self.seen.append((path, request_id, time.monotonic()))
            if self.replies:
                return self.replies.pop(0)
        if self.then is not None:
            return self.then
        return Reply(200, body=ok_for(path), content_type="application/proto")


def ok_for(path: str) -> bytes:
    if path == WAIT_RPC:
        info = calls_pb2.CallInfo(dispatch_id="d1", done=True, state="done")
        return calls_pb2.WaitResponse(call=info).SerializeToString()
    return dispatch_pb2.DispatchResponse(dispatch_ids=["d1"]).SerializeToString()


def handler(script: Script) -> type[http.server.BaseHTTPRequestHandler]:
    class Stub(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            reply = script.next(self.path, self.headers.get("Idempotency-Key"))
            if reply.status == 0:  # read whole, then reset: the answer is lost
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.close_connection = True
                return
            if reply.status == -1:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut")
                self.close_connection = True
                return
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            if reply.retry_after is not None:
                self.send_header("Retry-After", reply.retry_after)
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, *args: object) -> None:
            pass

    return Stub


@contextlib.contextmanager
def stub(script: Script, port: int = 0) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=WAIT)


class Retried(logging.Handler):
    """Set once the client logs that it will send a request again."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.event = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "trying again" in record.getMessage():
            self.messages.append(record.getMessage())
            self.event.set()


@pytest.fixture
def retried() -> Iterator[Retried]:
    seen = Retried()
    logger = logging.getLogger("dispatchlet.client")
    level = logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)


def test_a_dispatch_answered_503_is_sent_again_with_its_request_id() -> None:
    script = Script([Reply(503, "0"), Reply(503, "0")])
    with stub(script) as url, Client(url, "k") as client:
        assert client.dispatch([call("a")]) == ["d1"]
    ids = [request_id for _, request_id, _ in script.seen]
    assert len(ids) == 3
    assert ids[0] is not None
    assert ids == [ids[0]] * 3


def test_a_dispatch_whose_answer_is_lost_twice_is_sent_again_with_its_request_id() -> None:
    script = Script([Reply(0), Reply(0)])
    with stub(script) as url, Client(url, "k") as client:
        assert client.dispatch([call("a")]) == ["d1"]
    ids = [request_id for _, request_id, _ in script.seen]
    assert len(ids) == 3
    assert ids[0] is not None
    assert ids == [ids[0]] * 3


def test_an_answer_cut_short_is_no_answer_and_the_request_is_sent_again() -> None:
    script = Script([Reply(-1)])
    with stub(script) as url, Client(url, "k") as client:
        assert client.dispatch([call("a")]) == ["d1"]
    ids = [request_id for _, request_id, _ in script.seen]
    assert len(ids) == 2
    assert ids[0] is not None
    assert ids[0] == ids[1]


def test_an_answer_cut_short_every_time_is_a_client_error() -> None:
    script = Script([], then=Reply(-1))
    with (
        stub(script) as url,
        Client(url, "k", retries=1) as client,
        pytest.raises(ClientError) as refused,
    ):
        client.dispatch([call("a")])
    assert refused.value.code == "unavailable"
    assert "broken answer" in refused.value.message


def test_the_pause_asked_by_retry_after_is_kept() -> None:
    script = Script([Reply(503, "1")])
    with stub(script) as url, Client(url, "k") as client:
        assert client.dispatch([call("a")]) == ["d1"]
    (_, _, refused), (_, _, resent) = script.seen
    assert resent - refused >= 1.0


@pytest.mark.parametrize("status", [400, 409, 429, 500])
def test_other_errors_are_not_sent_again(status: int) -> None:
    body = b'{"code": "some_code", "message": "no"}'
    script = Script([], then=Reply(status, "0", body))
    with stub(script) as url, Client(url, "k") as client, pytest.raises(ClientError) as refused:
        client.dispatch([call("a")])
    assert refused.value.http_status == status
    assert refused.value.message == "no"
    assert len(script.seen) == 1


def test_resends_stop_after_the_retries_with_the_last_error() -> None:
    script = Script([], then=Reply(503, "0"))
    with (
        stub(script) as url,
        Client(url, "k", retries=2) as client,
        pytest.raises(ClientError) as unavailable,
    ):
        client.dispatch([call("a")])
    assert len(script.seen) == 3
    assert unavailable.value.code == "unavailable"
    assert unavailable.value.http_status == 503
    assert unavailable.value.message.startswith("busy; try again (3 tries in ")


def test_no_resend_waits_past_the_retry_timeout() -> None:
    # Retry-After asks for an hour, capped to 10 s: past the 5 s bound, so no resend.
    script = Script([], then=Reply(503, "3600"))
    with (
        stub(script) as url,
        Client(url, "k", retry_timeout=RETRY_AFTER_CAP / 2) as client,
        pytest.raises(ClientError) as unavailable,
    ):
        client.dispatch([call("a")])
    assert len(script.seen) == 1
    assert unavailable.value.http_status == 503


def test_retries_0_sends_a_request_once() -> None:
    script = Script([Reply(503, "0")])
    with stub(script) as url, Client(url, "k", retries=0) as client:
        with pytest.raises(ClientError):
            client.dispatch([call("a")])
        assert client.dispatch([call("a")]) == ["d1"]
    assert len(script.seen) == 2


def test_a_wait_is_sent_again_within_its_own_timeout() -> None:
    script = Script([Reply(503, "0")])
    with stub(script) as url, Client(url, "k") as client:
        assert client.wait("d1").done
    assert [path for path, _, _ in script.seen] == [WAIT_RPC, WAIT_RPC]
    # A pause that would end past the wait's timeout is not waited: the error comes.
    script = Script([], then=Reply(503, "5"))
    with stub(script) as url, Client(url, "k") as client, pytest.raises(ClientError):
        client.wait("d1", timeout=1)
    assert len(script.seen) == 1


def test_a_refused_connection_is_tried_again_until_the_scheduler_is_up(
    retried: Retried,
) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    script = Script([])
    with Client(url, "k", retries=20, retry_timeout=WAIT) as client:
        answer: list[list[str]] = []
        thread = threading.Thread(target=lambda: answer.append(client.dispatch([call("a")])))
        thread.start()
        assert retried.event.wait(WAIT), "the client never tried again"
        assert "cannot reach the scheduler" in retried.messages[0]
        with stub(script, port):  # a scheduler (re)started where the client points
            thread.join(WAIT)
            assert not thread.is_alive(), "the dispatch never ended"
    assert answer == [["d1"]]
    assert len(script.seen) == 1


def test_bad_retry_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="retries"):
        Client("http://127.0.0.1:9", retries=-1)
    with pytest.raises(ValueError, match="retry_timeout"):
        Client("http://127.0.0.1:9", retry_timeout=float("nan"))


def test_pauses_double_up_to_the_cap_with_jitter_and_honour_retry_after() -> None:
    backoff = Backoff(base=0.5, cap=5.0)
    longest = [backoff.pause(retry, rng=lambda: 0.0) for retry in range(1, 7)]
    assert longest == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    shortest = [backoff.pause(retry, rng=lambda: 1.0) for retry in range(1, 7)]
    assert shortest == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5]
    assert backoff.pause(1, retry_after=3.0, rng=lambda: 0.0) == 3.0
    assert backoff.pause(1, retry_after=3600.0) == RETRY_AFTER_CAP
    assert backoff.pause(4, retry_after=0.0, rng=lambda: 0.0) == 4.0


@pytest.mark.slow
def test_a_dispatch_shed_by_a_full_scheduler_is_stored_once_when_room_comes(
    tmp_path: Path, retried: Retried
) -> None:
    process = start_scheduler(tmp_path, "--max-connections", "2")
    try:
        host, port = address(process)
        url = f"http://{host}:{port}"
        with sockets() as held:
            for _ in range(2):
                sock = connect((host, port))
                held.append(sock)
                # One request answered (the server has read from it), then half a head:
                # a busy connection, which no newcomer may take the place of.
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(sock).startswith(b"HTTP/1.1 200")
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            client = Client(url, retries=20, retry_timeout=WAIT)
            answer: list[list[str]] = []
            work = call("f", endpoint=f"http://127.0.0.1:{closed_port()}")
            thread = threading.Thread(target=lambda: answer.append(client.dispatch([work])))
            thread.start()
            assert retried.event.wait(WAIT), "the client was never refused"
            assert "answered 503" in retried.messages[0]
        # The held connections closed: room for the client's next try.
        thread.join(WAIT)
        assert not thread.is_alive(), "the dispatch never ended"
        ((dispatch_id,),) = answer
        with client:
            assert [info.dispatch_id for info in client.list()] == [dispatch_id]
    finally:
        process.stop()


SEND = "/dispatchlet.scheduler.v1.CallService/Send"


def test_a_message_whose_answer_is_lost_is_not_sent_twice() -> None:
    """A Send may have been handled when its connection resets: sent again, the workflow
    could receive the message twice. A 503 (nothing was done) is sent again."""
    delivered = calls_pb2.SendResponse(delivered=True).SerializeToString()
    answered = Reply(200, body=delivered, content_type="application/proto")
    script = Script([Reply(0)], then=answered)
    with stub(script) as url, Client(url, "k") as client:
        with pytest.raises(ClientError) as raised:
            client.send("d1", "approval", {"ok": True})
        assert raised.value.code == "unavailable"
        assert "is not sent again" in raised.value.message
        assert [path for path, _, _ in script.seen] == [SEND]
        # A kept-alive connection the server closed meanwhile is no reason to doubt:
        # the client opens a fresh one for each message.
        assert client.send("d1", "approval", True) is True
        assert client.send("d1", "approval", False) is True
    busy = Script([Reply(503, "0")], then=answered)
    with stub(busy) as url, Client(url, "k") as client:
        assert client.send("d1", "approval", True) is True
    assert [path for path, _, _ in busy.seen] == [SEND, SEND]
