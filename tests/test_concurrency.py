"""Per-destination concurrency: a slow start, then additive increase on success,
multiplicative decrease on overload, under an optional cap."""

from __future__ import annotations

from dispatchlet.core.status import Status
from dispatchlet.scheduler.concurrency import Limiter, destination


def test_destinations_are_hosts_or_functions() -> None:
    assert destination("https://API.example.com/prefix/x") == "https://api.example.com"
    assert destination("http://user@host:8000") == "http://host:8000"
    arn = "arn:aws:lambda:us-east-1:123456789012:function:f"
    assert destination(arn) == arn


def succeed(limiter: Limiter, key: str, times: int) -> None:
    for _ in range(times):
        assert limiter.try_acquire(key)
        limiter.release(key, Status.OK)


def test_the_limit_grows_with_successes_and_halves_on_overload() -> None:
    limiter = Limiter(initial=4, threshold=32)
    assert [limiter.try_acquire("d") for _ in range(5)] == [True] * 4 + [False]
    for _ in range(4):
        limiter.release("d", Status.OK)
    # Slow start: a whole attempt per success, so a round trip's successes double it.
    assert limiter.windows["d"].limit == 8
    succeed(limiter, "d", 24)
    assert limiter.windows["d"].limit == 32  # and no further by whole attempts
    succeed(limiter, "d", 32)
    assert 32.9 < limiter.windows["d"].limit <= 33  # about one more per window of successes
    for _ in range(40):
        assert limiter.try_acquire("d")
        limiter.release("d", Status.OK)
    grown = limiter.limit("d")
    assert grown > 8
    assert limiter.try_acquire("d")
    limiter.release("d", Status.THROTTLED)
    assert limiter.limit("d") == grown // 2 or limiter.limit("d") == (grown + 1) // 2
    for status in (Status.TIMEOUT, Status.TEMPORARY_ERROR) * 10:
        limiter.try_acquire("d")
        limiter.release("d", status)
    assert limiter.limit("d") == 1  # never below one attempt at a time


def test_overload_ends_the_slow_start() -> None:
    limiter = Limiter(initial=4, threshold=32)
    succeed(limiter, "d", 2)
    assert limiter.windows["d"].limit == 6
    assert limiter.try_acquire("d")
    limiter.release("d", Status.THROTTLED)
    assert limiter.windows["d"].limit == 3
    succeed(limiter, "d", 3)  # now about one more per window of successes, not three more
    assert 3.5 < limiter.windows["d"].limit < 4
    # A destination that stalls shows overload too.
    clock = [0.0]
    stalling = Limiter(initial=4, threshold=32, clock=lambda: clock[0], stall_floor=1.0)
    assert stalling.try_acquire("s")
    clock[0] = 5.0
    assert stalling.room("s") == 0  # stalled: halved to 2
    stalling.release("s", Status.OK)
    succeed(stalling, "s", 2)
    assert 2.0 < stalling.windows["s"].limit < 4  # whole attempts would have made 5


def test_the_slow_start_stops_at_the_cap() -> None:
    limiter = Limiter(initial=4, threshold=32, cap=10)
    succeed(limiter, "d", 20)
    assert limiter.limit("d") == 10


def test_destinations_have_their_own_limits_and_the_cap_holds() -> None:
    limiter = Limiter(initial=4, cap=6)
    for _ in range(100):
        limiter.try_acquire("a")
        limiter.release("a", Status.OK)
    assert limiter.limit("a") == 6
    assert limiter.limit("b") == 4
    limiter.try_acquire("b")
    limiter.release("b", None)  # not a verdict of the destination: no change
    assert limiter.limit("b") == 4
    # A final error that is the caller's fault says nothing about load.
    limiter.try_acquire("b")
    limiter.release("b", Status.INVALID_ARGUMENT)
    assert limiter.limit("b") >= 4


def test_retry_delays_double_up_to_the_cap_with_half_jitter() -> None:
    import random

    from dispatchlet.scheduler.retry import RetryPolicy

    policy = RetryPolicy(base=0.5, cap=8.0)
    rng = random.Random(7)
    for attempts, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay(attempts, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays)
        assert max(delays) <= ceiling
