"""The scheduler's settings that the command line shares, importable without the
scheduler's own dependencies (aiohttp)."""

from __future__ import annotations

from ..core.endpoint import DEFAULT_MAX_BODY_SIZE

DEFAULT_PORT = 4450
DEFAULT_MAX_INPUT_SIZE = DEFAULT_MAX_BODY_SIZE
"""The largest input a call may have, in bytes (its serialized ``Any``): an endpoint's
own default limit on a request's body, which would refuse a larger one anyway."""
