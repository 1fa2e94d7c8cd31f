"""The scheduler's connections to endpoints, seen from a Run request's outcome: an
endpoint's answer read in every shape HTTP/1.1 allows (a length, chunks, until the
connection closes, after interim answers), connections kept open and used again, one the
endpoint closed meanwhile replaced without a failed attempt, and anything that is not an
answer an outcome that says so, never an exception or a hang."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dispatchlet.core.http import Request
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler import endpoint_connections
from dispatchlet.scheduler.endpoint_connections import Connections, Target
from dispatchlet.scheduler.http_caller import HttpCaller, Outcome, _wire
from google.protobuf import wrappers_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WAIT = 30.0
CLOSE = b""
"""In a script: close the connection (after the answer before it, if any, else on
reading a request instead of answering it)."""


def run_response(text: str) -> bytes:
    response = function_pb2.RunResponse(status=Status.OK.value)
    response.exit.result.output.Pack(wrappers_pb2.StringValue(value=text))
    return response.SerializeToString()


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/proto", *extra]
    if not any(line.lower().startswith("transfer-encoding") for line in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    return ok(b"", "Transfer-Encoding: chunked") + chunks + b"0\r\n\r\n"


def content_length(head: bytes) -> int:
    """A request head's Content-Length (the caller always sends one)."""
    return next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )


class Scripted:
    """A loopback server on a thread of its own: it reads each request whole, then sends
    the next answer of its script (see ``CLOSE``); a connection with nothing left to
    answer is closed."""

    def __init__(self, script: list[bytes]) -> None:
        self.script = list(script)
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = threading.Event()
        """Set whenever the server closes a connection (cleared by the test)."""
        self.may_close = threading.Event()
        """What a ``CLOSE`` after an answer waits for (set from the start: at once)."""
        self.may_close.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(WAIT)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = False
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            if self._stop:
                connection.close()
                return
            self.connections += 1
            with connection:
                connection.settimeout(WAIT)
                self._answer(connection)
            self.closed.set()

    def _answer(self, connection: socket.socket) -> None:
        pending = b""
        while self.script:
            while b"\r\n\r\n" not in pending:
                data = connection.recv(65536)
                if not data:
                    return
                pending += data
            head, _, pending = pending.partition(b"\r\n\r\n")
            length = content_length(head)
            while len(pending) < length:
                pending += connection.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + pending[:length])
            pending = pending[length:]
            answer = self.script.pop(0)
            if answer == CLOSE:
                return
            connection.sendall(answer)
            if self.script and self.script[0] == CLOSE:
                self.script.pop(0)
                self.may_close.wait(WAIT)
                return

    def stop(self) -> None:
        self._stop = True
        # A connection wakes the accept (closing the socket would not).
        with contextlib.suppress(OSError):
            socket.create_connection(self._listener.getsockname(), timeout=WAIT).close()
        self._thread.join(WAIT)
        self._listener.close()


@contextmanager
def scripted(script: list[bytes]) -> Iterator[Scripted]:
    server = Scripted(script)
    try:
        yield server
    finally:
        server.stop()


def runs(url: str, count: int, *, timeout: float = WAIT) -> list[Outcome]:
    """``count`` Run requests to ``url`` one after the other, from one caller."""

    async def go() -> list[Outcome]:
        async with HttpCaller(None, insecure=True) as caller:
            request = function_pb2.RunRequest(function="f")
            return [await caller.run(url, request, timeout=timeout) for _ in range(count)]

    return asyncio.run(go())


def output(outcome: Outcome) -> str:
    assert outcome.status is Status.OK, outcome
    assert outcome.response is not None
    value = wrappers_pb2.StringValue()
    outcome.response.exit.result.output.Unpack(value)
    return value.value


def test_connections_are_kept_open_and_used_again() -> None:
    answers = [ok(run_response(f"r{n}")) for n in range(3)]
    with scripted(answers) as server:
        outcomes = runs(server.url, 3)
    assert [output(o) for o in outcomes] == ["r0", "r1", "r2"]
    assert server.connections == 1
    request = server.requests[0]
    assert request.startswith(b"POST /dispatch.sdk.v1.FunctionService/Run HTTP/1.1\r\n")
    assert f"\r\nHost: {server.url.removeprefix('http://')}\r\n".encode() in request
    assert request.endswith(function_pb2.RunRequest(function="f").SerializeToString())


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_a_chunked_answer_is_read_whole(size: int) -> None:
    with scripted([chunked(run_response("chunks" * 50), size)] * 2) as server:
        outcomes = runs(server.url, 2)
    assert [output(o) for o in outcomes] == ["chunks" * 50] * 2
    assert server.connections == 1


def test_an_answer_that_ends_with_its_connection_is_read_whole_and_not_kept() -> None:
    body = run_response("until the end")
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/proto\r\n\r\n" + body
    with scripted([answer, CLOSE, answer]) as server:
        # The server closes after the first answer: that is where its body ends.
        outcomes = runs(server.url, 2)
    assert [output(o) for o in outcomes] == ["until the end"] * 2
    assert server.connections == 2


def test_interim_answers_are_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    with scripted([interim + ok(run_response("final"))]) as server:
        (outcome,) = runs(server.url, 1)
    assert output(outcome) == "final"


def closed_under(seen: bool) -> list[Outcome]:
    """Two Run requests, the endpoint closing the first one's connection after its
    answer; the second sent once the caller's loop has ``seen`` the close, or before."""
    with scripted([ok(run_response("a")), CLOSE, ok(run_response("b"))]) as server:
        # Unseen: the server closes only once the loop is blocked, below.
        if not seen:
            server.may_close.clear()

        async def go() -> list[Outcome]:
            async with HttpCaller(None, insecure=True) as caller:
                request = function_pb2.RunRequest(function="f")
                first = await caller.run(server.url, request, timeout=WAIT)
                (kept,) = [c for idle in caller._connections._idle.values() for c in idle]
                if seen:
                    for _ in range(int(WAIT / 0.01)):
                        if not kept.usable():
                            break
                        await asyncio.sleep(0.01)
                    assert not kept.usable()
                else:
                    # Blocking the loop: the close reaches the socket, not the loop.
                    server.may_close.set()
                    assert server.closed.wait(WAIT)
                    assert kept.usable(), "the loop has seen the close"
                return [first, await caller.run(server.url, request, timeout=WAIT)]

        outcomes = asyncio.run(go())
    assert server.connections == 2
    return outcomes


def test_a_connection_the_endpoint_closed_is_replaced() -> None:
    """The endpoint closes a kept connection (its keep-alive timeout): the next request
    goes on a new one."""
    assert [output(o) for o in closed_under(seen=True)] == ["a", "b"]


def test_a_connection_the_endpoint_closed_unseen_is_not_used() -> None:
    """The close has reached the caller's socket, not yet its event loop (the race of
    every keep-alive client): the connection is found closed before the request is
    written on it, and the request goes on a new one (no failed attempt, no retry)."""
    assert [output(o) for o in closed_under(seen=False)] == ["a", "b"]


@pytest.mark.parametrize(
    ("answer", "status", "says"),
    [
        (b"garbage\r\n\r\n", Status.INVALID_RESPONSE, "not valid HTTP/1.1"),
        (
            b"HTTP/1.1 200 OK\r\nX: " + b"y" * 100_000 + b"\r\n\r\n",
            Status.INVALID_RESPONSE,
            "head over",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", Status.TCP_ERROR, "closed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Status.INVALID_RESPONSE, ""),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", Status.INVALID_RESPONSE, ""),
        (
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\n",
            Status.TEMPORARY_ERROR,
            "503",
        ),
    ],
)
def test_what_is_not_a_good_answer_is_an_outcome_that_says_so(
    answer: bytes, status: Status, says: str
) -> None:
    with scripted([answer]) as server:
        (outcome,) = runs(server.url, 1)
    assert outcome.status is status, outcome
    assert says in outcome.message
    if status is Status.TEMPORARY_ERROR:
        assert outcome.retry_after == 7


def test_a_request_cut_short_by_its_timeout_leaves_no_connection_behind() -> None:
    """An answer that does not come in time: TIMEOUT, and that connection is closed (its
    late answer could be taken for the next request's)."""
    late = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"  # and never the body
    with scripted([late, ok(run_response("next"))]) as server:
        outcomes = runs(server.url, 2, timeout=0.5)
    assert outcomes[0].status is Status.TIMEOUT
    assert output(outcomes[1]) == "next"
    assert server.connections == 2


def test_an_unused_connection_is_closed_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint_connections, "IDLE_SECONDS", 0.05)
    # A second answer in the script: the server waits for a request it never gets.
    with scripted([ok(run_response("a")), ok(run_response("b"))]) as server:

        async def go() -> None:
            async with HttpCaller(None, insecure=True) as caller:
                request = function_pb2.RunRequest(function="f")
                output(await caller.run(server.url, request, timeout=WAIT))
                server.closed.clear()
                # The server waits for a next request: only the caller's close ends it.
                assert await asyncio.to_thread(server.closed.wait, WAIT)
                assert caller._connections._idle == {}

        asyncio.run(go())


class KeepAliveServer:
    """A threaded loopback server answering every Run request on a connection kept open,
    counting the connections open now."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self.changed:
                self.open += 1
                self.most_open = max(self.most_open, self.open)
                self.accepted += 1
                self.changed.notify_all()
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        pending = b""
        with connection:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = connection.recv(65536)
                    if not data:
                        with self.changed:
                            self.open -= 1
                            self.changed.notify_all()
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                pending = pending[content_length(head) :]  # the body came with its head
                connection.sendall(ok(run_response("done")))

    def wait_open(self, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.open == count, WAIT)

    def close(self) -> None:
        self._listener.close()


def test_connections_left_by_a_burst_are_closed_soon_but_the_last_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Six calls at once open six connections; once unused, all but the two used last
    are closed soon (an endpoint's server pays for every connection it holds), and
    those two serve the next calls."""
    monkeypatch.setattr(endpoint_connections, "SPARE_IDLE", 2)
    monkeypatch.setattr(endpoint_connections, "SURPLUS_SECONDS", 0.05)
    monkeypatch.setattr(endpoint_connections, "IDLE_SECONDS", 3600.0)  # not in this test
    server = KeepAliveServer()

    async def go() -> None:
        async with HttpCaller(None, insecure=True) as caller:
            request = function_pb2.RunRequest(function="f")
            burst = [caller.run(server.url, request, timeout=WAIT) for _ in range(6)]
            for outcome in await asyncio.gather(*burst):
                assert output(outcome) == "done"
            assert server.accepted == 6
            (idle,) = caller._connections._idle.values()
            last_used = idle[-2:]
            assert await asyncio.to_thread(server.wait_open, 2)
            assert list(caller._connections._idle.values()) == [last_used]
            for _ in range(3):
                assert output(await caller.run(server.url, request, timeout=WAIT)) == "done"
            assert server.accepted == 6

    try:
        asyncio.run(go())
    finally:
        server.close()


def test_requests_past_the_connections_allowed_wait_for_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twelve calls at once on three connections: a server leaves a connection past its
    own limit unaccepted, and its request unread, until another of its connections ends."""
    monkeypatch.setattr(endpoint_connections, "MAX_CONNECTIONS", 3)
    server = KeepAliveServer()

    async def go() -> None:
        async with HttpCaller(None, insecure=True) as caller:
            request = function_pb2.RunRequest(function="f")
            burst = [caller.run(server.url, request, timeout=WAIT) for _ in range(12)]
            assert [output(o) for o in await asyncio.gather(*burst)] == ["done"] * 12
            assert caller._connections._busy == {}  # every place given back
        assert server.most_open == 3
        assert server.accepted == 3

    try:
        asyncio.run(go())
    finally:
        server.close()


def test_a_request_cancelled_while_it_waits_for_a_connection_takes_no_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(endpoint_connections, "MAX_CONNECTIONS", 1)
    wire = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"

    async def go() -> None:
        release = asyncio.Event()
        connected = 0

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connected
            connected += 1
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while await reader.readuntil(b"\r\n\r\n"):
                    await release.wait()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        target = Target("http", "127.0.0.1", server.sockets[0].getsockname()[1])
        connections = Connections(connect_timeout=WAIT)
        try:
            first = asyncio.create_task(connections.exchange(target, wire, lambda s, h: 100))
            waiting = asyncio.create_task(connections.exchange(target, wire, lambda s, h: 100))

            async def queued() -> None:
                while not connections._waiting.get(target):
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(queued(), WAIT)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            release.set()
            assert bytes((await first).body) == b"ok"
            after = await asyncio.wait_for(
                connections.exchange(target, wire, lambda s, h: 100), WAIT
            )
            assert bytes(after.body) == b"ok"
            assert connected == 1
            assert connections._busy == {}
            assert connections._waiting == {}
        finally:
            await connections.close()
            server.close()

    asyncio.run(go())


def test_a_refused_connection_is_a_tcp_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    (outcome,) = runs(f"http://127.0.0.1:{port}", 1)
    assert outcome.status is Status.TCP_ERROR
    assert outcome.error_type == "ConnectionRefusedError"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answer=st.binary(max_size=300)
    | st.builds(
        lambda head, body: head + b"\r\n\r\n" + body,
        st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.0 500 x"]).flatmap(
            lambda status: st.lists(st.binary(max_size=40), max_size=4).map(
                lambda lines: b"\r\n".join([status, *lines])
            )
        ),
        st.binary(max_size=200),
    )
)
def test_any_bytes_for_an_answer_make_an_outcome(answer: bytes) -> None:
    with scripted([answer]) as server:
        (outcome,) = runs(server.url, 1, timeout=5.0)
    assert isinstance(outcome.status, Status)


def test_requests_at_once_to_one_endpoint_each_have_a_connection() -> None:
    async def go(port: int) -> list[str]:
        connections = Connections(connect_timeout=WAIT)
        target = Target("http", "127.0.0.1", port)
        wire = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        try:
            got = await asyncio.gather(
                *(connections.exchange(target, wire, lambda s, h: 1000) for _ in range(2))
            )
        finally:
            await connections.close()
        return [bytes(answer.body).decode() for answer in got]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)

        def serve() -> None:
            # Both connections open before either is answered.
            accepted = [listener.accept()[0] for _ in range(2)]
            for n, connection in enumerate(accepted):
                with connection:
                    connection.recv(65536)
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        bodies = asyncio.run(go(listener.getsockname()[1]))
        thread.join(WAIT)
    assert sorted(bodies) == ["0", "1"]


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for the host ``name``, signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls_runs(certificate: tuple[Path, Path], host: str, count: int) -> tuple[list[Outcome], int]:
    """``count`` Run requests over TLS to a loopback server with ``certificate``, as
    ``https://host:port``; their outcomes, and how many connections the server had."""
    body = run_response("over TLS")
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(content_length(head))
                writer.write(ok(body))
                await writer.drain()
        writer.close()

    async def go() -> list[Outcome]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            async with HttpCaller(None, insecure=True) as caller:
                request = function_pb2.RunRequest(function="f")
                url = f"https://{host}:{port}"
                return [await caller.run(url, request, timeout=WAIT) for _ in range(count)]
        finally:
            server.close()

    return asyncio.run(go()), connections


def test_an_https_endpoint_is_verified_and_its_connection_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its certificate is checked against the trusted ones (here the test's own, through
    OpenSSL's SSL_CERT_FILE) and the host's name; the connection is used again (TLS's
    own messages while it is idle, as session tickets, do not make it look closed)."""
    certificate = self_signed(tmp_path, "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    outcomes, connections = tls_runs(certificate, "localhost", 3)
    assert [output(o) for o in outcomes] == ["over TLS"] * 3
    assert connections == 1


@pytest.mark.parametrize("case", ["untrusted", "another name"])
def test_an_https_endpoint_whose_certificate_does_not_check_out_is_a_tls_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    trusted = self_signed(tmp_path, "localhost")
    named = self_signed(tmp_path, "other.test")
    (tmp_path / "untrusted").mkdir()
    untrusted = self_signed(tmp_path / "untrusted", "localhost")  # a key of its own
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted[0] if case == "untrusted" else named[0]))
    (outcome,), _ = tls_runs(untrusted if case == "untrusted" else named, "localhost", 1)
    assert outcome.status is Status.TLS_ERROR, outcome
    assert outcome.error_type == "SSLCertVerificationError"
    assert outcome.retry_after is None


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
def test_a_header_that_would_end_its_line_early_is_never_written(value: str) -> None:
    request = Request("POST", "/run", "endpoint.test", [("traceparent", value)], b"")
    with pytest.raises(ValueError, match="line break"):
        _wire(request)
    fine = _wire(Request("POST", "/run", "endpoint.test", [("traceparent", "00-x")], b"body"))
    assert fine.endswith(b"\r\ntraceparent: 00-x\r\n\r\nbody")


@pytest.mark.slow
def test_an_endpoint_host_falling_silent_ends_the_attempt_as_a_tcp_error() -> None:
    # In namespaces of its own (silent_host.py): the host's address taken away while a
    # function runs there, then just before a request goes on a kept connection. Either
    # attempt would otherwise wait its whole timeout (60 s there; 5 minutes by default).
    # Root makes network namespaces itself; anyone else as root of a user namespace.
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    staged = subprocess.run(
        [*unshare, sys.executable, str(Path(__file__).with_name("silent_host.py"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert staged.returncode == 0, staged.stderr
    outcomes = {line["request"]: line for line in map(json.loads, staged.stdout.splitlines())}
    assert set(outcomes) == {"held", "sent"}
    for outcome in outcomes.values():
        assert outcome["status"] == "TCP_ERROR", outcome
        assert outcome["message"].startswith("nothing heard from the endpoint's host for 3 s")
