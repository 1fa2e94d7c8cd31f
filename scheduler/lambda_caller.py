"""Calling a function endpoint that is an AWS Lambda function ARN: ``Invoke`` with the
base64 of the RunRequest as a JSON string, the base64 of the RunResponse back. No HTTP
and no signature: IAM decides who may invoke.

boto3 is imported when the first ARN is called (or dispatched), never for HTTP
endpoints; credentials and configuration come from the usual AWS sources. A scheduler
without it refuses ARN endpoints (``missing_support``) and ends a call to one at once,
never retrying a module that will not appear. What comes back becomes an ``Outcome``:

- a payload holding a RunResponse: that response;
- a function error: ``UnsupportedEvent`` (the function is no Dispatch endpoint)
  INVALID_ARGUMENT, final; "Task timed out" TIMEOUT; any other TEMPORARY_ERROR (retried);
- the Lambda API's errors: throttling THROTTLED, an unknown function NOT_FOUND, access
  denied PERMISSION_DENIED, a refused request INVALID_ARGUMENT; the service's own
  failures TEMPORARY_ERROR, no connection TCP_ERROR, no answer in time TIMEOUT.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from ..core import tracing
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import function_pb2
from .outcome import MAX_ANSWER_BYTES, Outcome
from .settings import DEFAULT_ATTEMPT_TIMEOUT

MAX_CLIENT_CONTEXT = 3583
"""The longest ``ClientContext`` Lambda's Invoke takes, in bytes of base64."""

_ERROR_STATUSES = {
    "TooManyRequestsException": Status.THROTTLED,
    "ThrottlingException": Status.THROTTLED,
    "EC2ThrottledException": Status.THROTTLED,
    "ResourceNotFoundException": Status.NOT_FOUND,
    "AccessDeniedException": Status.PERMISSION_DENIED,
    "UnrecognizedClientException": Status.UNAUTHENTICATED,
    "InvalidSignatureException": Status.UNAUTHENTICATED,
    "ExpiredTokenException": Status.UNAUTHENTICATED,
    "InvalidRequestContentException": Status.INVALID_ARGUMENT,
    "RequestTooLargeException": Status.INVALID_ARGUMENT,
    "InvalidParameterValueException": Status.INVALID_ARGUMENT,
    "ResourceNotReadyException": Status.TEMPORARY_ERROR,
    "ResourceConflictException": Status.TEMPORARY_ERROR,
}

ClientFactory = Callable[[str, float], Any]

NO_BOTO3 = (
    "arn:aws:lambda: endpoints need boto3, which this scheduler does not have: "
    "pip install 'dispatchlet[aws]' (or boto3 itself) where it runs"
)


def missing_support(endpoint: str) -> str | None:
    """Why this scheduler cannot call ``endpoint``, or None: a Lambda ARN needs boto3."""
    if not endpoint.startswith("arn:"):
        return None
    return None if _has_boto3() else NO_BOTO3


@functools.cache
def _has_boto3() -> bool:
    # Found out once per process (the first ARN will need boto3 anyway): a Dispatch of a
    # thousand ARN calls to a scheduler without it does not search sys.path a thousand
    # times.
    try:
        import boto3  # noqa: F401
        import botocore  # noqa: F401
    except ImportError:
        return False
    return True


def boto3_client(region: str, timeout: float) -> Any:
    """A Lambda client for ``region``: one attempt per call (the scheduler retries),
    reading for up to ``timeout`` seconds."""
    import boto3  # here: only ARN endpoints need it
    from botocore.config import Config

    config = Config(
        region_name=region,
        read_timeout=max(1, int(timeout) + 1),
        connect_timeout=10,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    return boto3.session.Session().client("lambda", config=config)


class LambdaCaller:
    """Invokes Lambda functions by ARN; one client per region."""

    def __init__(
        self, client_factory: ClientFactory = boto3_client, timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    ):
        self._factory = client_factory
        self._timeout = timeout
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, region: str) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = self._factory(region, self._timeout)
            return client

    async def close(self) -> None:
        self._clients.clear()

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        parts = endpoint.split(":")
        if len(parts) < 7 or parts[2] != "lambda" or not parts[3]:
            return Outcome(
                Status.INVALID_ARGUMENT,
                error_type="ValueError",
                message=f"invalid Lambda function ARN {endpoint[:200]!r}",
            )
        payload = json.dumps(base64.b64encode(request.SerializeToString()).decode("ascii"))
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._invoke, parts[3], endpoint, payload, client_context()),
                timeout,
            )
        except ImportError as exc:
            # Installing a package takes a person, not a retry: final.
            return Outcome(Status.PERMANENT_ERROR, error_type=type(exc).__name__, message=NO_BOTO3)
        except (TimeoutError, asyncio.TimeoutError):
            return Outcome(
                Status.TIMEOUT, error_type="TimeoutError", message=f"no answer in {timeout:g} s"
            )

    def _invoke(self, region: str, arn: str, payload: str, context: str | None) -> Outcome:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        try:
            extra = {"ClientContext": context} if context else {}
            answer = self._client(region).invoke(
                FunctionName=arn,
                InvocationType="RequestResponse",
                Payload=payload.encode(),
                **extra,
            )
            body = answer["Payload"].read(MAX_ANSWER_BYTES + 1)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            status = _ERROR_STATUSES.get(code, Status.TEMPORARY_ERROR)
            return Outcome(status, error_type=code or "ClientError", message=message)
        except ReadTimeoutError as exc:
            return Outcome(Status.TIMEOUT, error_type=type(exc).__name__, message=str(exc))
        except (EndpointConnectionError, ConnectionError) as exc:
            return Outcome(Status.TCP_ERROR, error_type=type(exc).__name__, message=str(exc))
        if len(body) > MAX_ANSWER_BYTES:
            return Outcome(
                Status.INVALID_RESPONSE,
                error_type="InvalidResponse",
                message=f"the function answered more than {MAX_ANSWER_BYTES} bytes",
            )
        if answer.get("FunctionError"):
            return _function_error(body)
        return _decode(body)


def client_context() -> str | None:
    """The attempt's span context (``traceparent``) for the function, as Lambda carries
    a caller's context to it: the base64 of a JSON object whose ``custom`` member the
    function reads as ``context.client_context.custom``. None without tracing or a span,
    or when it would not fit Lambda's limit."""
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    if not carrier:
        return None
    encoded = base64.b64encode(json.dumps({"custom": carrier}).encode()).decode("ascii")
    return encoded if len(encoded) <= MAX_CLIENT_CONTEXT else None


def _function_error(body: bytes) -> Outcome:
    try:
        error = json.loads(body)
    except ValueError:
        error = {}
    if not isinstance(error, dict):
        error = {}
    kind = str(error.get("errorType") or "FunctionError")
    message = str(error.get("errorMessage") or body[:500].decode("utf-8", "replace"))
    if kind.endswith("UnsupportedEvent"):
        status = Status.INVALID_ARGUMENT  # not a Dispatch endpoint: retrying cannot help
    elif "Task timed out" in message:
        status = Status.TIMEOUT
    else:
        status = Status.TEMPORARY_ERROR
    return Outcome(status, error_type=kind, message=message)


def _decode(body: bytes) -> Outcome:
    try:
        text = json.loads(body)
        if not isinstance(text, str):
            raise ValueError("the payload is not a JSON string")
        response = function_pb2.RunResponse.FromString(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, RuntimeError, DecodeError) as exc:
        return Outcome(
            Status.INVALID_RESPONSE,
            error_type="InvalidResponse",
            message=f"the function's answer is not a base64 RunResponse: {exc}"[:500],
        )
    return Outcome(Status.OK, response)
