"""Direct invocation: the scheduler calls ``Invoke`` on an ``arn:aws:lambda:...``
endpoint with a JSON string holding the base64 of a serialized ``RunRequest``; the answer
is the base64 of the ``RunResponse``. No HTTP and no signature: IAM decides who may
invoke."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError

from ...core.endpoint import Endpoint
from ...core.status import Status
from ...proto.dispatch.sdk.v1 import function_pb2
from .source import EXPECTED, UnsupportedEvent


def invoke(
    endpoint: Endpoint, payload: str, trace_context: Mapping[str, str] | None = None
) -> tuple[str, Status]:
    """The answer to a direct invocation and its run status; ``trace_context``: the
    caller's span context (``traceparent``), from the invocation's client context."""
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise UnsupportedEvent(
            f"direct invocation payload is not standard base64: {EXPECTED}"
        ) from None
    try:
        request = function_pb2.RunRequest.FromString(data)
    except DecodeError as exc:
        raise UnsupportedEvent(
            f"direct invocation payload is not a serialized dispatch.sdk.v1.RunRequest ({exc})"
        ) from None
    result = endpoint.run(request, trace_context=trace_context)
    return base64.b64encode(result.SerializeToString()).decode("ascii"), Status(result.status)


def trace_context(context: Any) -> dict[str, str] | None:
    """The span context a direct invocation's caller sent in its client context (the
    scheduler's attempt: ``lambda_caller.client_context``), as Lambda's runtime gives it:
    ``context.client_context.custom``; None when there is none."""
    custom = getattr(getattr(context, "client_context", None), "custom", None)
    if not isinstance(custom, dict):
        return None
    return {k: v for k, v in custom.items() if isinstance(k, str) and isinstance(v, str)}
