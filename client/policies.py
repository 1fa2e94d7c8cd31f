"""A call's own retry policy and limits (``CallOptions``) as ``CallInfo`` and
``ScheduleInfo`` tell them: None where the scheduler's setting applies, or no limit."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

from ..core.dispatch_options import Backoff
from ..proto.dispatchlet.scheduler.v1 import options_pb2


def policy_fields(options: options_pb2.CallOptions) -> dict[str, Any]:
    """``max_attempts``, ``timeout``, ``backoff``, ``concurrency``, ``concurrency_key``,
    ``concurrency_per_key`` and ``rate_limit`` of ``options``."""
    timeout = options.attempt_timeout.ToTimedelta() if options.HasField("attempt_timeout") else None
    rate_limit: tuple[int, datetime.timedelta] | None = None
    if options.HasField("rate_limit"):
        rate_limit = (options.rate_limit.count, options.rate_limit.period.ToTimedelta())
    return {
        "max_attempts": options.max_attempts or None,
        "timeout": timeout or None,
        "backoff": _backoff(options),
        "concurrency": options.concurrency or None,
        "concurrency_key": options.concurrency_key,
        "concurrency_per_key": options.concurrency_per_key or None,
        "rate_limit": rate_limit,
    }


def _backoff(options: options_pb2.CallOptions) -> Backoff | None:
    """The call's own backoff; None without a first wait of its own (0 is the
    scheduler's), as ``Backoff`` always has one."""
    given = options.backoff
    initial = given.initial.ToTimedelta()
    if not options.HasField("backoff") or initial <= datetime.timedelta(0):
        return None
    maximum = given.maximum.ToTimedelta() or None
    with contextlib.suppress(ValueError):  # a JSON client's cap below its first wait
        return Backoff(initial, maximum, given.multiplier or 2.0)
    return Backoff(initial, None, given.multiplier or 2.0)
