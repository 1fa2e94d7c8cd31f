"""The local HTTP server (waitress) behind ``dispatchlet serve`` and ``call --app``:
loading the APP, the settings that bound clients, serving in a background thread."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..adapters.wsgi import wsgi_app
from ..core.endpoint import Endpoint
from .app_loader import AppLoadError, load_endpoint, user_traceback
from .errors import CommandError

DEFAULT_ENDPOINT_URL = "http://127.0.0.1:8000"
"""Where ``dispatchlet serve`` listens by default, and where ``call`` sends by default."""

CHANNEL_TIMEOUT = 10
"""Seconds a connection may send nothing, with no request running, before waitress
closes it: a client that stalls mid-request frees its connection in seconds."""
CLEANUP_INTERVAL = 2
"""How often waitress looks for such connections (its default, 30 s, would keep one open
for up to 40 s)."""


def load_app(app: str) -> Endpoint:
    """The Endpoint APP names; a failure shows the app's own traceback, then one line."""
    try:
        return load_endpoint(app)
    except AppLoadError as exc:
        trace = user_traceback(exc)
        if trace:
            print(trace, end="", file=sys.stderr)
        raise CommandError(str(exc)) from None


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


@contextmanager
def serving(endpoint: Endpoint, *, port: int = 0) -> Iterator[str]:
    """Serve ``endpoint`` on loopback (``port``, or a free one) in a background thread;
    yield its URL."""
    from waitress import create_server

    server = create_server(
        wsgi_app(endpoint),
        host="127.0.0.1",
        port=port,
        threads=2,
        asyncore_loop_timeout=0.05,
        **waitress_options(endpoint),
    )
    host, port_number = listening(server)[0]
    thread = threading.Thread(target=server.run, name="dispatchlet-server", daemon=True)
    thread.start()
    try:
        yield local_url(host, port_number)
    finally:
        # Functions still running (the call timed out) are not waited for: their
        # connections are cancelled, so what they answer later is dropped quietly, and
        # their threads, daemons, end when they return or when the process exits. The
        # sockets are closed by the server's own loop thread: closed from here, they
        # could vanish under its select().
        def stop() -> None:
            for channel in list(server.active_channels.values()):
                channel.cancel()
            server.close()

        server.trigger.pull_trigger(stop)
        server.task_dispatcher.set_thread_count(0)
        thread.join(timeout=5)


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
