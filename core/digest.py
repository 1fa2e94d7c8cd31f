"""RFC 9530 Content-Digest: computing and checking it in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

from . import structured_fields as sf
from .errors import PermissionDenied, Unauthenticated

# Strongest first: the one a signer uses, and the order a verifier checks in.
ALGORITHMS: dict[str, Callable[[bytes], bytes]] = {
    "sha-512": lambda body: hashlib.sha512(body).digest(),
    "sha-256": lambda body: hashlib.sha256(body).digest(),
}


def content_digest(body: bytes, algorithm: str = "sha-512") -> str:
    """The Content-Digest header value for ``body``."""
    digest = ALGORITHMS[algorithm](body)
    return f"{algorithm}=:{base64.b64encode(digest).decode('ascii')}:"


def parse_content_digest(header: str | None) -> list[tuple[str, bytes]]:
    """The digests of known algorithms in a Content-Digest value, strongest first.

    Cheap (no hashing), so a malformed header is refused before anything costly:
    ``Unauthenticated`` when the header is missing, malformed or has no algorithm we
    know (unknown ones are ignored, but never taken as a pass).
    """
    if header is None:
        raise Unauthenticated("missing Content-Digest header")
    # What a signer sends: one algorithm, canonical base64, read with string methods.
    algorithm, _, rest = header.partition("=")
    # Padding first is never canonical (Python 3.10's strict decode would read "=" as b"").
    canonical = len(rest) > 2 and rest[0] == ":" and rest[-1] == ":" and rest[1] != "="
    if algorithm in ALGORITHMS and canonical:
        try:
            return [(algorithm, base64.b64decode(rest[1:-1], validate=True))]
        except ValueError:
            pass  # the general parser says why
    try:
        members = sf.parse_dictionary(header)
    except sf.StructuredFieldError as exc:
        raise Unauthenticated(f"malformed Content-Digest header: {exc}") from None
    digests = []
    for algorithm in ALGORITHMS:
        member = members.get(algorithm)
        if member is None:
            continue
        if not isinstance(member, sf.Item) or not isinstance(member.value, bytes):
            raise Unauthenticated(f"malformed Content-Digest header: {algorithm} is not bytes")
        digests.append((algorithm, member.value))
    if not digests:
        raise Unauthenticated("Content-Digest header has no supported algorithm (sha-512, sha-256)")
    return digests


def match_content_digest(digests: list[tuple[str, bytes]], body: bytes) -> None:
    """Raise ``PermissionDenied`` unless every digest matches ``body``, compared in
    constant time. The body is hashed once per algorithm."""
    for algorithm, expected in digests:
        if not hmac.compare_digest(expected, ALGORITHMS[algorithm](body)):
            raise PermissionDenied("content digest does not match the body")


def check_content_digest(header: str | None, body: bytes) -> None:
    """Raise unless ``header`` holds a digest of ``body`` in an algorithm we know, and
    every known algorithm present matches."""
    match_content_digest(parse_content_digest(header), body)
