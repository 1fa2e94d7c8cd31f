"""Ed25519 signature checks and signing: OpenSSL through ``cryptography``, or libsodium
through PyNaCl when it is installed (``pip install 'dispatchlet[nacl]'``), which
verifies and signs in about half the time. Ed25519 signatures are deterministic: both
sign a message with a key into the same bytes.

Both accept and reject the same signatures on everything the differential tests try
(the RFC vector, tampered requests, 10,000 random keys, messages and mutated
signatures). Where they are known to differ, keys of small order (under which OpenSSL
accepts forged signatures and libsodium none), ``keys.load_public_key`` refuses the key.
``DISPATCHLET_ED25519_BACKEND=cryptography`` (or ``nacl``) picks one explicitly.
Importing PyNaCl costs about 10 ms of a cold start, paid back after a few hundred
requests: a short-lived function may be better off without it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

BACKEND_ENV = "DISPATCHLET_ED25519_BACKEND"
BACKENDS = ("cryptography", "nacl")

Check = Callable[[bytes, bytes], bool]
"""``check(signature, message)``: whether the signature verifies."""
Sign = Callable[[bytes], bytes]
"""``sign(message)``: the message's 64-byte signature."""


class VerifyingKey(Protocol):
    """What a verification key must do (``Ed25519PublicKey`` does)."""

    def verify(self, signature: bytes, data: bytes) -> None: ...


def backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else the environment's choice, else PyNaCl when it
    can be imported."""
    choice = (name or os.environ.get(BACKEND_ENV, "")).strip().lower()
    if choice and choice not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, not {choice!r}")
    return choice or _installed()


@functools.cache
def _installed() -> str:
    """PyNaCl when it can be imported, else cryptography; looked for once."""
    try:
        import nacl.bindings  # noqa: F401
    except ImportError:
        return "cryptography"
    return "nacl"


def check_for(key: VerifyingKey, name: str) -> Check:
    """The signature check of ``key`` with the backend ``name``."""
    if name == "nacl" and isinstance(key, Ed25519PublicKey):
        return _nacl_check(key.public_bytes_raw())

    def check(signature: bytes, message: bytes) -> bool:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    return check


def _nacl_check(public: bytes) -> Check:
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    def check(signature: bytes, message: bytes) -> bool:
        if len(signature) != 64:  # libsodium would read it as part of the message
            return False
        try:
            crypto_sign_open(signature + message, public)
        except BadSignatureError:
            return False
        return True

    return check


def signer_for(key: Ed25519PrivateKey, name: str) -> Sign:
    """The signing of ``key`` with the backend ``name``."""
    if name != "nacl":
        return key.sign
    from nacl.bindings import crypto_sign

    # libsodium's secret key: the seed, then the public key.
    secret = key.private_bytes_raw() + key.public_key().public_bytes_raw()

    def sign(message: bytes) -> bytes:
        return crypto_sign(message, secret)[:64]  # the signature, then the message

    return sign
