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

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from . import structured_fields as sf
from .digest import check_content_digest, content_digest
from .errors import DispatchletError, PermissionDenied, Unauthenticated
from .http import Request

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


def normalize_authority(authority: str) -> str:
    """``@authority`` as RFC 9421 wants it: lower case, default port dropped."""
    authority = authority.strip().lower()
    for port in (":443", ":80"):
        if authority.endswith(port):
            return authority[: -len(port)]
    return authority


def _field_value(fields: Mapping[str, list[str]], name: str) -> str:
    values = fields.get(name)
    if values is None:
        raise Unauthenticated(f"covered field {name!r} is missing from the request")
    # RFC 9421 2.1: trim each field line, join with ", ".
    return ", ".join(v.strip() for v in values)


def _component_value(
    name: str, request: Request, fields: Mapping[str, list[str]], authority: str, path: str
) -> str:
    if not name.startswith("@"):
        if name != name.lower():
            raise Unauthenticated(f"component {name!r} must be lower case")
        return _field_value(fields, name)
    query = f"?{request.query}" if request.query else ""
    if name == "@method":
        return request.method
    if name == "@authority":
        return authority
    if name == "@path":
        return path or "/"
    if name == "@query":
        return query or "?"
    if name == "@scheme":
        return request.scheme.lower()
    if name == "@request-target":
        return (path or "/") + query
    if name == "@target-uri":
        return f"{request.scheme.lower()}://{authority}{path or '/'}{query}"
    raise Unauthenticated(f"unsupported signature component {name!r}")


def signature_base(
    components: sf.InnerList,
    request: Request,
    fields: Mapping[str, list[str]],
    *,
    authority: str,
    path: str,
) -> bytes:
    """The bytes that are signed: one line per covered component, then the parameters."""
    lines = []
    seen = set()
    for item in components.items:
        name = item.value
        if not isinstance(name, str) or isinstance(name, sf.Token):
            raise Unauthenticated("signature components must be strings")
        if item.params:
            raise Unauthenticated(f"unsupported parameters on component {name!r}")
        if name in seen:
            raise Unauthenticated(f"component {name!r} is covered twice")
        seen.add(name)
        value = _component_value(name, request, fields, authority, path)
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {sf.serialize_inner_list(components)}')
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise Unauthenticated("covered components must be ASCII") from None


@dataclass(frozen=True)
class Verifier:
    """Checks request signatures against a set of keys and a profile.

    ``keyids`` None accepts any key id; ``max_age`` None accepts any age (test vectors).
    """

    keys: tuple[Ed25519PublicKey, ...]
    required: frozenset[str] = frozenset(REQUIRED_COMPONENTS)
    keyids: frozenset[str] | None = frozenset({DISPATCH_KEYID})
    max_age: float | None = 300.0
    clock_skew: float = 5.0

    def verify(
        self,
        request: Request,
        *,
        authority: str | None = None,
        path: str | None = None,
        now: float | None = None,
    ) -> str:
        """Return the label of the signature that verified, or raise.

        ``authority`` and ``path`` are what the caller addressed when that differs from
        what reached us (a proxy or API stage in between); by default the request's own.
        """
        fields = header_fields(request.headers)
        inputs = fields.get("signature-input")
        signatures = fields.get("signature")
        if not inputs or not signatures:
            raise Unauthenticated("missing request signature (Signature-Input and Signature)")
        try:
            parsed_inputs = sf.parse_dictionary(", ".join(inputs))
            parsed_signatures = sf.parse_dictionary(", ".join(signatures))
        except sf.StructuredFieldError as exc:
            raise Unauthenticated(f"malformed signature header: {exc}") from None

        target_authority = normalize_authority(
            request.authority if authority is None else authority
        )
        target_path = request.path if path is None else path
        current = time.time() if now is None else now
        # The first 403-class reason wins over 401-class ones: it says more.
        rejected: DispatchletError | None = None
        unusable: DispatchletError | None = None
        for label, components in parsed_inputs.items():
            signature = parsed_signatures.get(label)
            if signature is None:
                continue
            try:
                self._verify_one(
                    components,
                    signature,
                    request,
                    fields,
                    target_authority,
                    target_path,
                    current,
                )
                return label
            except PermissionDenied as exc:
                rejected = rejected or exc
            except Unauthenticated as exc:
                unusable = unusable or exc
        if rejected is not None:
            raise rejected
        if unusable is not None:
            raise unusable
        raise Unauthenticated("no signature label appears in both Signature-Input and Signature")

    def _verify_one(
        self,
        components: sf.Member,
        signature: sf.Member,
        request: Request,
        fields: Mapping[str, list[str]],
        authority: str,
        path: str,
        now: float,
    ) -> None:
        if not isinstance(components, sf.InnerList):
            raise Unauthenticated("Signature-Input member is not an inner list")
        if not isinstance(signature, sf.Item) or not isinstance(signature.value, bytes):
            raise Unauthenticated("Signature member is not a byte sequence")
        covered = {item.value for item in components.items}
        missing = self.required.difference(covered)
        if missing:
            raise Unauthenticated(
                f"signature does not cover required components: {', '.join(sorted(missing))}"
            )
        params = components.params
        alg = params.get("alg")
        if alg is not None and alg != ALGORITHM:
            raise Unauthenticated(f"unsupported signature algorithm {alg!r}")
        keyid = params.get("keyid")
        if self.keyids is not None and keyid is not None and keyid not in self.keyids:
            raise Unauthenticated(f"unknown key id {keyid!r}")
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

        base = signature_base(components, request, fields, authority=authority, path=path)
        if "content-digest" in covered:
            check_content_digest(_field_value(fields, "content-digest"), request.body)
        for key in self.keys:
            try:
                key.verify(signature.value, base)
                return
            except InvalidSignature:
                continue
        raise PermissionDenied("invalid signature")


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
) -> Request:
    """A copy of ``request`` with Content-Digest, Signature-Input and Signature set.

    The authority and path signed are the request's own, as a client addressed them.
    """
    headers = [(n, v) for n, v in request.headers if n.lower() not in _SIGNATURE_FIELDS]
    headers.append(("Content-Digest", content_digest(request.body, digest)))
    params: dict[str, sf.BareItem] = {
        "created": int(time.time()) if created is None else created,
    }
    if expires is not None:
        params["expires"] = expires
    params["keyid"] = keyid
    params["alg"] = ALGORITHM
    inner = sf.InnerList([sf.Item(name, {}) for name in components], params)
    unsigned = replace(request, headers=headers)
    base = signature_base(
        inner,
        unsigned,
        header_fields(headers),
        authority=normalize_authority(request.authority),
        path=request.path,
    )
    signature = sf.Item(key.sign(base), {})
    headers.append(("Signature-Input", sf.serialize_dictionary({label: inner})))
    headers.append(("Signature", sf.serialize_dictionary({label: signature})))
    return replace(request, headers=headers)
