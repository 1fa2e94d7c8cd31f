"""The client writes each request, head and body, at once: one write on its socket (one
read for the scheduler's server), the same bytes as ``http.client`` would send in two."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from dispatchlet import Client
from dispatchlet.client.connection import Connection


class _Recorded:
    """A socket whose writes are recorded, each as it was given."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@contextmanager
def _server(answer: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A server that reads one request (head and ``Content-Length`` bytes of body),
    answers ``answer`` and closes; its port, and what it read (when done)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    read: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(60)
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += connection.recv(65536)
            read.append(data if len(data) == len(head) + 4 + length else head + b"\r\n\r\n" + body)
            connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], read
    finally:
        thread.join(60)
        listener.close()
        assert not thread.is_alive(), "the test server did not finish"


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("body", [b"x", b"y" * 100_000])
def test_a_request_with_a_body_is_one_write_of_the_same_bytes(body: bytes) -> None:
    with _server(ANSWER) as (port, read):
        connection = Connection("127.0.0.1", port, timeout=60)
        connection.connect()
        recorded = _Recorded(connection.sock)
        connection.sock = recorded  # type: ignore[assignment]
        connection.request("POST", "/a/b", body=body, headers={"Content-Type": "x/y"})
        answer = connection.getresponse()
        assert answer.status == 200
        assert answer.read() == b"ok"
        connection.close()
    assert len(recorded.writes) == 1
    (sent,) = recorded.writes
    assert read == [sent]
    head, _, rest = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /a/b HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head.split(b"\r\n")
    assert rest == body


def test_a_request_without_a_body_is_sent_as_before() -> None:
    with _server(ANSWER) as (port, read):
        connection = Connection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/empty", body=b"")
        answer = connection.getresponse()
        assert answer.read() == b"ok"
        connection.close()
    (sent,) = read
    assert sent.startswith(b"POST /empty HTTP/1.1\r\n")
    assert b"Content-Length: 0" in sent


def test_the_client_sends_its_calls_over_it() -> None:
    with Client("http://127.0.0.1:9") as client:
        connection = client._connect(None)
        assert isinstance(connection, Connection)
