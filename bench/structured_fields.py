"""Time parsing the signature headers of a typical request, ours against http-sf.

Usage: python bench/structured_fields.py

Ours parses the field value as str (the server decodes field bytes as latin-1);
http-sf parses bytes. Figures are the best of several runs, in microseconds per
parse.
"""

from __future__ import annotations

import sys
import timeit

import http_sf
from dispatchlet.core.structured_fields import parse_dictionary

HEADERS = {
    "Signature-Input": (
        'dispatch=("@method" "@path" "@authority" "content-type" "content-digest")'
        ';created=1618884473;keyid="default";alg="ed25519"'
    ),
    "Signature": (
        "dispatch=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5l"
        "Ip5WPpBKRCw==:"
    ),
    "Content-Digest": (
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEm"
        "THWXvJwew==:"
    ),
}
NUMBER = 20_000
REPEAT = 7


def microseconds(stmt: str, **names: object) -> float:
    """Best time of one execution of ``stmt``, in microseconds."""
    best = min(timeit.repeat(stmt, globals=names, number=NUMBER, repeat=REPEAT))
    return best / NUMBER * 1e6


def main() -> None:
    print(f"CPython {sys.version.split()[0]}, http-sf {http_sf.__version__}")
    print(f"{'header':<16} {'ours (µs)':>10} {'http-sf (µs)':>13} {'http-sf/ours':>13}")
    total_ours = total_theirs = 0.0
    for name, value in HEADERS.items():
        data = value.encode("latin-1")
        assert parse_dictionary(value), name
        ours = microseconds("parse(value)", parse=parse_dictionary, value=value)
        theirs = microseconds("parse(data, tltype='dictionary')", parse=http_sf.parse, data=data)
        total_ours += ours
        total_theirs += theirs
        print(f"{name:<16} {ours:>10.2f} {theirs:>13.2f} {theirs / ours:>13.1f}")
    ratio = total_theirs / total_ours
    print(f"{'all three':<16} {total_ours:>10.2f} {total_theirs:>13.2f} {ratio:>13.1f}")


if __name__ == "__main__":
    main()
