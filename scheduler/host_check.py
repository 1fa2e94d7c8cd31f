"""Which ``Host`` an ``--insecure`` scheduler answers: a guard against DNS rebinding.

With no API key, anything that reaches the address may use the API and the dashboard. A
web page of another site cannot read the answers of a loopback scheduler (its origin
differs), unless its own name is made to resolve to 127.0.0.1 after the page loaded (DNS
rebinding): then the browser sends the page's requests to the scheduler as same-origin,
with the page's name in ``Host``. So an insecure scheduler answers only requests whose
``Host`` is an IP address (a client that used one is not being rebound), ``localhost``
(or a name under it) or a name given with ``--allowed-host``. A scheduler with API keys
needs no such check: a rebound page has neither the key nor the dashboard's cookie.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

LOOPBACK_NAMES = ("localhost",)


def host_name(header: str) -> str:
    """The name or address of a ``Host`` header, without its port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, _, _ = header.rpartition(":") if header.count(":") == 1 else (header, "", "")
    return name.rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(header: str | None, allowed: Sequence[str]) -> bool:
    """Whether a request with this ``Host`` is answered. ``allowed``: names given with
    ``--allowed-host`` (``.example.com`` allows every name under example.com)."""
    if not header:
        # HTTP/1.0 without Host: no browser sends that.
        return True
    name = host_name(header)
    if is_address(name):
        return True
    for given in (*LOOPBACK_NAMES, *allowed):
        given = given.strip().lower().rstrip(".")
        if given.startswith("."):
            if name.endswith(given) or name == given[1:]:
                return True
        elif name == given or (given == "localhost" and name.endswith(".localhost")):
            return True
    return False


def refusal(header: str | None) -> str:
    """What a request with a refused ``Host`` is told."""
    shown = host_name(header or "")[:100]
    return (
        f"Host {shown!r} is not answered by a scheduler running with --insecure (a guard "
        "against DNS rebinding): reach it by IP address or localhost, or start it with "
        f"--allowed-host {shown}"
    )
