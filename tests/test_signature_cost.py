"""An unauthenticated request costs at most a few verifications and no hashing of its
body, whatever its signature headers hold; a signed one hashes its body once."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from dispatchlet import Endpoint
from dispatchlet.core import digest
from dispatchlet.core.signatures import MAX_SIGNATURES
from hypothesis import given, settings
from hypothesis import strategies as st
from support import OTHER_KEY, PUBLIC_KEY, connect_error, http_request, output, run_request, signed


class CountingKey:
    """A public key that counts its verifications."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        self.calls = 0

    def verify(self, signature: bytes, data: bytes) -> None:
        self.calls += 1
        self.key.verify(signature, data)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the bodies hashed while the test runs."""
    sizes: list[int] = []
    for name, compute in list(digest.ALGORITHMS.items()):

        def counted(body: bytes, compute=compute) -> bytes:  # type: ignore[no-untyped-def]
            sizes.append(len(body))
            return compute(body)

        monkeypatch.setitem(digest.ALGORITHMS, name, counted)
    return sizes


def endpoint_with(keys: list[CountingKey]) -> Endpoint:
    ep = Endpoint(verification_key=PUBLIC_KEY)
    assert ep.verifier is not None
    ep.verifier = replace(ep.verifier, keys=tuple(keys))  # type: ignore[arg-type]
    ep.function(lambda value: value, name="echo")
    return ep


BIG_BODY_INPUT = "x" * (1024 * 1024)


def request_with_labels(labels: int, signature_bytes: bytes = b"\0" * 64):  # type: ignore[no-untyped-def]
    """A request signed with the wrong key, its one signature copied under ``labels`` labels."""
    good = signed(http_request(run_request("echo", BIG_BODY_INPUT)), key=OTHER_KEY)
    fields = dict(good.headers)
    member = fields["Signature-Input"].partition("=")[2]
    sig = base64.b64encode(signature_bytes).decode()
    inputs = ", ".join(f"s{n}={member}" for n in range(labels))
    signatures = ", ".join(f"s{n}=:{sig}:" for n in range(labels))
    headers = [(n, v) for n, v in good.headers if n.lower() not in ("signature-input", "signature")]
    headers += [("Signature-Input", inputs), ("Signature", signatures)]
    return replace(good, headers=headers)


def test_many_labels_are_refused_before_any_work(hashes: list[int]) -> None:
    key = CountingKey(PUBLIC_KEY)
    ep = endpoint_with([key])
    request = request_with_labels(300)
    hashes.clear()  # signing it hashed the body
    status, code, message = connect_error(ep.handle(request))
    assert (status, code) == (401, "unauthenticated")
    assert f"more than {MAX_SIGNATURES} signatures" in message
    assert key.calls == 0
    assert hashes == []


def test_bogus_signatures_never_hash_the_body(hashes: list[int]) -> None:
    keys = [CountingKey(PUBLIC_KEY), CountingKey(PUBLIC_KEY)]
    ep = endpoint_with(keys)
    request = request_with_labels(MAX_SIGNATURES)
    hashes.clear()
    status, _, message = connect_error(ep.handle(request))
    assert status == 403
    assert message.startswith("invalid signature")
    assert sum(k.calls for k in keys) == MAX_SIGNATURES * len(keys)
    assert hashes == []


def test_a_signed_request_hashes_its_body_once(hashes: list[int]) -> None:
    key = CountingKey(PUBLIC_KEY)
    ep = endpoint_with([key])
    request = signed(http_request(run_request("echo", BIG_BODY_INPUT)))
    hashes.clear()
    assert output(ep.handle(request)) == BIG_BODY_INPUT
    assert key.calls == 1
    assert hashes == [len(request.body)]


def test_a_replayed_signature_on_another_body_is_hashed_once_and_refused(
    hashes: list[int],
) -> None:
    key = CountingKey(PUBLIC_KEY)
    ep = endpoint_with([key])
    request = signed(http_request(run_request("echo", "a")))
    tampered = replace(request, body=run_request("echo", "b").SerializeToString())
    hashes.clear()
    status, _, message = connect_error(ep.handle(tampered))
    assert (status, message) == (403, "content digest does not match the body")
    assert len(hashes) == 1


@settings(max_examples=60, deadline=None)
@given(
    labels=st.integers(min_value=1, max_value=40),
    signature=st.binary(min_size=0, max_size=80),
)
def test_cost_is_bounded_whatever_the_labels(labels: int, signature: bytes) -> None:
    sizes: list[int] = []
    originals = dict(digest.ALGORITHMS)
    for name, compute in originals.items():
        digest.ALGORITHMS[name] = lambda body, c=compute: (sizes.append(len(body)), c(body))[1]
    try:
        keys = [CountingKey(PUBLIC_KEY), CountingKey(PUBLIC_KEY)]
        ep = endpoint_with(keys)
        request = request_with_labels(labels, signature)
        sizes.clear()
        response = ep.handle(request)
    finally:
        digest.ALGORITHMS.update(originals)
    assert response.status in (200, 401, 403)
    assert sum(k.calls for k in keys) <= MAX_SIGNATURES * len(keys)
    assert len(sizes) <= 1
    if labels > MAX_SIGNATURES:
        assert response.status == 401
