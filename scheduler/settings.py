"""The scheduler's settings that clients and the command line share, importable without
the scheduler's own dependencies (aiohttp)."""

from __future__ import annotations

from ..core.dispatching import API_KEY_ENV

DEFAULT_PORT = 4450

__all__ = ["API_KEY_ENV", "DEFAULT_PORT"]
