"""Serving an Endpoint on waitress (the deploy recipe's launcher,
deploy/wsgi/serve_waitress.py): the settings that bound what clients can hold."""

from __future__ import annotations

from ..core.endpoint import Endpoint

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
