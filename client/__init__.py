"""The client of the scheduler: ``DispatchService/Dispatch`` and ``CallService``.

    from dispatchlet import Client

    client = Client()                      # DISPATCH_API_URL (default the local
                                           # scheduler), DISPATCH_API_KEY
    (dispatch_id,) = client.dispatch([greet.build_call("World")])
    info = client.wait(dispatch_id)        # CallInfo: status, output, error, attempts...

Plain blocking calls over one kept-alive HTTP connection (``http.client``), so it works
from any code, sync or not. A Connect error from the scheduler raises ``ClientError``
with its code and message; a scheduler that cannot be reached raises ``ClientError``
with code ``unavailable``.
"""

from __future__ import annotations

import datetime
import http.client
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from google.protobuf import any_pb2, message

from ..core import values
from ..core.connect import PROTO
from ..core.connect_client import parse_error
from ..core.dispatching import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from ..proto.dispatchlet.scheduler.v1 import calls_pb2

M = TypeVar("M", bound=message.Message)

_WAIT_STEP = 50  # seconds per Wait RPC, under the scheduler's limit


class ClientError(Exception):
    """The scheduler refused a request (a Connect error), or could not be reached."""

    def __init__(self, code: str, message: str, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


@dataclass(frozen=True)
class CallError:
    type: str
    message: str


@dataclass(frozen=True)
class CallInfo:
    """A call as the scheduler holds it."""

    dispatch_id: str
    function: str
    endpoint: str
    status: Status | None
    """The final status; None while the call is not done."""
    done: bool
    output: object
    """The decoded output of an OK call (None otherwise)."""
    error: CallError | None
    """The final error, or the last one while the call is retried."""
    attempts: int
    parent_dispatch_id: str
    root_dispatch_id: str
    created_at: datetime.datetime
    finished_at: datetime.datetime | None
    expires_at: datetime.datetime
    state: str
    coroutine_state: any_pb2.Any | None = None
    """While the call is suspended by a Poll: the state its endpoint returned (for a
    dispatchlet workflow, its journal; see ``dispatchlet check-replay``)."""

    @classmethod
    def from_proto(cls, info: calls_pb2.CallInfo, *, allow_pickle: bool = False) -> CallInfo:
        done = info.done
        output = None
        if info.HasField("output"):
            try:
                output = values.from_any(info.output, allow_pickle=allow_pickle)
            except values.DecodeError:
                output = info.output
        error = CallError(info.error.type, info.error.message) if info.HasField("error") else None
        return cls(
            dispatch_id=info.dispatch_id,
            function=info.function,
            endpoint=info.endpoint,
            status=Status(info.status) if done and info.status else None,
            done=done,
            output=output,
            error=error,
            attempts=info.attempts,
            parent_dispatch_id=info.parent_dispatch_id,
            root_dispatch_id=info.root_dispatch_id,
            created_at=info.created_at.ToDatetime(datetime.timezone.utc),
            finished_at=info.finished_at.ToDatetime(datetime.timezone.utc)
            if info.HasField("finished_at")
            else None,
            expires_at=info.expires_at.ToDatetime(datetime.timezone.utc),
            state=info.state,
            coroutine_state=info.coroutine_state if info.HasField("coroutine_state") else None,
        )


class Client:
    """The scheduler at ``api_url`` (default ``DISPATCH_API_URL``, then the local
    scheduler at http://127.0.0.1:4450), authenticated with ``api_key`` (default
    ``DISPATCH_API_KEY``)."""

    def __init__(
        self, api_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0
    ) -> None:
        self.api_url = (api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        parts = urlsplit(self.api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid scheduler URL {self.api_url!r}: expected http(s)://host")
        self._parts = parts
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        # DISPATCH_API_KEY may list several keys (the scheduler's rotation): send the first.
        self.api_key = key.split(",")[0].strip()
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    # --- DispatchService -------------------------------------------------------------

    def dispatch(self, calls: Iterable[call_pb2.Call]) -> list[str]:
        """Start ``calls`` in one atomic request; their dispatch ids, in order."""
        request = dispatch_pb2.DispatchRequest(calls=list(calls))
        answer = self._rpc(
            "/dispatch.sdk.v1.DispatchService/Dispatch", request, dispatch_pb2.DispatchResponse
        )
        return list(answer.dispatch_ids)

    # --- CallService ---------------------------------------------------------------

    def get(self, dispatch_id: str) -> CallInfo:
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Get",
            calls_pb2.GetRequest(dispatch_id=dispatch_id),
            calls_pb2.GetResponse,
        )
        return CallInfo.from_proto(answer.call)

    def wait(self, dispatch_id: str, timeout: float | None = None) -> CallInfo:
        """The call once it is done, or as it is when ``timeout`` seconds have passed
        (None: as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _WAIT_STEP if deadline is None else max(0.0, deadline - time.monotonic())
            request = calls_pb2.WaitRequest(dispatch_id=dispatch_id)
            request.timeout.FromMilliseconds(int(min(step, _WAIT_STEP) * 1000))
            answer = self._rpc(
                "/dispatchlet.scheduler.v1.CallService/Wait",
                request,
                calls_pb2.WaitResponse,
                timeout=min(step, _WAIT_STEP) + self.timeout,
            )
            info = CallInfo.from_proto(answer.call)
            if info.done or (deadline is not None and time.monotonic() >= deadline):
                return info

    def cancel(self, dispatch_id: str) -> int:
        """End the call and its unfinished descendants; how many were ended."""
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Cancel",
            calls_pb2.CancelRequest(dispatch_id=dispatch_id),
            calls_pb2.CancelResponse,
        )
        return int(answer.cancelled)

    def list(
        self,
        *,
        state: str | None = None,
        function: str | None = None,
        root_dispatch_id: str | None = None,
        page_size: int = 100,
    ) -> Iterator[CallInfo]:
        """The calls matching every filter given, in creation order, fetched a page at a
        time as they are iterated."""
        token = ""
        while True:
            request = calls_pb2.ListRequest(
                state=state or "",
                function=function or "",
                root_dispatch_id=root_dispatch_id or "",
                page_size=page_size,
                page_token=token,
            )
            answer = self._rpc(
                "/dispatchlet.scheduler.v1.CallService/List", request, calls_pb2.ListResponse
            )
            for info in answer.calls:
                yield CallInfo.from_proto(info)
            token = answer.next_page_token
            if not token:
                return

    # --- transport -------------------------------------------------------------------

    def _rpc(
        self, path: str, request: message.Message, kind: type[M], *, timeout: float | None = None
    ) -> M:
        headers = {"Content-Type": PROTO, "User-Agent": "dispatchlet-client"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = request.SerializeToString()
        prefix = self._parts.path.rstrip("/")
        with self._lock:
            status, content_type, data = self._exchange(prefix + path, body, headers, timeout)
        if status != 200:
            error = parse_error(status, content_type, data)
            raise ClientError(error.code or "unknown", error.message, status)
        try:
            return kind.FromString(data)
        except message.DecodeError as exc:
            raise ClientError("internal", f"cannot decode the scheduler's answer: {exc}") from None

    def _exchange(
        self, path: str, body: bytes, headers: dict[str, str], timeout: float | None
    ) -> tuple[int, str | None, bytes]:
        # One retry on a fresh connection: a kept-alive one may have been closed by the
        # server meanwhile. The request is resent only if nothing came back.
        for attempt in (1, 2):
            connection = self._connect(timeout)
            try:
                connection.request("POST", path, body=body, headers=headers)
                answer = connection.getresponse()
                return answer.status, answer.getheader("Content-Type"), answer.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._close()
                if attempt == 2:
                    raise ClientError(
                        "unavailable", f"{self.api_url} closed the connection"
                    ) from None
            except OSError as exc:
                self._close()
                reason = exc.strerror or str(exc) or type(exc).__name__
                raise ClientError(
                    "unavailable",
                    f"cannot reach the scheduler at {self.api_url}: {reason} (is it running? "
                    "`dispatchlet scheduler` or `dispatchlet dev` starts one)",
                ) from None
        raise AssertionError("unreachable")

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._connection is None:
            cls = (
                http.client.HTTPSConnection
                if self._parts.scheme == "https"
                else http.client.HTTPConnection
            )
            self._connection = cls(self._parts.netloc.rpartition("@")[2], timeout=self.timeout)
        self._connection.timeout = timeout if timeout is not None else self.timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(self._connection.timeout)
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["API_KEY_ENV", "API_URL_ENV", "CallError", "CallInfo", "Client", "ClientError"]
