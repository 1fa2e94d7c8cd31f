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


def check_content_digest(header: str | None, body: bytes) -> None:
    """Raise unless ``header`` holds a digest of ``body`` in an algorithm we know.

    Every known algorithm present must match; unknown ones are ignored, but a header
    with none we know is refused, never passed.
    """
    if header is None:
        raise Unauthenticated("missing Content-Digest header")
    # What a signer sends: one algorithm, canonical base64. Compared as text, that is
    # exact; anything else (several algorithms, other padding) is parsed below.
    algorithm = header.partition("=")[0]
    compute = ALGORITHMS.get(algorithm)
    if compute is not None and header.isascii():
        expected = f"{algorithm}=:{base64.b64encode(compute(body)).decode()}:"
        if hmac.compare_digest(header, expected):
            return
    try:
        members = sf.parse_dictionary(header)
    except sf.StructuredFieldError as exc:
        raise Unauthenticated(f"malformed Content-Digest header: {exc}") from None
    checked = False
    for algorithm, compute in ALGORITHMS.items():
        member = members.get(algorithm)
        if member is None:
            continue
        if not isinstance(member, sf.Item) or not isinstance(member.value, bytes):
            raise Unauthenticated(f"malformed Content-Digest header: {algorithm} is not bytes")
        if not hmac.compare_digest(member.value, compute(body)):
            raise PermissionDenied("content digest does not match the body")
        checked = True
    if not checked:
        raise Unauthenticated("Content-Digest header has no supported algorithm (sha-512, sha-256)")
