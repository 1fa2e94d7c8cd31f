"""What a function can know about the run it is part of."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RunContext:
    """Identity and deadline of one run.

    A function receives it by declaring a parameter annotated ``RunContext``; that
    parameter is not part of the function's input.
    """

    function: str
    dispatch_id: str = ""
    parent_dispatch_id: str = ""
    root_dispatch_id: str = ""
    creation_time: datetime | None = None
    expiration_time: datetime | None = None

    def time_remaining(self) -> timedelta | None:
        """Time left before the run expires, or None when it has no deadline."""
        if self.expiration_time is None:
            return None
        return timedelta(seconds=self.expiration_time.timestamp() - time.time())
