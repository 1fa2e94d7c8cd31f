"""Starting calls from code: what ``Function.dispatch`` and ``Endpoint.batch`` hand
their calls to.

The core does no I/O, so the network client (``dispatchlet.client.Client``) is plugged
in: per endpoint (``endpoint.client = Client(...)``), or by default a client made from
the environment (``DISPATCH_API_URL``, ``DISPATCH_API_KEY``) the first time one is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..proto.dispatch.sdk.v1 import call_pb2

API_URL_ENV = "DISPATCH_API_URL"
"""The scheduler's URL, for clients."""
API_KEY_ENV = "DISPATCH_API_KEY"
"""API keys, comma-separated for rotation: the scheduler accepts them, clients send one."""
DEFAULT_API_URL = "http://127.0.0.1:4450"
"""The local scheduler (``dispatchlet scheduler``, ``dispatchlet dev``)."""
REQUEST_ID_HEADER = "Idempotency-Key"
"""The header of a Dispatch's request id (as the IETF httpapi draft and Stripe name it):
the scheduler answers a repeated one with the dispatch ids the first request got."""


def split_api_keys(text: str) -> list[str]:
    """The keys of ``text``, as ``DISPATCH_API_KEY`` lists them: comma-separated, the
    first the one a client sends."""
    return [key.strip() for key in text.split(",") if key.strip()]


class Dispatcher(Protocol):
    """What starts calls: one atomic request, dispatch ids in order."""

    def dispatch(self, calls: Sequence[call_pb2.Call]) -> list[str]: ...


_factory: Callable[[], Dispatcher] | None = None
_default: Dispatcher | None = None


def set_default_factory(factory: Callable[[], Dispatcher]) -> None:
    """Where the default dispatcher comes from (the package sets the client's)."""
    global _factory, _default
    _factory, _default = factory, None


def default_dispatcher() -> Dispatcher:
    global _default
    if _default is None:
        if _factory is None:
            raise RuntimeError("no dispatcher: import dispatchlet, or set endpoint.client")
        _default = _factory()
    return _default


class Batch:
    """Calls gathered to be dispatched together, atomically, when the block ends.

    ``with endpoint.batch() as batch: batch.add(greet, "World")``; after the block,
    ``batch.dispatch_ids`` holds their ids in order. Nothing is dispatched when the
    block raises.
    """

    def __init__(self, dispatcher: Callable[[], Dispatcher]) -> None:
        self._dispatcher = dispatcher
        self.calls: list[call_pb2.Call] = []
        self.dispatch_ids: list[str] = []

    def add(self, function: object, *args: object, **kwargs: object) -> None:
        """Add a call of ``function`` (a registered function) with these arguments, or a
        ``Call`` built already (``function.build_call(...)``)."""
        if isinstance(function, call_pb2.Call):
            if args or kwargs:
                raise TypeError("a built Call takes no arguments")
            self.calls.append(function)
            return
        build = getattr(function, "build_call", None)
        if build is None:
            raise TypeError(f"expected a registered function or a Call, got {function!r}")
        self.calls.append(build(*args, **kwargs))

    def dispatch(self) -> list[str]:
        """Dispatch what was added (once); their ids in order."""
        if self.calls and not self.dispatch_ids:
            self.dispatch_ids = self._dispatcher().dispatch(self.calls)
        return self.dispatch_ids

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            self.dispatch()
