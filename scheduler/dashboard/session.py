"""The dashboard's sessions: a signed token in a cookie, given for an API key, and the
token against cross-site request forgery that each session's forms carry.

A token is ``<expiry>.<nonce>.<mac>``: the MAC is an HMAC-SHA256 under a secret derived
from the API key that logged in, so that every scheduler process configured with that key
accepts it (nothing is stored), and a key removed from the configuration ends the
sessions it opened. The CSRF token is an HMAC of the session's nonce under the same
secret: a page of another site cannot read it, and it changes with each session."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

COOKIE = "dispatchlet_session"
LIFETIME = 12 * 3600
"""How long a session lasts, in seconds: a working day, then the key is asked again."""
_LABEL = b"dispatchlet dashboard session\x00"


@dataclass(frozen=True)
class Session:
    """A logged-in viewer: when the session ends and its CSRF token."""

    expires_at: int
    csrf: str


def _secret(key: bytes) -> bytes:
    # A secret of its own: the key itself is never the MAC's key, nor is it in the token.
    return hashlib.sha256(_LABEL + key).digest()


def _mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def _csrf(secret: bytes, nonce: str) -> str:
    return _mac(secret, f"csrf:{nonce}")


def issue(key: bytes, now: float, lifetime: int = LIFETIME) -> tuple[str, Session]:
    """A new session's token for a viewer who gave ``key``, and the session."""
    secret = _secret(key)
    expires_at = int(now) + lifetime
    nonce = secrets.token_hex(16)
    payload = f"{expires_at}.{nonce}"
    return f"{payload}.{_mac(secret, payload)}", Session(expires_at, _csrf(secret, nonce))


def verify(token: str, keys: Sequence[bytes], now: float) -> Session | None:
    """The session of ``token`` if one of ``keys`` signed it and it has not expired."""
    expiry, _, rest = token.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (expiry.isdigit() and len(expiry) < 20 and nonce and mac) or int(expiry) <= now:
        return None
    payload = f"{expiry}.{nonce}"
    found = None
    # Every key is tried, in constant time: nothing tells which came close.
    for key in keys:
        secret = _secret(key)
        if hmac.compare_digest(_mac(secret, payload), mac):
            found = Session(int(expiry), _csrf(secret, nonce))
    return found


def key_matches(given: str, keys: Sequence[bytes]) -> bytes | None:
    """The configured key equal to ``given``, compared in constant time; None if none."""
    found = None
    for key in keys:
        if hmac.compare_digest(given.strip().encode(), key):
            found = key
    return found
