"""Awaiting with a time limit, without a task of its own.

``asyncio.wait_for`` wraps what it awaits in a new task: one more task, and two more
turns of the event loop, for every Run request and every API request body. From Python
3.11 on, ``asyncio.timeout`` cancels the awaiting task itself instead, with the same
outcome (``TimeoutError`` once ``seconds`` have passed, what was awaited cancelled).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
        """``await awaitable``, or ``TimeoutError`` after ``seconds`` (None: no limit)."""
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
        """``await awaitable``, or ``TimeoutError`` after ``seconds`` (None: no limit)."""
        return await asyncio.wait_for(awaitable, seconds)
