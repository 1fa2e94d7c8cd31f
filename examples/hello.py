"""A small Dispatch endpoint: the app of the quick start.

dispatchlet dev examples/hello.py greet_flaky World   # the whole loop: one call, retried
dispatchlet dev examples/hello.py                      # the loop, for `dispatchlet dispatch`
dispatchlet serve examples/hello.py                    # the endpoint alone
dispatchlet call greet World                           # one direct call, after serve's export
"""

from __future__ import annotations

import asyncio

from dispatchlet import Endpoint, RunContext, TailCall

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


# Attempts seen per call, in this process: enough for the example to fail only once.
_attempts: dict[str, int] = {}


@endpoint.function
def greet_flaky(name: str, context: RunContext) -> str:
    """Fails its first attempt with a TimeoutError, which the scheduler retries; the
    dispatch id, the same on every attempt, is the key to make work idempotent."""
    _attempts[context.dispatch_id] = _attempts.get(context.dispatch_id, 0) + 1
    if _attempts[context.dispatch_id] == 1:
        raise TimeoutError("the greeting service is slow today (the scheduler retries)")
    return f"Hello, {name}!"


@endpoint.function
def welcome(name: str) -> TailCall:
    """A tail call hands the work over: the scheduler calls greet, and its result
    becomes the result of this call."""
    return greet.tail_call(name.strip().title())
