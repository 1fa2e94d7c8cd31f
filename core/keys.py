"""Loading Ed25519 keys from PEM, base64 or the environment, and printing them.

``cryptography``'s serialization module is imported where PEM is handled, not at module
level: a key given as base64 (the usual form in an environment variable) then costs a
cold start nothing for it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import ConfigurationError

VERIFICATION_KEY_ENV = "DISPATCH_VERIFICATION_KEY"
SIGNING_KEY_ENV = "DISPATCH_SIGNING_KEY"
"""The scheduler's (or a caller's) private key, whose public half endpoints verify with."""

PublicKeyLike = str | bytes | Ed25519PublicKey
PrivateKeyLike = str | bytes | Ed25519PrivateKey

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", re.DOTALL)


def _text(value: str | bytes) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    # PEM pasted into an environment variable often carries literal "\n" sequences.
    return text.replace("\\n", "\n").strip()


def _raw(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            f"invalid Ed25519 {what} key: expected PEM or the standard base64 of 32 raw bytes"
        )
    return raw


def load_public_key(value: PublicKeyLike) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or base64 of its 32 bytes.

    A weak key is refused: a point of small order (under which OpenSSL accepts a forged
    signature for any message) or a non-canonical encoding; no key pair makes either.
    """
    key = value if isinstance(value, Ed25519PublicKey) else _parse_public_key(_text(value))
    _check_strong(key.public_bytes_raw())
    return key


def _parse_public_key(text: str) -> Ed25519PublicKey:
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError as exc:
            raise ValueError(f"invalid PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
        return key
    return Ed25519PublicKey.from_public_bytes(_raw(text, "public"))


_FIELD_PRIME = 2**255 - 19
# The encodings of the points of small order (libsodium's list), sign bit cleared.
_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def _check_strong(raw: bytes) -> None:
    unsigned = raw[:31] + bytes([raw[31] & 0x7F])
    if unsigned in _SMALL_ORDER:
        raise ValueError("weak Ed25519 public key (a point of small order): refused")
    if int.from_bytes(unsigned, "little") >= _FIELD_PRIME:
        raise ValueError("invalid Ed25519 public key: non-canonical encoding")


def load_public_keys(
    value: PublicKeyLike | Iterable[PublicKeyLike] | None,
) -> tuple[Ed25519PublicKey, ...]:
    """Every key in ``value``: one key, a list of keys (rotation), or a string holding
    several PEM blocks or several base64 keys separated by commas or white space."""
    if value is None:
        return ()
    if isinstance(value, Ed25519PublicKey):
        return (value,)
    if isinstance(value, (str, bytes)):
        text = _text(value)
        if not text:
            return ()
        blocks = [m.group(0) for m in _PEM_BLOCK.finditer(text)]
        parts = blocks or [p for p in re.split(r"[\s,]+", text) if p]
        return tuple(load_public_key(p) for p in parts)
    return tuple(k for v in value for k in load_public_keys(v))


def public_keys_from_env() -> tuple[Ed25519PublicKey, ...]:
    """The keys in ``DISPATCH_VERIFICATION_KEY``, or none when it is unset or empty;
    ``ConfigurationError`` naming the variable when it holds no valid key."""
    try:
        return load_public_keys(os.environ.get(VERIFICATION_KEY_ENV))
    except ValueError as exc:
        raise ConfigurationError(f"invalid {VERIFICATION_KEY_ENV}: {exc}") from None


def load_private_key(value: PrivateKeyLike) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or base64 of its 32-byte seed."""
    if isinstance(value, Ed25519PrivateKey):
        return value
    text = _text(value)
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
        return key
    return Ed25519PrivateKey.from_private_bytes(_raw(text, "private"))


def public_key_base64(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_pem(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def private_key_base64(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return base64.b64encode(raw).decode("ascii")


def private_key_pem(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
