"""The request body policy, for adapters that read a body from a stream (sans-IO).

The adapter asks a ``BodyReader`` how many bytes to read, reads them with its platform's
I/O, and hands back what arrived; every decision (an invalid or too large
Content-Length, a body cut short or past the limit, one that broke or stalled) is made
here, as an ``InvalidArgument`` that ``Endpoint.reject`` answers.
"""

from __future__ import annotations

from .errors import InvalidArgument


class BodyReader:
    """How much of a request body to read, and whether what arrived is the whole body.

    ``content_length`` is the header's text (or an int a framework parsed); a body
    without one is read only when ``ends_without_length`` (the server marks where a
    chunked body ends), up to ``limit`` plus one byte so that an oversized one shows.
    ``chunked`` says a Transfer-Encoding was sent: without an end the server marks, such
    a body is refused rather than read forever or ignored.
    """

    __slots__ = ("length", "limit", "size")

    def __init__(
        self,
        limit: int,
        content_length: str | int | None,
        *,
        ends_without_length: bool,
        chunked: bool = False,
    ) -> None:
        self.limit = limit
        self.length = _length(content_length)
        if self.length is not None:
            if self.length > limit:
                raise oversized(limit)
            self.size = self.length
        elif ends_without_length:
            self.size = limit + 1
        elif chunked:
            raise InvalidArgument("this server cannot read a body without Content-Length")
        else:
            self.size = 0  # PEP 3333: with no length, the stream may never end

    def complete(self, body: bytes) -> bytes:
        """``body`` if it is the whole body and within the limit."""
        if self.length is not None and len(body) < self.length:
            raise InvalidArgument(
                f"incomplete request body: {len(body)} of {self.length} bytes arrived"
            )
        if len(body) > self.limit:
            raise oversized(self.limit)
        return body

    @staticmethod
    def stalled() -> InvalidArgument:
        """The error for a body that stopped arriving."""
        return InvalidArgument("incomplete request body: it stopped arriving (timed out)")

    @staticmethod
    def broken(exc: BaseException) -> InvalidArgument:
        """The error for a body whose reading failed (a reset connection, bad chunking)."""
        return InvalidArgument(f"incomplete request body ({type(exc).__name__})")


def oversized(limit: int) -> InvalidArgument:
    """The error for a body over ``limit`` bytes."""
    return InvalidArgument(f"request body exceeds {limit} bytes")


def _length(value: str | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    if not text:
        return None
    # Digits only: int() would also take "+1", "1_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgument(f"invalid Content-Length {text[:40]!r}")
    return int(text)
