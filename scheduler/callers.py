"""Which caller runs an attempt: signed HTTP for ``http(s)://`` endpoints, ``Invoke``
for ``arn:aws:lambda:`` ones (made, and boto3 imported, on the first ARN)."""

from __future__ import annotations

from ..proto.dispatch.sdk.v1 import function_pb2
from .http_caller import HttpCaller
from .lambda_caller import ClientFactory, LambdaCaller, boto3_client
from .outcome import Caller, Outcome

__all__ = ["Caller", "Callers", "Outcome"]


class Callers:
    """Every kind of endpoint, behind one ``run``."""

    def __init__(self, http: HttpCaller, lambda_client: ClientFactory = boto3_client) -> None:
        self.http = http
        self._lambda_client = lambda_client
        self._lambda: LambdaCaller | None = None

    async def run(
        self, endpoint: str, request: function_pb2.RunRequest, *, timeout: float
    ) -> Outcome:
        if endpoint.startswith("arn:"):
            if self._lambda is None:
                self._lambda = LambdaCaller(self._lambda_client, timeout=timeout)
            return await self._lambda.run(endpoint, request, timeout=timeout)
        return await self.http.run(endpoint, request, timeout=timeout)

    async def close(self) -> None:
        await self.http.close()
        if self._lambda is not None:
            await self._lambda.close()
