"""The scheduler's settings that clients and the command line share, importable without
the scheduler's own dependencies (aiohttp)."""

from __future__ import annotations

API_KEY_ENV = "DISPATCH_API_KEY"
"""API keys, comma-separated for rotation: the scheduler accepts them, clients send one."""
DEFAULT_PORT = 4450
