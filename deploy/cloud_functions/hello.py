"""A small Dispatch endpoint: the app of the quick start.

dispatchlet serve examples/hello.py     # prints an `export DISPATCH_SIGNING_KEY=...` line
dispatchlet call greet World            # in another terminal, after that export
dispatchlet call add '{"a": 1, "b": 2}'
"""

from __future__ import annotations

import asyncio

from dispatchlet import Endpoint, TailCall

# The verification key comes from DISPATCH_VERIFICATION_KEY; `dispatchlet serve`
# makes one for its session when that is unset.
endpoint = Endpoint()


@endpoint.function
def greet(name: str) -> str:
    """One parameter: the input is the value itself."""
    return f"Hello, {name}!"


@endpoint.function
def add(a: int, b: int) -> int:
    """Several parameters: the input is an object of named ones, or a list."""
    return a + b


@endpoint.function
async def greet_later(name: str, seconds: float = 0.1) -> str:
    """Coroutines work too."""
    await asyncio.sleep(seconds)
    return f"Hello again, {name}!"


@endpoint.function
def divide(a: float, b: float) -> float:
    """An exception fails the call; a ValueError reports INVALID_ARGUMENT."""
    if b == 0:
        raise ValueError("cannot divide by zero")
    return a / b


@endpoint.function
def welcome(name: str) -> TailCall:
    """A tail call hands the work over: the scheduler calls greet, and its result
    becomes the result of this call."""
    return greet.tail_call(name.strip().title())
