"""How many wrong keys the login form takes from one address: a few, then it waits.

An API key is too long to guess, but a form that takes every guess at once lets a script
spend the scheduler's CPU on them and fill its logs. Each address may fail ``allowed``
times in ``window`` seconds; past that it is answered 429 with ``Retry-After`` until its
oldest failure leaves the window. A right key is always taken (once the address may try)
and forgets its failures. The addresses remembered are bounded: past ``tracked``, the one
that failed least recently is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict, deque

ALLOWED = 10
WINDOW = 300.0
TRACKED = 10_000


class FailedLogins:
    """The recent failed logins of each address."""

    def __init__(
        self, *, allowed: int = ALLOWED, window: float = WINDOW, tracked: int = TRACKED
    ) -> None:
        self.allowed = allowed
        self.window = window
        self.tracked = tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, address: str, now: float) -> float:
        """Seconds before ``address`` may try a key again (0: now)."""
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0.0
        if len(failures) < self.allowed:
            return 0.0
        return failures[0] + self.window - now

    def failed(self, address: str, now: float) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.allowed)
        failures.append(now)
        self._failures[address] = failures
        while len(self._failures) > self.tracked:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
