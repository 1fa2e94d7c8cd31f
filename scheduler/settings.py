"""The scheduler's settings that the command line shares, importable without the
scheduler's own dependencies (aiohttp)."""

from __future__ import annotations

DEFAULT_PORT = 4450
