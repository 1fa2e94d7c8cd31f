"""The client's HTTP connection: ``http.client``'s, with each request written at once.

``http.client`` sends a request's head and its body in two writes: two TCP segments,
and two reads for the scheduler, whose server has the head first and then waits a turn
for the body; with Nagle's algorithm on the client's socket, the body may even wait for
the acknowledgement of the head. A body given as bytes is written here with its head,
in one write: the same bytes on the wire.
"""

from __future__ import annotations

import http.client
from typing import Any


class Connection(http.client.HTTPConnection):
    """An ``HTTPConnection`` that writes a request's head and bytes body at once."""

    _body: bytes | None = None

    def endheaders(self, message_body: Any = None, *, encode_chunked: bool = False) -> None:
        if not isinstance(message_body, bytes) or not message_body or encode_chunked:
            super().endheaders(message_body, encode_chunked=encode_chunked)
            return
        # The head is sent (``send``) with no body to follow: the body goes with it.
        self._body = message_body
        try:
            super().endheaders()
        finally:
            self._body = None

    def send(self, data: Any) -> None:
        body, self._body = self._body, None
        super().send(data if body is None else data + body)


class SecureConnection(Connection, http.client.HTTPSConnection):
    """The same over TLS."""
