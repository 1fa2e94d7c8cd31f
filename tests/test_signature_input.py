"""The Signature-Input fast path agrees with the general RFC 9651 parser."""

from __future__ import annotations

import base64

import pytest
from dispatchlet.core import structured_fields as sf
from dispatchlet.core.errors import Unauthenticated
from dispatchlet.core.signatures import SignatureInput, parse_signature, parse_signature_input
from hypothesis import example, given, settings
from hypothesis import strategies as st


def general(value: str) -> dict[str, SignatureInput | str]:
    """The members as the general parser reads them (reasons compared as text)."""
    out: dict[str, SignatureInput | str] = {}
    for label, member in sf.parse_dictionary(value).items():
        try:
            out[label] = SignatureInput.from_member(member)
        except Unauthenticated as exc:
            out[label] = str(exc)
    return out


def fast(value: str) -> dict[str, SignatureInput | str]:
    return {
        k: str(v) if isinstance(v, Unauthenticated) else v
        for k, v in parse_signature_input(value).items()
    }


keys = st.from_regex(r"[a-z*][a-z0-9_.*-]{0,8}", fullmatch=True)
names = st.sampled_from(
    ["@method", "@path", "@authority", "content-type", "content-digest"]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
values = (
    st.integers(-(10**15) + 1, 10**15 - 1)
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
    | st.booleans()
    | st.builds(sf.Token, st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True))
)


@settings(max_examples=500)
@given(
    label=keys,
    covered=st.lists(names, max_size=6),
    params=st.dictionaries(keys, values, max_size=5),
)
def test_serialized_inputs_read_the_same_both_ways(
    label: str, covered: list[str], params: dict[str, sf.BareItem]
) -> None:
    inner = sf.InnerList([sf.Item(n, {}) for n in covered], params)
    value = sf.serialize_dictionary({label: inner})
    assert fast(value) == general(value)
    (member,) = fast(value).values()
    if isinstance(member, SignatureInput):
        # What the hot path takes as @signature-params is the canonical serialization.
        assert member.serialized == sf.serialize_inner_list(inner)


@settings(max_examples=500)
@given(
    st.text(
        st.sampled_from(list('abc-@"();=, 0123456789\\*.:?')) | st.characters(max_codepoint=0x7F),
        max_size=60,
    )
)
def test_arbitrary_text_reads_the_same_both_ways(value: str) -> None:
    try:
        expected = general(value)
    except sf.StructuredFieldError:
        with pytest.raises(Unauthenticated):
            parse_signature_input(value)
        return
    assert fast(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        'dispatch=("@method" "@path");created=1;keyid="default"',
        'dispatch=("@method");created=007',  # not canonical: leading zeros
        'dispatch=("@method");created=1;created=2',  # repeated parameter
        'dispatch=("@method"  "@path");created=1',  # two spaces
        'dispatch=("@method" "@method");created=1',  # covered twice
        'dispatch=("Content-Type");created=1',  # upper case
        'dispatch=("a\\"b");created=1',  # escaped quote
        "dispatch=();created=-5",
        'a=("@path");created=1, b=("@method");created=2',
        'dispatch=("@method");alg=ed25519',  # a token parameter
    ],
)
def test_edge_cases_read_the_same_both_ways(value: str) -> None:
    assert fast(value) == general(value)


# --- the Signature field ------------------------------------------------------------


def general_signature(value: str) -> dict[str, sf.Member] | str:
    try:
        return sf.parse_dictionary(value)
    except sf.StructuredFieldError:
        return "malformed"


def fast_signature(value: str) -> dict[str, sf.Member] | str:
    try:
        return parse_signature(value)
    except Unauthenticated:
        return "malformed"


base64_text = st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode())


@settings(max_examples=500)
@example(label="a", content="=", suffix="")  # padding alone: b"" to Python 3.10's decoder
@given(
    label=keys | st.text(max_size=4),
    content=base64_text | st.text(st.sampled_from("AZaz09+/=: \\"), max_size=12),
    suffix=st.sampled_from(["", ";p", ", b=:AA==:", " ", ":"]),
)
def test_signature_fields_read_the_same_both_ways(label: str, content: str, suffix: str) -> None:
    value = f"{label}=:{content}:{suffix}"
    assert fast_signature(value) == general_signature(value)
