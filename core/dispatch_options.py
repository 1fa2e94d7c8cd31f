"""The options of a call (``Function.options``) and the defaults of a function
(``@endpoint.function(...)``), checked in plain Python.

An endpoint registers its functions on every cold start: nothing here imports the
options' protobuf messages until a call is built with some (``to_proto``).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from .typecheck import describe

if TYPE_CHECKING:
    from ..proto.dispatch.sdk.v1 import call_pb2
    from ..proto.dispatchlet.scheduler.v1 import options_pb2

MAX_KEY_LENGTH = 256
"""The longest idempotency key (or concurrency key), in characters."""

MAX_COUNT = 2**31 - 1
"""The largest count an option holds (attempts, a concurrency, a rate)."""

Seconds = float | datetime.timedelta
"""A duration: a ``timedelta`` or a number of seconds."""


def key_problem(key: str, what: str = "an idempotency key") -> str | None:
    """Why ``key`` cannot be an idempotency key (or ``what``), or None."""
    if not key:
        return f"an empty {what.partition(' ')[2]}"
    if len(key) > MAX_KEY_LENGTH:
        return f"{what} longer than {MAX_KEY_LENGTH} characters"
    if not key.isprintable():
        # NUL above all: PostgreSQL's text cannot hold it.
        return f"{what} with a control character: {key!r}"
    return None


def seconds_of(value: object, name: str, *, zero: bool = False) -> float:
    """``value`` (a ``timedelta`` or seconds) in seconds: a ``TypeError`` for anything
    else, a ``ValueError`` for NaN, infinity or a negative one (or zero unless ``zero``)."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be a timedelta or seconds, got {describe(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite duration, got {seconds}")
    if seconds < 0 or (seconds == 0 and not zero):
        raise ValueError(f"{name} must be {'zero or more' if zero else 'positive'}, got {value}")
    return seconds


def count_of(value: object, name: str) -> int:
    """``value`` as a count of at least 1: a ``TypeError`` for a non-int, a ``ValueError``
    out of range."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if not 1 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be at least 1 (and at most {MAX_COUNT}), got {value}")
    return value


@dataclass(frozen=True)
class Backoff:
    """How long the scheduler waits before retrying a failed attempt: the n-th retry
    waits ``initial * multiplier ** (n - 1)``, at most ``maximum`` (seconds or
    ``timedelta``; None: the scheduler's cap), with jitter."""

    initial: float
    maximum: float | None = None
    multiplier: float = 2.0

    def __init__(
        self, initial: Seconds, maximum: Seconds | None = None, multiplier: float = 2.0
    ) -> None:
        first = seconds_of(initial, "Backoff initial")
        most = None if maximum is None else seconds_of(maximum, "Backoff maximum")
        if most is not None and most < first:
            raise ValueError(f"Backoff maximum ({most} s) is below its initial wait ({first} s)")
        if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool):
            raise TypeError(f"Backoff multiplier must be a number, got {describe(multiplier)}")
        if not (math.isfinite(multiplier) and multiplier >= 1):
            raise ValueError(f"Backoff multiplier must be at least 1, got {multiplier}")
        object.__setattr__(self, "initial", first)
        object.__setattr__(self, "maximum", most)
        object.__setattr__(self, "multiplier", float(multiplier))


@dataclass(frozen=True)
class CallSettings:
    """What a call asks of the scheduler beyond its function and input; None: not set
    (the function's default, else the scheduler's). Made by ``settings``, which checks
    each value."""

    key: str | None = None
    delay: float | None = None
    """Seconds after the scheduler stores the call before its first attempt."""
    at: datetime.datetime | None = None
    """The earliest time of its first attempt (aware)."""
    max_attempts: int | None = None
    timeout: float | None = None
    """Seconds one attempt may run."""
    backoff: Backoff | None = None
    expiration: float | None = None
    """Seconds the scheduler may take to run the call (from when it may start)."""
    concurrency_key: str | None = None
    concurrency: int | None = None
    concurrency_per_key: int | None = None
    rate_limit: tuple[int, float] | None = None
    """At most this many starts per this many seconds."""

    def over(self, defaults: CallSettings) -> CallSettings:
        """These settings, with ``defaults`` for those not set."""
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(defaults, **{k: v for k, v in given.items() if v is not None})

    def __post_init__(self) -> None:
        # Told once: a call's build asks it, every Poll of a workflow for each child.
        given = any(getattr(self, f.name) is not None for f in fields(self))
        object.__setattr__(self, "_given", given)

    def __bool__(self) -> bool:
        return bool(self.__dict__["_given"])

    def to_proto(self) -> options_pb2.CallOptions:
        """The ``CallOptions`` these settings make (all but the expiration, a field of the
        Call itself)."""
        from ..proto.dispatchlet.scheduler.v1 import options_pb2

        options = options_pb2.CallOptions()
        if self.key is not None:
            options.key = self.key
        if self.delay is not None:
            options.delay.FromNanoseconds(round(self.delay * 1e9))
        if self.at is not None:
            options.start_at.FromDatetime(self.at.astimezone(datetime.timezone.utc))
        if self.max_attempts is not None:
            options.max_attempts = self.max_attempts
        if self.timeout is not None:
            options.attempt_timeout.FromNanoseconds(round(self.timeout * 1e9))
        if self.backoff is not None:
            options.backoff.initial.FromNanoseconds(round(self.backoff.initial * 1e9))
            if self.backoff.maximum is not None:
                options.backoff.maximum.FromNanoseconds(round(self.backoff.maximum * 1e9))
            options.backoff.multiplier = self.backoff.multiplier
        if self.concurrency_key is not None:
            options.concurrency_key = self.concurrency_key
        if self.concurrency is not None:
            options.concurrency = self.concurrency
        if self.concurrency_per_key is not None:
            options.concurrency_per_key = self.concurrency_per_key
        if self.rate_limit is not None:
            options.rate_limit.count = self.rate_limit[0]
            options.rate_limit.period.FromNanoseconds(round(self.rate_limit[1] * 1e9))
        return options

    def apply(self, call: call_pb2.Call) -> call_pb2.Call:
        """Give ``call`` these settings (its expiration, its options); ``call`` itself."""
        if self.expiration is not None:
            call.expiration.FromNanoseconds(round(self.expiration * 1e9))
        options = self.to_proto()
        if options.ByteSize():
            from .call_options import set_call_options

            set_call_options(call, options)
        return call


NO_SETTINGS = CallSettings()


def settings(
    owner: str,
    *,
    key: object = None,
    delay: object = None,
    at: object = None,
    max_attempts: object = None,
    timeout: object = None,
    backoff: object = None,
    expiration: object = None,
    concurrency_key: object = None,
    concurrency: object = None,
    concurrency_per_key: object = None,
    rate_limit: object = None,
) -> CallSettings:
    """Checked settings; a ``TypeError`` or ``ValueError`` naming ``owner`` and the
    option for a value that is not one."""
    try:
        return CallSettings(
            key=_key(key, "key", "an idempotency key"),
            delay=None if delay is None else seconds_of(delay, "delay", zero=True),
            at=_aware(at),
            max_attempts=None if max_attempts is None else count_of(max_attempts, "max_attempts"),
            timeout=None if timeout is None else seconds_of(timeout, "timeout"),
            backoff=_backoff(backoff),
            expiration=None if expiration is None else seconds_of(expiration, "expiration"),
            concurrency_key=_key(concurrency_key, "concurrency_key", "a concurrency key"),
            concurrency=None if concurrency is None else count_of(concurrency, "concurrency"),
            concurrency_per_key=(
                None
                if concurrency_per_key is None
                else count_of(concurrency_per_key, "concurrency_per_key")
            ),
            rate_limit=_rate_limit(rate_limit),
        )
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}: {exc}") from None


def _key(value: object, name: str, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {describe(value)}")
    problem = key_problem(value, what)
    if problem is not None:
        raise ValueError(f"{name}: {problem}")
    return value


def _aware(value: object) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"at must be a datetime, got {describe(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"at must be an aware datetime (with a timezone, e.g. tzinfo=timezone.utc), "
            f"got the naive {value.isoformat()}"
        )
    return value


def _backoff(value: object) -> Backoff | None:
    if value is None or isinstance(value, Backoff):
        return value
    if isinstance(value, (int, float, datetime.timedelta)) and not isinstance(value, bool):
        return Backoff(value)
    raise TypeError(f"backoff must be a Backoff, a timedelta or seconds, got {describe(value)}")


def _rate_limit(value: object) -> tuple[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"rate_limit must be a pair (count, period), got {describe(value)}")
    count, period = value
    return count_of(count, "rate_limit count"), seconds_of(period, "rate_limit period")
