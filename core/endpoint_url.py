"""A function endpoint's base URL: where its Run RPC is, and what a signature covers.

Both ends need it: a caller signs for this authority and path, and an endpoint behind a
proxy checks signatures against them (``Endpoint(endpoint_url=...)``).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from .connect import RUN_PATH


class EndpointURL(NamedTuple):
    """``scheme://authority/prefix`` of an endpoint, parsed.

    ``authority`` is as written in the URL (user information dropped); ``run_path`` is
    the prefix followed by the Run RPC's path.
    """

    scheme: str
    authority: str
    run_path: str

    @property
    def run_url(self) -> str:
        """The URL a Run request is sent to."""
        return urlunsplit((self.scheme, self.authority, self.run_path, "", ""))


def parse_endpoint_url(url: str) -> EndpointURL:
    """The parts of an endpoint's base URL; ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid endpoint URL {url!r}: expected http(s)://host[:port][/path]")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid endpoint URL {url!r}: it must have no query or fragment")
    authority = parts.netloc.rpartition("@")[2]
    return EndpointURL(parts.scheme, authority, parts.path.rstrip("/") + RUN_PATH)
