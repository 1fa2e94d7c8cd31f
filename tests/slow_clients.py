"""Slow clients for tests that attack a server's connections: connections that trickle
their request heads a header line at a time and never send the end (slowloris), and a
wait until a server has accepted them (Linux's /proc/net/tcp)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

ESTABLISHED = "01"
LISTEN = "0A"


class Trickle:
    """Connections that each send a header line every ``interval`` seconds."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self, where: tuple[str, int], start: bytes, timeout: float = 30.0) -> None:
        """A new connection to ``where`` that sends ``start`` (a request line, and maybe
        some headers), then trickles."""
        sock = socket.create_connection(where, timeout=timeout)
        sock.sendall(start)
        self.add(sock)

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)

    def run(self) -> None:
        number = 0
        while not self.stopped.wait(self.interval):
            number += 1
            with self.lock:
                held = list(self.sockets)
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.sendall(f"X-Slow-{number}: 1\r\n".encode())

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


def tcp_sockets() -> list[tuple[int, int, str, int]]:
    """Every TCP socket of this machine: local port, remote port, state, and the bytes
    received but not read (for a listening socket: connections not accepted yet)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
                unread = int(queues.split(":")[1], 16)
                found.append((int(local[-4:], 16), int(remote[-4:], 16), state, unread))
    return found


def accepted(port: int, clients: list[socket.socket]) -> bool:
    """Whether the server listening on ``port`` has accepted every one of ``clients``:
    each has its server-side end, and none is left in the listening socket's queue."""
    ports = {sock.getsockname()[1] for sock in clients}
    sockets = tcp_sockets()
    ends = {remote for local, remote, state, _ in sockets if local == port and state == ESTABLISHED}
    waiting = sum(
        unread for local, _, state, unread in sockets if local == port and state == LISTEN
    )
    return ports <= ends and waiting == 0


def wait_until_accepted(port: int, clients: list[socket.socket], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not accepted(port, clients):
        assert time.monotonic() < deadline, (
            f"the server on port {port} did not accept {len(clients)} connections "
            f"within {timeout:g} s"
        )
        time.sleep(0.05)
