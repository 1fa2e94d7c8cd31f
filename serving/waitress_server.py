"""Serving an Endpoint on waitress: the settings that bound what clients can hold (for
any waitress server, ``dispatchlet serve`` and the deploy launcher alike), and a loopback
server in a background thread that stops cleanly (``dispatchlet call --app`` and
``dispatchlet dev``)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..adapters.wsgi import WSGIApplication, wsgi_app
from ..core.endpoint import Endpoint

logger = logging.getLogger(__name__)

CHANNEL_TIMEOUT = 10
"""Seconds a connection may send nothing, with no request running, before waitress
closes it: a client that stalls mid-request frees its connection in seconds."""
CLEANUP_INTERVAL = 2
"""How often waitress looks for such connections (its default, 30 s, would keep one open
for up to 40 s)."""


def waitress_options(endpoint: Endpoint) -> dict[str, int]:
    """The waitress settings that bound what a client can hold, matched to ``endpoint``.

    Waitress reads a whole body before the app sees it, spooling large ones to disk:
    ``max_request_body_size`` stops it near the endpoint's own limit, with a margin for
    chunked framing (which waitress counts) so that a body just over the limit still gets
    the endpoint's 400. Headers and bodies are read by waitress's event loop, not by a
    worker thread, so a slow client holds a connection (up to ``connection_limit``), never
    a thread; ``channel_timeout`` releases one that stops sending.
    """
    return {
        "max_request_body_size": endpoint.max_body_size + 64 * 1024,
        "channel_timeout": CHANNEL_TIMEOUT,
        "cleanup_interval": CLEANUP_INTERVAL,
    }


WORKER_GRACE = 10.0
"""Seconds a worker thread not running a function may take to finish the answer it writes
when the server stops (it normally takes microseconds)."""


class _Gate:
    """The WSGI application as served: it counts the worker threads running it (under the
    task dispatcher's lock, so that one snapshot tells the threads alive from those
    inside), and once the server stops it answers 503 instead of starting a function."""

    def __init__(self, application: WSGIApplication) -> None:
        self.application = application
        self.lock = threading.Lock()  # replaced by the dispatcher's before serving
        self.inside = 0
        self.closed = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self.lock:
            if not self.closed:
                self.inside += 1
            refused = self.closed
        if refused:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"the server is stopping\n"]
        try:
            # The adapter answers a list: the function has run when this returns.
            return self.application(environ, start_response)
        finally:
            with self.lock:
                self.inside -= 1


_QUIET_QUEUE = logging.getLogger(__name__ + ".queue")
_QUIET_QUEUE.setLevel(logging.ERROR)


@contextmanager
def serving(
    endpoint: Endpoint, *, port: int = 0, application: WSGIApplication | None = None
) -> Iterator[str]:
    """Serve ``endpoint`` (through ``application``, by default its WSGI app) on loopback
    (``port``, or a free one) in a background thread; yield its URL.

    Leaving the block stops the server before it returns: its loop thread has ended and
    every socket is closed, except while functions still run (a call that timed out,
    Ctrl+C). Those are not waited for: their connections are shut down (the client sees
    the end) and their answers dropped, but the descriptors a worker thread may still
    touch (its connection, the loop's wake-up pipe) stay open until the process ends, so
    that nothing is closed under a thread still using it."""
    from waitress import create_server

    gate = _Gate(application or wsgi_app(endpoint))
    server = create_server(
        gate,
        host="127.0.0.1",
        port=port,
        threads=2,
        asyncore_loop_timeout=0.05,
        # A client gone before its answer (a call that timed out) is no error here.
        log_socket_errors=False,
        **waitress_options(endpoint),
    )
    gate.lock = server.task_dispatcher.lock
    # waitress warns "Task queue depth is 1" when a request comes before its worker
    # threads have started (a loaded machine): no news for the one local user.
    server.task_dispatcher.queue_logger = _QUIET_QUEUE
    host, port_number = listening(server)[0]
    thread = threading.Thread(target=server.run, name="dispatchlet-server", daemon=True)
    thread.start()
    try:
        yield local_url(host, port_number)
    finally:
        _stop(server, gate, thread)


def _stop(server: Any, gate: _Gate, thread: threading.Thread) -> None:
    from waitress import wasyncore

    dispatcher = server.task_dispatcher
    with dispatcher.lock:
        gate.closed = True
    # Idle workers end now, busy ones after their request. Those not running a function
    # are finishing an answer (writing it, waking the loop): they are waited for. Once the
    # gate is closed no thread enters it, so the count inside only falls.
    dispatcher.set_thread_count(0)
    deadline = time.monotonic() + WORKER_GRACE
    with dispatcher.lock:
        while len(dispatcher.threads) > gate.inside:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            dispatcher.thread_exit_cv.wait(min(remaining, 0.5))
        workers_left = bool(dispatcher.threads)

    def close() -> None:
        # In the loop thread, the only one that reads the map: empty, it ends the loop.
        # Not the wake-up pipe: this may run before pull_trigger() below has written to it.
        wasyncore.dispatcher.close(server)  # the listening socket
        for channel in list(server.active_channels.values()):
            if not workers_left:
                channel.handle_close()
                continue
            # A worker finishing a function drops its answer and wakes no loop.
            channel.connected = False
            if channel.requests:
                # Its client sees the end; the descriptor stays valid for the worker.
                with contextlib.suppress(OSError):
                    channel.socket.shutdown(socket.SHUT_RDWR)
            else:
                channel.handle_close()
        server._map.clear()

    server.trigger.pull_trigger(close)
    thread.join(timeout=WORKER_GRACE)
    if thread.is_alive():
        # Said, not raised: this runs while the command ends, maybe on its own error.
        logger.warning("the local server's loop did not stop within %g s", WORKER_GRACE)
        return
    if not workers_left:
        server.trigger.close()  # no thread is left that could write to it


WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - recognised, not bound to


def local_url(host: str, port: int) -> str:
    if host in WILDCARDS:  # listening everywhere: call it on this machine
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def listening(server: Any) -> list[tuple[str, int]]:
    # One socket gives a server with effective_host/port; several give effective_listen.
    listen = getattr(server, "effective_listen", None)
    if listen:
        return [(str(host), int(port)) for host, port in listen]
    return [(str(server.effective_host), int(server.effective_port))]
