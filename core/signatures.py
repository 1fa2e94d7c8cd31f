"""RFC 9421 HTTP Message Signatures in the Dispatch profile (Ed25519).

The signature base is built in one place, ``signature_base``, for both the verifier
and the signer. The verifier accepts a request when any one of its signatures covers
the required components, is fresh, names an accepted key id and algorithm, and verifies
with one of the configured keys; a covered Content-Digest must match the body.

Failures are 401 (``Unauthenticated``) when no usable signature is present (missing or
malformed headers, required components not covered, missing covered fields) and 403
(``PermissionDenied``) when a signature was checked and rejected (bad signature, digest
mismatch, stale, from the future, expired).
"""

from __future__ import annotations

import base64
import functools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from . import ed25519
from . import structured_fields as sf
from .digest import content_digest, match_content_digest, parse_content_digest
from .errors import DispatchletError, PermissionDenied, Unauthenticated
from .http import Request
from .keys import SIGNING_KEY_ENV, VERIFICATION_KEY_ENV

REQUIRED_COMPONENTS: tuple[str, ...] = (
    "@method",
    "@path",
    "@authority",
    "content-type",
    "content-digest",
)
DISPATCH_LABEL = "dispatch"
DISPATCH_KEYID = "default"
ALGORITHM = "ed25519"
MAX_SIGNATURES = 4
"""Signatures a request may carry: each costs a verification per key, so an
unauthenticated request with hundreds of labels would otherwise cost hundreds."""

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}

# Why a well-formed, fresh signature most often fails: the endpoint was given another
# key than the scheduler's, or a proxy changed what the scheduler signed. It names
# settings only, never a key.
_KEY_MISMATCH = (
    "the key probably does not match the scheduler's "
    f"({VERIFICATION_KEY_ENV} must be the public half of its {SIGNING_KEY_ENV}, which "
    "`dispatchlet scheduler` prints at start), or a proxy changed the signed host or path "
    "(set DISPATCH_ENDPOINT_URL)"
)
_MAX_SHOWN_KEYID = 64

# Header fields replaced when a request is signed.
_SIGNATURE_FIELDS = frozenset({"signature", "signature-input", "content-digest"})


def header_fields(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Header values by lower-case name, every value kept in order."""
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.lower()
        values = fields.get(key)
        if values is None:
            fields[key] = [value]
        else:
            values.append(value)
    return fields


@functools.lru_cache(maxsize=256)
def normalize_authority(authority: str, scheme: str = "https") -> str:
    """``@authority`` as RFC 9421 wants it: lower case, the default port of ``scheme``
    dropped (``:443`` for https, ``:80`` for http; any other port is kept)."""
    authority = authority.strip().lower()
    port = _DEFAULT_PORTS.get(scheme.lower())
    if port is not None and authority.endswith(port):
        return authority[: -len(port)]
    return authority


def _field_value(fields: Mapping[str, list[str]], name: str) -> str:
    values = fields.get(name)
    if values is None:
        raise Unauthenticated(f"covered field {name!r} is missing from the request")
    if len(values) == 1:
        return values[0].strip()
    # RFC 9421 2.1: trim each field line, join with ", ".
    return ", ".join([v.strip() for v in values])


def _component_value(
    name: str, request: Request, fields: Mapping[str, list[str]], authority: str, path: str
) -> str:
    if name[0] != "@":
        return _field_value(fields, name)
    if name == "@method":
        return request.method
    if name == "@authority":
        return authority
    if name == "@path":
        return path or "/"
    query = f"?{request.query}" if request.query else ""
    if name == "@query":
        return query or "?"
    if name == "@scheme":
        return request.scheme.lower()
    if name == "@request-target":
        return (path or "/") + query
    if name == "@target-uri":
        return f"{request.scheme.lower()}://{authority}{path or '/'}{query}"
    raise Unauthenticated(f"unsupported signature component {name!r}")


# A header field name (RFC 9110 token, lower case) or a derived component.
_COMPONENT_NAME = re.compile(r"@?[a-z0-9!#$%&'*+.^_`|~-]+")


@functools.lru_cache(maxsize=256)
def _covered_components(names: tuple[str, ...]) -> str:
    """The serialized list of covered components, once its names are checked.

    Cached: a signer covers the same components on every request.
    """
    for name in names:
        if _COMPONENT_NAME.fullmatch(name) is None:
            raise Unauthenticated(f"invalid signature component {name!r}")
    if len(set(names)) != len(names):
        raise Unauthenticated("a signature component is covered twice")
    return sf.serialize_inner_list(sf.InnerList([sf.Item(name, {}) for name in names], {}))


class SignatureInput(NamedTuple):
    """One member of Signature-Input: what a signature covers, with its parameters.

    ``serialized`` is the RFC 9651 serialization of the member, the value of the
    ``@signature-params`` line of the signature base.
    """

    names: tuple[str, ...]
    params: Mapping[str, sf.BareItem]
    serialized: str

    @classmethod
    def build(cls, names: Sequence[str], params: Mapping[str, sf.BareItem]) -> SignatureInput:
        names = tuple(names)
        return cls(names, params, _covered_components(names) + sf.serialize_params(params))

    @classmethod
    def from_member(cls, member: sf.Member) -> SignatureInput:
        if not isinstance(member, sf.InnerList):
            raise Unauthenticated("Signature-Input member is not an inner list")
        names = []
        for item in member.items:
            if type(item.value) is not str:
                raise Unauthenticated("signature components must be strings")
            if item.params:
                raise Unauthenticated(f"unsupported parameters on component {item.value!r}")
            names.append(item.value)
        return cls.build(names, member.params)


_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_MAX_INTEGER_DIGITS = 15


def _canonical_input(value: str) -> tuple[str, SignatureInput] | None:
    """The one member of a Signature-Input in the form a Dispatch signer sends, or None.

    That form (an inner list of component names separated by single spaces, then
    integer or plain string parameters, all canonical) is its own RFC 9651
    serialization, so it is taken as it is, with string methods rather than the general
    parser: this runs on every request. Anything else returns None and goes through
    the general parser.
    """
    head, close_paren, param_text = value.partition(")")
    components = _canonical_components(head) if close_paren else None
    if components is None:
        return None
    label, names = components
    params: dict[str, sf.BareItem] = {}
    if param_text:
        pairs = param_text.split(";")
        if pairs[0]:
            return None
        for pair in pairs[1:]:
            key, equals, text = pair.partition("=")
            if not equals or key in params:
                return None
            if key not in _SIGNATURE_PARAMETERS and _KEY.fullmatch(key) is None:
                return None
            item = _canonical_bare_item(text)
            if item is None:
                return None
            params[key] = item
    return label, SignatureInput(names, params, value[len(label) + 1 :])


_SIGNATURE_PARAMETERS = frozenset({"created", "expires", "keyid", "alg", "nonce", "tag"})
# Parameter values every Dispatch signer repeats on each request, already read.
_REPEATED_VALUES: dict[str, int | str] = {
    f'"{DISPATCH_KEYID}"': DISPATCH_KEYID,
    f'"{ALGORITHM}"': ALGORITHM,
}


@functools.lru_cache(maxsize=256)
def _canonical_components(head: str) -> tuple[str, tuple[str, ...]] | None:
    """Label and names from ``label=("name" "name"``, the text before ")".

    Cached: it is the same on every request of a signer; only the parameters change.
    """
    label, open_paren, inner = head.partition("=(")
    if not open_paren or _KEY.fullmatch(label) is None:
        return None
    names = []
    if inner:
        for quoted in inner.split(" "):
            # Names are checked below: none holds a quote, space or backslash.
            if len(quoted) < 3 or quoted[0] != '"' or quoted[-1] != '"':
                return None
            names.append(quoted[1:-1])
    try:
        _covered_components(tuple(names))  # checks the names
    except Unauthenticated:
        return None  # the general parser says why
    return label, tuple(names)


def _canonical_bare_item(text: str) -> int | str | None:
    """An integer or a string without escapes, in canonical form; else None."""
    known = _REPEATED_VALUES.get(text)
    if known is not None:
        return known
    if text[:1] == '"':
        content = text[1:-1]
        if (
            len(text) < 2
            or text[-1] != '"'
            or '"' in content
            or "\\" in content
            or not (content.isascii() and content.isprintable())
        ):
            return None
        return content
    digits = text[1:] if text[:1] == "-" else text
    if (
        not digits.isdigit()
        or not digits.isascii()
        or len(digits) > _MAX_INTEGER_DIGITS
        or (digits[0] == "0" and text != "0")
    ):
        return None
    return int(text)


def parse_signature_input(value: str) -> dict[str, SignatureInput | Unauthenticated]:
    """The members of a Signature-Input field value by label.

    A member that cannot be a signature's input maps to the reason; a field that is not
    a Structured Field Dictionary raises ``Unauthenticated``.
    """
    canonical = _canonical_input(value)
    if canonical is not None:
        return {canonical[0]: canonical[1]}
    try:
        members = sf.parse_dictionary(value)
    except sf.StructuredFieldError as exc:
        raise Unauthenticated(f"malformed Signature-Input header: {exc}") from None
    inputs: dict[str, SignatureInput | Unauthenticated] = {}
    for label, member in members.items():
        try:
            inputs[label] = SignatureInput.from_member(member)
        except Unauthenticated as exc:
            inputs[label] = exc
    return inputs


def parse_signature(value: str) -> dict[str, sf.Member]:
    """The members of a Signature field value by label; ``Unauthenticated`` when it is
    not a Structured Field Dictionary.

    The form a signer sends, ``label=:base64:``, is read with string methods; anything
    else goes through the general parser.
    """
    label, equals, rest = value.partition("=")
    # Padding first is never canonical (Python 3.10's strict decode would read "=" as b"").
    canonical = equals and len(rest) > 2 and rest[0] == ":" and rest[-1] == ":" and rest[1] != "="
    if canonical and _KEY.fullmatch(label) is not None:
        try:
            return {label: sf.Item(base64.b64decode(rest[1:-1], validate=True), {})}
        except ValueError:
            pass  # the general parser says why
    try:
        return sf.parse_dictionary(value)
    except sf.StructuredFieldError as exc:
        raise Unauthenticated(f"malformed Signature header: {exc}") from None


def signature_base(
    covered: SignatureInput,
    request: Request,
    fields: Mapping[str, list[str]],
    *,
    authority: str,
    path: str,
) -> bytes:
    """The bytes that are signed: one line per covered component, then the parameters."""
    lines = [
        f'"{name}": {_component_value(name, request, fields, authority, path)}'
        for name in covered.names
    ]
    lines.append(f'"@signature-params": {covered.serialized}')
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise Unauthenticated("covered components must be ASCII") from None


@dataclass(frozen=True)
class Verifier:
    """Checks request signatures against a set of keys and a profile.

    ``keyids`` None accepts any key id; ``max_age`` None accepts any age (test vectors).
    ``backend`` is the Ed25519 implementation (``ed25519.backend``: PyNaCl when
    installed, else cryptography).
    """

    keys: tuple[Ed25519PublicKey, ...]
    required: frozenset[str] = frozenset(REQUIRED_COMPONENTS)
    keyids: frozenset[str] | None = frozenset({DISPATCH_KEYID})
    max_age: float | None = 300.0
    clock_skew: float = 5.0
    backend: str | None = None
    _checks: tuple[ed25519.Check, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = ed25519.backend(self.backend)
        object.__setattr__(self, "backend", name)
        object.__setattr__(self, "_checks", tuple(ed25519.check_for(k, name) for k in self.keys))

    def verify(
        self,
        request: Request,
        *,
        fields: Mapping[str, list[str]] | None = None,
        authority: str | None = None,
        path: str | None = None,
        now: float | None = None,
    ) -> str:
        """Return the label of the signature that verified, or raise.

        ``fields`` is ``header_fields(request.headers)`` when the caller has it already.
        ``authority`` (normalized, as ``normalize_authority`` gives it) and ``path`` are
        what the caller addressed when that differs from what reached us (a proxy or API
        stage in between); by default the request's own.
        """
        if fields is None:
            fields = header_fields(request.headers)
        inputs = fields.get("signature-input")
        signatures = fields.get("signature")
        if not inputs or not signatures:
            raise Unauthenticated("missing request signature (Signature-Input and Signature)")
        parsed_inputs = parse_signature_input(", ".join(inputs))
        if len(parsed_inputs) > MAX_SIGNATURES:
            raise Unauthenticated(f"more than {MAX_SIGNATURES} signatures in Signature-Input")
        parsed_signatures = parse_signature(", ".join(signatures))

        target_authority = (
            normalize_authority(request.authority, request.scheme)
            if authority is None
            else authority
        )
        target_path = request.path if path is None else path
        current = time.time() if now is None else now
        # Read before any signature is checked (a malformed one is a 401 either way);
        # compared with the body only once a signature verifies, so hashing a large body
        # is never done for an unsigned request, nor more than once.
        digests = (
            parse_content_digest(_field_value(fields, "content-digest"))
            if "content-digest" in fields
            else None
        )
        # The first 403-class reason wins over 401-class ones: it says more.
        rejected: DispatchletError | None = None
        unusable: DispatchletError | None = None
        for label, covered in parsed_inputs.items():
            signature = parsed_signatures.get(label)
            if signature is None:
                continue
            try:
                if isinstance(covered, Unauthenticated):
                    raise covered
                self._verify_one(
                    covered, signature, request, fields, target_authority, target_path, current
                )
            except PermissionDenied as exc:
                rejected = rejected or exc
                continue
            except Unauthenticated as exc:
                unusable = unusable or exc
                continue
            if "content-digest" in covered.names:
                if digests is None:  # unreachable: a covered field is in the base
                    raise Unauthenticated("missing Content-Digest header")
                match_content_digest(digests, request.body)
            return label
        if rejected is not None:
            raise rejected
        if unusable is not None:
            raise unusable
        raise Unauthenticated("no signature label appears in both Signature-Input and Signature")

    def _verify_one(
        self,
        covered: SignatureInput,
        signature: sf.Member,
        request: Request,
        fields: Mapping[str, list[str]],
        authority: str,
        path: str,
        now: float,
    ) -> None:
        if type(signature) is not sf.Item or type(signature.value) is not bytes:
            raise Unauthenticated("Signature member is not a byte sequence")
        missing = self.required.difference(covered.names)
        if missing:
            raise Unauthenticated(
                f"signature does not cover required components: {', '.join(sorted(missing))}"
            )
        params = covered.params
        alg = params.get("alg")
        if alg is not None and alg != ALGORITHM:
            raise Unauthenticated(f"unsupported signature algorithm {alg!r}")
        keyid = params.get("keyid")
        if self.keyids is not None and keyid is not None and keyid not in self.keyids:
            raise Unauthenticated(f"unknown key id {shown_keyid(keyid)}")
        created = params.get("created")
        if type(created) is not int:
            raise Unauthenticated("signature has no integer 'created' parameter")
        if created > now + self.clock_skew:
            raise PermissionDenied("signature created in the future")
        if self.max_age is not None and created < now - self.max_age:
            raise PermissionDenied("signature is too old")
        expires = params.get("expires")
        if expires is not None:
            if type(expires) is not int:
                raise Unauthenticated("signature 'expires' parameter is not an integer")
            if expires < now - self.clock_skew:
                raise PermissionDenied("signature has expired")

        base = signature_base(covered, request, fields, authority=authority, path=path)
        for check in self._checks:
            if check(signature.value, base):
                return
        raise PermissionDenied(f"invalid signature (keyid {shown_keyid(keyid)}): {_KEY_MISMATCH}")


def shown_keyid(keyid: object) -> str:
    """A signature's ``keyid`` parameter as a message may show it: it comes from the
    request, so it is cut short and anything but printable ASCII is replaced."""
    if keyid is None:
        return "none"
    text = str(keyid)
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[:_MAX_SHOWN_KEYID])
    return repr(shown) + ("..." if len(text) > _MAX_SHOWN_KEYID else "")


def sign_request(
    request: Request,
    key: Ed25519PrivateKey,
    *,
    created: int | None = None,
    expires: int | None = None,
    label: str = DISPATCH_LABEL,
    keyid: str = DISPATCH_KEYID,
    components: Sequence[str] = REQUIRED_COMPONENTS,
    digest: str = "sha-512",
    signer: ed25519.Sign | None = None,
) -> Request:
    """A copy of ``request`` with Content-Digest, Signature-Input and Signature set.

    The authority and path signed are the request's own, as a client addressed them.
    ``signer`` signs with ``key`` (``ed25519.signer_for``; None: ``key.sign``).
    """
    if _KEY.fullmatch(label) is None:
        raise ValueError(f"invalid signature label {label!r}")
    headers = [(n, v) for n, v in request.headers if n.lower() not in _SIGNATURE_FIELDS]
    headers.append(("Content-Digest", content_digest(request.body, digest)))
    params: dict[str, sf.BareItem] = {
        "created": int(time.time()) if created is None else created,
    }
    if expires is not None:
        params["expires"] = expires
    params["keyid"] = keyid
    params["alg"] = ALGORITHM
    covered = SignatureInput.build(components, params)
    # The base reads header values from the fields given (the request's own headers,
    # without any signature of before, are not read): no copy of the request for it.
    base = signature_base(
        covered,
        request,
        header_fields(headers),
        authority=normalize_authority(request.authority, request.scheme),
        path=request.path,
    )
    headers.append(("Signature-Input", f"{label}={covered.serialized}"))
    # The serialization of {label: Item(signature)}: the label is a valid key (above),
    # and a byte sequence without parameters is ":" base64 ":".
    signature = base64.b64encode((signer or key.sign)(base)).decode("ascii")
    headers.append(("Signature", f"{label}=:{signature}:"))
    return replace(request, headers=headers)
