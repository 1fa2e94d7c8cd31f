"""Interoperability with an independent RFC 9421 implementation (http-message-signatures).

Both directions: requests it signs in the Dispatch profile verify in dispatchlet, and
requests dispatchlet signs verify in it.
"""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest
from dispatchlet import Endpoint, Request
from dispatchlet.core.digest import content_digest
from dispatchlet.core.signatures import REQUIRED_COMPONENTS
from http_message_signatures import (
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)
from support import (
    OTHER_KEY,
    PUBLIC_KEY,
    IndependentMessage,
    http_request,
    independently_signed,
    output,
    run_request,
    signed,
)


@pytest.fixture
def endpoint() -> Endpoint:
    ep = Endpoint(verification_key=PUBLIC_KEY)
    ep.function(lambda value: value, name="echo")
    return ep


def header(request: Request, name: str) -> str:
    return next(v for n, v in request.headers if n.lower() == name.lower())


def test_independently_signed_request_verifies(endpoint: Endpoint) -> None:
    body = run_request("echo", "interop").SerializeToString()
    request = independently_signed(body)  # it adds a sha-256 Content-Digest
    assert header(request, "Content-Digest").startswith("sha-256=")
    assert output(endpoint.handle(request)) == "interop"


def test_independently_signed_with_sha512_digest(endpoint: Endpoint) -> None:
    body = run_request("echo", "512").SerializeToString()
    request = independently_signed(
        body,
        headers=[("Content-Digest", content_digest(body, "sha-512"))],
        use_existing_digest=True,
    )
    assert output(endpoint.handle(request)) == "512"


def test_independently_signed_percent_encoded_path_and_port(endpoint: Endpoint) -> None:
    path = "/base%20path/v%C3%A9/dispatch.sdk.v1.FunctionService/Run"
    body = run_request("echo", "path").SerializeToString()
    request = independently_signed(body, path=path, authority="Example.COM:8443")
    assert output(endpoint.handle(request)) == "path"


def test_independently_signed_with_expires_and_nonce(endpoint: Endpoint) -> None:
    body = run_request("echo", 1).SerializeToString()
    now = datetime.datetime.now(datetime.timezone.utc)
    request = independently_signed(body, expires=now + datetime.timedelta(minutes=1), nonce="n-1")
    assert output(endpoint.handle(request)) == 1


def test_independently_signed_stale_request_is_rejected(endpoint: Endpoint) -> None:
    body = run_request("echo", 1).SerializeToString()
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
    assert endpoint.handle(independently_signed(body, created=old)).status == 403


def test_independently_signed_body_swap_is_rejected(endpoint: Endpoint) -> None:
    request = independently_signed(run_request("echo", "a").SerializeToString())
    other = run_request("echo", "b").SerializeToString()
    assert endpoint.handle(replace(request, body=other)).status == 403


def message_from(request: Request) -> IndependentMessage:
    message = IndependentMessage(request.method, f"https://{request.authority}{request.path}")
    if request.query:
        message.url += f"?{request.query}"
    for name, value in request.headers:
        message.headers[name] = value
    return message


def independent_verify(request: Request, key: Any = PUBLIC_KEY) -> Any:
    verifier = HTTPMessageVerifier(
        signature_algorithm=algorithms.ED25519,
        key_resolver=MappingKeyResolver(public_keys={"default": key}, private_keys={}),
    )
    return verifier.verify(
        message_from(request),
        max_age=datetime.timedelta(minutes=5),
        require_components=REQUIRED_COMPONENTS,
        body=request.body,
    )


@pytest.mark.parametrize("digest", ["sha-512", "sha-256"])
def test_dispatchlet_signature_verifies_independently(digest: str) -> None:
    request = signed(http_request(run_request("echo", "out")), digest=digest)
    (result,) = independent_verify(request)
    assert result.label == "dispatch"
    assert result.parameters["keyid"] == "default"
    assert result.parameters["alg"] == "ed25519"
    assert result.body == request.body


def test_dispatchlet_signature_with_encoded_path_and_port_verifies_independently() -> None:
    request = signed(
        http_request(
            run_request("echo", "out"),
            path="/a%2Fb/dispatch.sdk.v1.FunctionService/Run",
            authority="Example.com:8443",
        ),
        expires=2_000_000_000,
    )
    (result,) = independent_verify(request)
    assert result.covered_components['"@path"'] == "/a%2Fb/dispatch.sdk.v1.FunctionService/Run"
    assert result.covered_components['"@authority"'] == "example.com:8443"


def test_independent_verifier_rejects_wrong_key_and_tampering() -> None:
    request = signed(http_request(run_request("echo", "out")))
    with pytest.raises(InvalidSignature):
        independent_verify(request, OTHER_KEY.public_key())
    tampered = Request(
        method=request.method,
        path="/other" + request.path,
        authority=request.authority,
        headers=request.headers,
        body=request.body,
    )
    with pytest.raises(InvalidSignature):
        independent_verify(tampered)
