"""The callers' contract: what running one attempt on an endpoint comes to (``Outcome``),
the one method every caller has (``Caller``), and the largest answer a caller reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..core.status import Status
from ..proto.dispatch.sdk.v1 import function_pb2

MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The largest answer the Lambda caller reads from a function (AWS allows 6 MB); a
larger one is INVALID_RESPONSE. The HTTP caller's follows ``--max-output-size``."""
ANSWER_MARGIN = 64 * 1024
"""What an answer may hold beside its output (or Poll state): the RunResponse around
it, a Poll's calls; an answer read is at most the output limit and this."""


def oversized_output(size: int, limit: int, what: str = "an output") -> str | None:
    """Why an answer's output (its ``CallResult``: the output or the error), or ``what``
    else it stores, of ``size`` bytes is not stored under ``limit``, or None."""
    if size <= limit:
        return None
    return (
        f"the endpoint answered {what} of {size} bytes, larger than the scheduler's limit "
        f"of {limit} bytes (--max-output-size)"
    )


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: the endpoint's RunResponse, or a status and a reason."""

    status: Status
    response: function_pb2.RunResponse | None = None
    error_type: str = ""
    message: str = ""
    retry_after: float | None = None
    """Seconds the endpoint asked to wait before the next attempt."""
    result: bytes | None = None
    """The response's ``exit.result`` serialized, once ``settled`` did (for a large one,
    the response then holds only its status and its error's type and message)."""


def settled(outcome: Outcome) -> Outcome:
    """``outcome`` with its answer's result serialized once and, when that is large, the
    parsed answer, which holds the output a second time, let go: what is recorded and
    logged of an attempt needs the result's bytes, and of the response only its small
    fields."""
    response = outcome.response
    if response is None or outcome.result is not None or response.WhichOneof("directive") != "exit":
        return outcome
    if response.exit.HasField("tail_call"):
        return outcome
    result = response.exit.result.SerializeToString()
    if len(result) > SETTLED_SIZE:
        light = function_pb2.RunResponse(status=response.status)
        light.exit.result.SetInParent()  # an exit still, whatever its error
        error = response.exit.result.error
        light.exit.result.error.type = error.type
        light.exit.result.error.message = error.message
        response = light
    return Outcome(
        outcome.status, response, outcome.error_type, outcome.message, outcome.retry_after, result
    )


SETTLED_SIZE = 64 * 1024
"""From what size of an answer's result on ``settled`` lets the parsed answer go (a
smaller one is kept: building its lighter copy costs more than it saves)."""


class Caller(Protocol):
    """Runs attempts: signed HTTP, Lambda ``Invoke``, or a fake in tests."""

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome: ...

    async def close(self) -> None: ...
