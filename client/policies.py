"""A call's own retry policy and limits (``CallOptions``) as ``CallInfo`` and
``ScheduleInfo`` tell them: None where the scheduler's setting applies, or no limit."""

from __future__ import annotations

import datetime
from typing import Any

from ..proto.dispatchlet.scheduler.v1 import options_pb2


def policy_fields(options: options_pb2.CallOptions) -> dict[str, Any]:
    """``max_attempts``, ``timeout``, ``concurrency``, ``concurrency_key``,
    ``concurrency_per_key`` and ``rate_limit`` of ``options``."""
    timeout = options.attempt_timeout.ToTimedelta() if options.HasField("attempt_timeout") else None
    rate_limit: tuple[int, datetime.timedelta] | None = None
    if options.HasField("rate_limit"):
        rate_limit = (options.rate_limit.count, options.rate_limit.period.ToTimedelta())
    return {
        "max_attempts": options.max_attempts or None,
        "timeout": timeout or None,
        "concurrency": options.concurrency or None,
        "concurrency_key": options.concurrency_key,
        "concurrency_per_key": options.concurrency_per_key or None,
        "rate_limit": rate_limit,
    }
