"""Hypothesis fuzzing of Endpoint.handle: no exception escapes, never a 5xx."""

from __future__ import annotations

from dataclasses import replace

from dispatchlet import Endpoint, Request
from dispatchlet.core.connect import JSON, PROTO, RUN_PATH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PUBLIC_KEY, http_request, run_request, signed

ENDPOINT = Endpoint(verification_key=PUBLIC_KEY, max_body_size=4096)
INSECURE = Endpoint(insecure=True, max_body_size=4096)
for ep in (ENDPOINT, INSECURE):
    ep.function(lambda value: value, name="echo")
    ep.function(lambda a, b: [a, b], name="pair")

ALLOWED = {200, 400, 401, 403, 404, 405, 415}

header_names = st.sampled_from(
    [
        "Content-Type",
        "Signature",
        "Signature-Input",
        "Content-Digest",
        "Content-Encoding",
        "Host",
        "X-Other",
    ]
) | st.text(min_size=1, max_size=20)
header_values = (
    st.text(max_size=200)
    | st.sampled_from(
        [PROTO, JSON, "dispatch=:AAAA:", 'dispatch=("@method");created=1', "sha-512=:AAAA:"]
    )
    | st.from_regex(r'[a-z]+=\("[@a-z-]+"( "[@a-z-]+")*\)(;[a-z]+=(\d+|"[a-z]*"))*', fullmatch=True)
)
requests = st.builds(
    Request,
    method=st.sampled_from(["POST", "GET", "PUT"]) | st.text(max_size=10),
    path=st.sampled_from([RUN_PATH, "/", "/x" + RUN_PATH]) | st.text(max_size=50),
    authority=st.sampled_from(["example.com", ""]) | st.text(max_size=30),
    headers=st.lists(st.tuples(header_names, header_values), max_size=12),
    body=st.binary(max_size=600),
    query=st.text(max_size=20),
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_arbitrary_requests_never_crash(request: Request) -> None:
    for ep in (ENDPOINT, INSECURE):
        response = ep.handle(request)
        assert response.status in ALLOWED


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=600), content_type=st.sampled_from([PROTO, JSON]))
def test_arbitrary_bodies_signed_correctly_never_crash(body: bytes, content_type: str) -> None:
    response = ENDPOINT.handle(signed(http_request(body, content_type=content_type)))
    assert response.status in ALLOWED


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=20),
    text=st.text(max_size=40),
)
def test_mutated_signed_headers_never_crash(index: int, text: str) -> None:
    request = signed(http_request(run_request("echo", "hi")))
    headers = list(request.headers)
    name, value = headers[index % len(headers)]
    cut = index % (len(value) + 1)
    headers[index % len(headers)] = (name, value[:cut] + text + value[cut:])
    response = ENDPOINT.handle(replace(request, headers=headers))
    assert response.status in ALLOWED


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_arbitrary_inputs_to_functions_never_crash(value: object) -> None:
    for function in ("echo", "pair"):
        response = ENDPOINT.handle(signed(http_request(run_request(function, value))))
        assert response.status == 200
