"""RFC 9421 verification in the Dispatch profile: vector, tampering, freshness, keys."""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from dispatchlet import Endpoint, Request
from dispatchlet.core import structured_fields as sf
from dispatchlet.core.digest import check_content_digest, content_digest
from dispatchlet.core.ed25519 import BACKEND_ENV, BACKENDS
from dispatchlet.core.errors import PermissionDenied, Unauthenticated
from dispatchlet.core.keys import load_public_key, public_key_base64, public_key_pem
from dispatchlet.core.signatures import (
    SignatureInput,
    Verifier,
    header_fields,
    normalize_authority,
    parse_signature_input,
    shown_keyid,
    sign_request,
    signature_base,
)
from support import (
    KEY,
    OTHER_KEY,
    PUBLIC_KEY,
    connect_error,
    http_request,
    output,
    run_request,
    signed,
)

VECTOR = json.loads((Path(__file__).parent / "data" / "rfc9421-b26.json").read_text())


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with each Ed25519 backend: they must accept and reject the same."""
    name: str = request.param
    monkeypatch.setenv(BACKEND_ENV, name)
    return name


def vector_request() -> Request:
    target = VECTOR["request"]["target"]
    path, _, query = target.partition("?")
    headers = [tuple(h) for h in VECTOR["request"]["headers"]]
    host = next(v for n, v in headers if n.lower() == "host")
    return Request(
        method=VECTOR["request"]["method"],
        path=path,
        query=query,
        authority=host,
        headers=headers,
        body=VECTOR["request"]["body"].encode(),
    )


VECTOR_COMPONENTS = frozenset(
    {"date", "@method", "@path", "@authority", "content-type", "content-length"}
)
VECTOR_CREATED = 1618884473


def vector_verifier(**options: object) -> Verifier:
    key = load_public_key(VECTOR["public_key_pem"])
    settings: dict[str, object] = {
        "required": VECTOR_COMPONENTS,
        "keyids": frozenset({"test-key-ed25519"}),
        "max_age": None,
    }
    settings.update(options)
    return Verifier((key,), **settings)  # type: ignore[arg-type]


def test_rfc9421_b26_signature_base_is_byte_for_byte() -> None:
    request = vector_request()
    fields = header_fields(request.headers)
    covered = parse_signature_input(fields["signature-input"][0])["sig-b26"]
    assert isinstance(covered, SignatureInput)
    base = signature_base(
        covered,
        request,
        fields,
        authority=normalize_authority(request.authority),
        path=request.path,
    )
    assert base == VECTOR["signature_base"].encode()


def test_rfc9421_b26_verifies() -> None:
    assert vector_verifier().verify(vector_request(), now=VECTOR_CREATED) == "sig-b26"


def test_rfc9421_b26_signing_is_deterministic() -> None:
    private = load_pem_private_key(VECTOR["private_key_pem"].encode(), password=None)
    signature = private.sign(VECTOR["signature_base"].encode())  # type: ignore[union-attr,call-arg]
    expected = dict(VECTOR["request"]["headers"])["Signature"]
    assert expected == f"sig-b26=:{base64.b64encode(signature).decode()}:"


def test_a_signed_requests_signature_field_is_its_dictionarys_serialization() -> None:
    """The Signature field the signer writes is the RFC 9651 serialization of
    {label: signature bytes}, and those bytes are the key's signature of the base."""
    request = sign_request(http_request(b"body"), KEY, created=1_700_000_000)
    fields = header_fields(request.headers)
    (value,) = fields["signature"]
    parsed = sf.parse_dictionary(value)
    assert list(parsed) == ["dispatch"]
    assert sf.serialize_dictionary(parsed) == value
    signature = parsed["dispatch"]
    assert isinstance(signature, sf.Item)
    assert isinstance(signature.value, bytes)
    covered = parse_signature_input(fields["signature-input"][0])["dispatch"]
    assert isinstance(covered, SignatureInput)
    base = signature_base(
        covered,
        request,
        fields,
        authority=normalize_authority(request.authority, request.scheme),
        path=request.path,
    )
    PUBLIC_KEY.verify(signature.value, base)  # raises if it is not the key's signature


def test_rfc9421_b26_rejected_by_strict_dispatch_profile() -> None:
    strict = Verifier((load_public_key(VECTOR["public_key_pem"]),), keyids=None, max_age=None)
    with pytest.raises(Unauthenticated, match="content-digest"):
        strict.verify(vector_request(), now=VECTOR_CREATED)


def test_rfc9421_b26_rejected_for_unaccepted_keyid() -> None:
    with pytest.raises(Unauthenticated, match="key id"):
        vector_verifier(keyids=frozenset({"default"})).verify(vector_request(), now=VECTOR_CREATED)


def test_rfc9421_b26_stale_under_default_age() -> None:
    with pytest.raises(PermissionDenied, match="too old"):
        vector_verifier(max_age=300.0).verify(vector_request())


# Endpoint-level behaviour, signed with dispatchlet's own signer.


@pytest.fixture
def endpoint() -> Endpoint:
    ep = Endpoint(verification_key=PUBLIC_KEY)

    @ep.function
    def echo(value: object) -> object:
        return value

    return ep


def good_request(**options: object) -> Request:
    return signed(http_request(run_request("echo", "hi")), **options)  # type: ignore[arg-type]


def with_header(request: Request, name: str, value: str) -> Request:
    headers = [(n, v) for n, v in request.headers if n.lower() != name.lower()]
    return replace(request, headers=[*headers, (name, value)])


def header(request: Request, name: str) -> str:
    return next(v for n, v in request.headers if n.lower() == name.lower())


def test_signed_request_runs(endpoint: Endpoint) -> None:
    assert output(endpoint.handle(good_request())) == "hi"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda r: replace(r, path="/x" + r.path), id="path"),
        pytest.param(lambda r: replace(r, authority="evil.example"), id="authority"),
        pytest.param(
            lambda r: with_header(r, "Content-Type", "application/proto; charset=x"),
            id="content-type",
        ),
        pytest.param(
            lambda r: replace(r, body=run_request("echo", "ho").SerializeToString()), id="body"
        ),
        pytest.param(
            lambda r: with_header(
                replace(r, body=run_request("echo", "ho").SerializeToString()),
                "Content-Digest",
                "sha-512=:"
                + base64.b64encode(
                    __import__("hashlib")
                    .sha512(run_request("echo", "ho").SerializeToString())
                    .digest()
                ).decode()
                + ":",
            ),
            id="body-and-digest",
        ),
        pytest.param(
            lambda r: with_header(
                r,
                "Signature-Input",
                header(r, "Signature-Input").replace("created=", "created=1"),
            ),
            id="created",
        ),
        pytest.param(
            lambda r: with_header(
                r, "Signature-Input", header(r, "Signature-Input").replace(';alg="ed25519"', "")
            ),
            id="params-dropped",
        ),
    ],
)
def test_tampering_is_rejected_with_403(endpoint: Endpoint, tamper) -> None:  # type: ignore[no-untyped-def]
    status, code, _ = connect_error(endpoint.handle(tamper(good_request())))
    assert (status, code) == (403, "permission_denied")


def test_method_tampering_is_not_served(endpoint: Endpoint) -> None:
    # Only POST reaches verification; any other method is refused first.
    request = good_request()
    assert endpoint.handle(replace(request, method="PUT")).status == 405
    assert endpoint.handle(replace(request, method="post")).status == 405


@pytest.mark.parametrize("bit", [0, 7, 100, 511])
def test_one_flipped_signature_bit_is_rejected(endpoint: Endpoint, bit: int) -> None:
    request = good_request()
    label, _, value = header(request, "Signature").partition("=")
    raw = bytearray(base64.b64decode(value.strip(":")))
    raw[bit // 8] ^= 1 << (bit % 8)
    tampered = with_header(
        request, "Signature", f"{label}=:{base64.b64encode(bytes(raw)).decode()}:"
    )
    assert connect_error(endpoint.handle(tampered))[:2] == (403, "permission_denied")


def test_stale_signature_is_rejected(endpoint: Endpoint) -> None:
    response = endpoint.handle(good_request(created=int(time.time()) - 301))
    assert connect_error(response)[:2] == (403, "permission_denied")
    assert "too old" in connect_error(response)[2]


def test_future_signature_is_rejected(endpoint: Endpoint) -> None:
    response = endpoint.handle(good_request(created=int(time.time()) + 60))
    assert connect_error(response)[:2] == (403, "permission_denied")


def test_small_clock_skew_is_tolerated(endpoint: Endpoint) -> None:
    assert output(endpoint.handle(good_request(created=int(time.time()) + 2))) == "hi"


def test_expired_signature_is_rejected(endpoint: Endpoint) -> None:
    now = int(time.time())
    response = endpoint.handle(good_request(created=now - 30, expires=now - 20))
    assert connect_error(response)[:2] == (403, "permission_denied")
    assert output(endpoint.handle(good_request(created=now, expires=now + 60))) == "hi"


def test_configurable_age_and_skew() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY, max_signature_age=3600, clock_skew=120)
    ep.function(lambda value: value, name="echo")
    now = int(time.time())
    assert output(ep.handle(good_request(created=now - 1800))) == "hi"
    assert output(ep.handle(good_request(created=now + 90))) == "hi"
    assert ep.handle(good_request(created=now - 4000)).status == 403


def test_unknown_key_is_rejected_saying_the_keys_probably_differ(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatchlet"):
        response = endpoint.handle(signed(http_request(run_request("echo", "hi")), OTHER_KEY))
    status, code, message = connect_error(response)
    assert (status, code) == (403, "permission_denied")
    assert message.startswith("invalid signature (keyid 'default'): ")
    assert (
        "DISPATCH_VERIFICATION_KEY must be the public half of its DISPATCH_SIGNING_KEY" in message
    )
    assert "`dispatchlet scheduler` prints at start" in message
    # The endpoint's log line says the same.
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "dispatchlet"]
    assert logged == f"rejected request: {message}"
    # Neither shows the configured key, in any form.
    raw = PUBLIC_KEY.public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem_body = public_key_pem(PUBLIC_KEY).splitlines()[1]
    for secret in (public_key_base64(PUBLIC_KEY), pem_body, raw.hex()):
        assert secret not in message


def test_the_key_id_tried_is_named_and_shown_bounded() -> None:
    verifier = Verifier((PUBLIC_KEY,), keyids=None)
    with pytest.raises(PermissionDenied, match=r"^invalid signature \(keyid 'ops-2026'\): "):
        verifier.verify(signed(http_request(run_request("echo", 1)), OTHER_KEY, keyid="ops-2026"))
    # A key id is the request's to choose: long or odd ones are cut short and made plain.
    assert shown_keyid("k" * 500) == repr("k" * 64) + "..."
    assert shown_keyid("caf\u00e9\n\x1b[2J") == "'caf???[2J'"
    assert shown_keyid(None) == "none"
    ep = Endpoint(verification_key=PUBLIC_KEY)
    ep.function(lambda value: value, name="echo")
    long_keyid = signed(http_request(run_request("echo", 1)), keyid="k" * 5000)
    status, _, message = connect_error(ep.handle(long_keyid))
    assert status == 401
    assert message == f"unknown key id {shown_keyid('k' * 5000)}"


def test_key_rotation_accepts_every_configured_key() -> None:
    ep = Endpoint(verification_key=[OTHER_KEY.public_key(), PUBLIC_KEY])
    ep.function(lambda value: value, name="echo")
    assert output(ep.handle(signed(http_request(run_request("echo", 1)), KEY))) == 1
    assert output(ep.handle(signed(http_request(run_request("echo", 2)), OTHER_KEY))) == 2


def test_several_signatures_the_valid_one_wins(endpoint: Endpoint) -> None:
    good = good_request()
    bad = signed(http_request(run_request("echo", "hi")), OTHER_KEY, label="other")
    # Both labels in one request, the invalid one first.
    inputs = f"{header(bad, 'Signature-Input')}, {header(good, 'Signature-Input')}"
    sigs = f"{header(bad, 'Signature')}, {header(good, 'Signature')}"
    combined = with_header(with_header(good, "Signature-Input", inputs), "Signature", sigs)
    assert output(endpoint.handle(combined)) == "hi"
    # As separate field lines too.
    lines = replace(
        good,
        headers=[
            *good.headers,
            ("Signature-Input", header(bad, "Signature-Input")),
            ("Signature", header(bad, "Signature")),
        ],
    )
    assert output(endpoint.handle(lines)) == "hi"


def test_signature_not_covering_required_components_is_401(endpoint: Endpoint) -> None:
    request = signed(
        http_request(run_request("echo", "hi")),
        components=("@method", "@path", "@authority", "content-type"),
    )
    status, code, message = connect_error(endpoint.handle(request))
    assert (status, code) == (401, "unauthenticated")
    assert "content-digest" in message


def test_extra_covered_components_are_allowed(endpoint: Endpoint) -> None:
    request = http_request(run_request("echo", "hi"), headers=[("X-Trace", "abc")])
    request = replace(request, query="a=1")
    request = signed(
        request,
        components=(
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-digest",
            "x-trace",
            "@query",
            "@target-uri",
        ),
    )
    assert output(endpoint.handle(request)) == "hi"


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        ("Signature", "dispatch=abc", 401),
        ("Signature", "dispatch=:!!!:", 401),
        ("Signature-Input", "dispatch=(", 401),
        ("Signature-Input", 'dispatch="not-a-list"', 401),
        ("Signature-Input", 'other=("@method");created=1', 401),
        ("Content-Digest", "md5=:AAAA:", 401),
        ("Content-Digest", "sha-512=abc", 401),
        ("Content-Digest", "sha-512=:AAAA:", 403),
    ],
)
def test_malformed_or_wrong_signature_fields(
    endpoint: Endpoint, name: str, value: str, status: int
) -> None:
    response = endpoint.handle(with_header(good_request(), name, value))
    assert connect_error(response)[0] == status


def test_missing_signature_is_401(endpoint: Endpoint) -> None:
    status, code, _ = connect_error(endpoint.handle(http_request(run_request("echo", "hi"))))
    assert (status, code) == (401, "unauthenticated")


def test_missing_content_digest_is_401(endpoint: Endpoint) -> None:
    request = good_request()
    stripped = replace(
        request, headers=[(n, v) for n, v in request.headers if n.lower() != "content-digest"]
    )
    assert connect_error(endpoint.handle(stripped))[:2] == (401, "unauthenticated")


def test_sha256_content_digest_is_accepted(endpoint: Endpoint) -> None:
    assert output(endpoint.handle(good_request(digest="sha-256"))) == "hi"


def test_every_known_digest_must_match() -> None:
    body = b"payload"
    good_512 = content_digest(body, "sha-512")
    wrong_256 = "sha-256=:" + base64.b64encode(b"x" * 32).decode() + ":"
    check_content_digest(good_512, body)
    check_content_digest(f"{good_512}, md5=:AAAA:", body)  # unknown algorithms are ignored
    with pytest.raises(PermissionDenied):
        check_content_digest(f"{good_512}, {wrong_256}", body)


def test_authority_is_normalised(endpoint: Endpoint) -> None:
    # Signed as example.com; the Host header arrives in upper case with the default port.
    request = replace(good_request(), authority="EXAMPLE.COM:443")
    assert output(endpoint.handle(request)) == "hi"
    request = replace(good_request(), authority="example.com:8443")
    assert endpoint.handle(request).status == 403


def test_path_is_verified_exactly_as_sent() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)
    ep.function(lambda value: value, name="echo")
    path = "/a%2Fb/dispatch.sdk.v1.FunctionService/Run"
    request = signed(http_request(run_request("echo", "x"), path=path))
    assert output(ep.handle(request)) == "x"
    # The same request whose path was decoded on the way no longer verifies.
    decoded = replace(request, path="/a/b/dispatch.sdk.v1.FunctionService/Run")
    assert ep.handle(decoded).status == 403


def test_endpoint_url_fixes_authority_and_path_prefix() -> None:
    # The scheduler calls https://api.example.com/prod/...; a proxy forwards it to the
    # function with another Host and without the stage prefix.
    ep = Endpoint(verification_key=PUBLIC_KEY, endpoint_url="https://API.example.com:443/prod/")
    ep.function(lambda value: value, name="echo")
    sent = signed(
        http_request(
            run_request("echo", "x"),
            authority="api.example.com",
            path="/prod/dispatch.sdk.v1.FunctionService/Run",
        )
    )
    arrived = replace(
        sent,
        authority="abc123.lambda-url.us-east-1.on.aws",
        path="/dispatch.sdk.v1.FunctionService/Run",
    )
    assert output(ep.handle(arrived)) == "x"
    # A request signed for another host is refused.
    other = signed(http_request(run_request("echo", "x"), authority="other.example.com"))
    assert ep.handle(other).status == 403


def test_endpoint_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        Endpoint(verification_key=PUBLIC_KEY, endpoint_url="ftp://example.com")


def test_only_the_default_port_of_the_scheme_is_dropped() -> None:
    assert normalize_authority("Example.COM:443", "https") == "example.com"
    assert normalize_authority("example.com:80", "http") == "example.com"
    assert normalize_authority("example.com:80", "https") == "example.com:80"
    assert normalize_authority("example.com:443", "http") == "example.com:443"


def test_a_signature_for_https_default_port_does_not_verify_for_port_80() -> None:
    ep = Endpoint(verification_key=PUBLIC_KEY)
    ep.function(lambda value: value, name="echo")
    request = signed(http_request(run_request("echo", "x"), authority="example.com"))
    assert output(ep.handle(request)) == "x"
    assert ep.handle(replace(request, authority="example.com:80")).status == 403
    # Over plain http, :80 is the default port and the same authority.
    plain = signed(replace(http_request(run_request("echo", "x")), scheme="http"))
    assert output(ep.handle(replace(plain, authority="example.com:80"))) == "x"
    assert ep.handle(replace(plain, authority="example.com:443")).status == 403
