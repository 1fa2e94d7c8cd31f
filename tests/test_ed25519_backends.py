"""PyNaCl (libsodium) as the verification backend accepts and rejects exactly what
cryptography (OpenSSL) does: the RFC vector, every tampering, and 10,000 random keys,
messages and mutated signatures; weak keys, where the two differ, are refused. As the
signing backend it signs into the same bytes."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from dispatchlet.core import ed25519
from dispatchlet.core.keys import load_public_key
from dispatchlet.core.signatures import Verifier

VECTOR = json.loads((Path(__file__).parent / "data" / "rfc9421-b26.json").read_text())
BACKENDS = ("cryptography", "nacl")


def checks(key: Ed25519PublicKey) -> list[ed25519.Check]:
    return [ed25519.check_for(key, name) for name in BACKENDS]


def mutated(rng: random.Random, signature: bytes) -> bytes:
    """The signature unchanged, or changed in one of the ways an attacker might."""
    kind = rng.randrange(8)
    data = bytearray(signature)
    if kind == 1:  # one bit
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    elif kind == 2:  # one byte
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 3:  # R or S replaced
        half = rng.randrange(2) * 32
        data[half : half + 32] = rng.randbytes(32)
    elif kind == 4:  # the wrong length
        return bytes(data[: rng.randrange(64)]) + rng.randbytes(rng.randrange(3))
    elif kind == 5:  # S pushed out of range (S + L, or the top bits set)
        data[63] |= 0xE0
    elif kind == 6:  # random bytes
        return rng.randbytes(64)
    return bytes(data)


def test_ten_thousand_random_keys_messages_and_signatures_agree() -> None:
    rng = random.Random(9421)
    accepted = 0
    for index in range(10_000):
        private = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        message = rng.randbytes(rng.randrange(600))
        signature = private.sign(message)
        other = private.public_key() if index % 5 else Ed25519PrivateKey.generate().public_key()
        key = load_public_key(other)
        candidate = mutated(rng, signature)
        checked = message if index % 7 else message + b"x"
        openssl, sodium = (check(candidate, checked) for check in checks(key))
        assert openssl == sodium, (index, key.public_bytes_raw().hex(), candidate.hex())
        accepted += openssl
    # Both branches were taken often: the unchanged signatures verified.
    assert 800 < accepted < 2500, accepted


def test_both_sign_random_messages_with_random_keys_into_the_same_bytes() -> None:
    rng = random.Random(9421)
    for _ in range(2_000):
        private = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        message = rng.randbytes(rng.randrange(1200))
        signatures = {ed25519.signer_for(private, name)(message) for name in BACKENDS}
        (signature,) = signatures
        private.public_key().verify(signature, message)


def test_a_scheduler_signs_with_the_backend_asked_for_and_endpoints_verify_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dispatchlet.core.http import Request
    from dispatchlet.core.signatures import sign_request
    from dispatchlet.scheduler.http_caller import HttpCaller

    key = Ed25519PrivateKey.generate()
    request = Request("POST", "/run", "example.com", [("Content-Type", "x")], b"body")
    signed = {}
    for name in BACKENDS:
        monkeypatch.setenv(ed25519.BACKEND_ENV, name)
        caller = HttpCaller(key)
        assert caller._sign is not None
        signed[name] = sign_request(request, key, created=1, signer=caller._sign)
        Verifier((key.public_key(),), backend="cryptography").verify(signed[name], now=2)
    assert signed["nacl"] == signed["cryptography"] == sign_request(request, key, created=1)


def test_the_rfc_vector_verifies_with_both() -> None:
    key = load_public_key(VECTOR["public_key_pem"])
    base = VECTOR["signature_base"].encode()
    (header,) = [v for n, v in VECTOR["request"]["headers"] if n.lower() == "signature"]
    signature = base64.b64decode(header.removeprefix("sig-b26=:").removesuffix(":"))
    assert [check(signature, base) for check in checks(key)] == [True, True]
    tampered = base.replace(b"example.com", b"example.org")
    assert [check(signature, tampered) for check in checks(key)] == [False, False]


def test_a_verifier_uses_the_backend_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    assert Verifier((key,), backend="cryptography").backend == "cryptography"
    monkeypatch.setenv(ed25519.BACKEND_ENV, "nacl")
    assert Verifier((key,)).backend == "nacl"
    monkeypatch.setenv(ed25519.BACKEND_ENV, "sodium")
    with pytest.raises(ValueError, match="DISPATCHLET_ED25519_BACKEND"):
        Verifier((key,))


# The points of small order: OpenSSL accepts a forged signature under the identity
# (R = identity, S = 0 verifies for any message) and libsodium does not. Such a key is
# refused when loaded, whatever the backend; so is a non-canonical encoding.
WEAK_KEYS = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "01000000000000000000000000000000000000000000000000000000000000" + "80",
]


def test_openssl_alone_accepts_a_forgery_under_the_identity_key() -> None:
    identity = Ed25519PublicKey.from_public_bytes(bytes.fromhex(WEAK_KEYS[0]))
    forged = bytes.fromhex(WEAK_KEYS[0]) + bytes(32)
    openssl, sodium = (check(forged, b"any message") for check in checks(identity))
    assert (openssl, sodium) == (True, False)


@pytest.mark.parametrize("raw", WEAK_KEYS)
def test_weak_keys_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="weak Ed25519 public key"):
        load_public_key(base64.b64encode(bytes.fromhex(raw)).decode())
    with pytest.raises(ValueError, match="weak"):
        load_public_key(Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw)))


def test_non_canonical_encodings_are_refused() -> None:
    # y = p + 3: above the field prime, which no encoder emits.
    raw = (2**255 - 19 + 3).to_bytes(32, "little")
    with pytest.raises(ValueError, match="non-canonical"):
        load_public_key(base64.b64encode(raw).decode())
