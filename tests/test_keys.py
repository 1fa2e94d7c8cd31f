"""Verification and signing keys in every form users paste them."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet.core.keys import (
    load_private_key,
    load_public_key,
    load_public_keys,
    private_key_base64,
    private_key_pem,
    public_key_base64,
    public_key_pem,
    public_keys_from_env,
)
from support import KEY, PUBLIC_KEY


def same(a: object, b: object) -> bool:
    return public_key_base64(a) == public_key_base64(b)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "form",
    [
        public_key_pem(PUBLIC_KEY),
        public_key_pem(PUBLIC_KEY).replace("\n", "\\n"),  # pasted into an env var
        public_key_pem(PUBLIC_KEY).encode(),
        public_key_base64(PUBLIC_KEY),
        "  " + public_key_base64(PUBLIC_KEY) + "\n",
        PUBLIC_KEY,
    ],
)
def test_public_key_forms(form: object) -> None:
    assert same(load_public_key(form), PUBLIC_KEY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "form",
    [private_key_pem(KEY), private_key_pem(KEY).replace("\n", "\\n"), private_key_base64(KEY), KEY],
)
def test_private_key_forms(form: object) -> None:
    assert same(load_private_key(form).public_key(), PUBLIC_KEY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64!",
        "AAAA",
        public_key_base64(PUBLIC_KEY)[:-4],
        "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----",
    ],
)
def test_bad_public_keys_are_clear_errors(bad: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)key"):
        load_public_key(bad)


def test_rsa_pem_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="Ed25519"):
        load_public_key(pem)


def test_several_keys_for_rotation() -> None:
    other = Ed25519PrivateKey.generate().public_key()
    pems = public_key_pem(PUBLIC_KEY) + public_key_pem(other)
    assert [public_key_base64(k) for k in load_public_keys(pems)] == [
        public_key_base64(PUBLIC_KEY),
        public_key_base64(other),
    ]
    joined = f"{public_key_base64(PUBLIC_KEY)}, {public_key_base64(other)}"
    assert len(load_public_keys(joined)) == 2
    assert len(load_public_keys([PUBLIC_KEY, public_key_pem(other)])) == 2
    assert load_public_keys(None) == ()
    assert load_public_keys("  ") == ()


def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_VERIFICATION_KEY", public_key_base64(PUBLIC_KEY))
    assert len(public_keys_from_env()) == 1
    monkeypatch.setenv("DISPATCH_VERIFICATION_KEY", "")
    assert public_keys_from_env() == ()
    monkeypatch.delenv("DISPATCH_VERIFICATION_KEY")
    assert public_keys_from_env() == ()
