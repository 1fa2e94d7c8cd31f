"""Running a coroutine to completion from synchronous code, on an asyncio event loop.

asyncio is imported when a coroutine first runs, not with this module: it costs
cold-start time and only async functions need it.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

_loops = threading.local()


def run_coroutine(awaitable: Awaitable[object], timeout: float | None) -> object:
    """Run a coroutine to completion on this thread's event loop, within ``timeout``.

    A thread that already runs a loop (a notebook, an async server) hands the coroutine
    to a fresh thread instead.
    """
    import asyncio

    async def bounded() -> object:
        return await asyncio.wait_for(awaitable, timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _thread_loop().run_until_complete(bounded())
    return _in_fresh_thread(bounded())


def _thread_loop() -> asyncio.AbstractEventLoop:
    import asyncio

    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops.loop = loop
    return loop


def _in_fresh_thread(coro: Coroutine[Any, Any, object]) -> object:
    import asyncio

    outcome: list[object] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(asyncio.run(coro))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="dispatchlet-coroutine")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
