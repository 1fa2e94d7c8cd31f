"""The scheduler's HTTP API (aiohttp): ``DispatchService/Dispatch`` and the project's
``CallService`` (Get, Wait, List, Cancel, Retry, Rerun, Resume, Overview, Purge, Send),
Connect unary in ``application/proto`` and ``application/json``, with
``Authorization: Bearer <api key>``; ``/healthz``.

Errors are Connect errors (``{"code", "message"}`` with the HTTP status of the code).
A Dispatch is validated whole before anything is stored: a bad call is a 400 naming its
index and the reason, and then no call of the request is kept. It is idempotent: a
request id (``Idempotency-Key``) seen before is answered with the first request's ids
(409 when it was used for other calls), and a call whose key (its ``CallOptions``, in
field 1000 of the Call) a kept call has gets that call's id; neither stores anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from aiohttp import web
from google.protobuf import json_format, message, timestamp_pb2

from ..core import tracing
from ..core.connect import JSON, PROTO, codec, http_error_response
from ..core.dispatching import API_KEY_ENV, REQUEST_ID_HEADER
from ..core.errors import (
    DeadlineExceeded,
    DispatchletError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    TemporaryError,
    Unauthenticated,
    refuses,
)
from ..core.http import Response
from ..core.messages import topic_problem
from ..core.proto_json import message_to_json
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2, error_pb2, poll_pb2
from ..proto.dispatchlet.scheduler.v1 import calls_pb2, options_pb2
from .call_answer import LARGE_RESULT, CallAnswer, CallResponse, add_result
from .call_limits import LimitsInvalid, limits_of
from .calls import (
    AT_ONCE,
    MAX_EXPIRATION,
    call_problem,
    duration_seconds,
    options_of,
    oversized_input,
    planned,
    timestamp,
)
from .direct_api import DirectApi, Streamed, WholeRequest
from .engine import Engine
from .host_check import host_allowed, refusal
from .metrics import CONTENT_TYPE
from .overview import Recent, overview_message
from .resume import resumed_poll
from .retention import Retention, purge
from .schedule_api import ScheduleApi
from .settings import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_INPUT_SIZE, METRICS_KEY_ENV
from .store import (
    END_BATCH,
    LISTED_ERROR_BYTES,
    MAILBOX_MESSAGES,
    NO_LIMITS,
    AttemptHistory,
    Call,
    NewCall,
    RequestId,
    Sent,
    State,
    Store,
    unavailable,
)
from .ticker import Ticker
from .within import within

M = TypeVar("M", bound=message.Message)
T = TypeVar("T")
logger = logging.getLogger(__name__)

MAX_CALLS = 1000
MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest request body, unless the largest input needs more (``body_limit``)."""
DEFAULT_EXPIRATION = 24 * 3600.0
MAX_WAIT = 60.0
MAX_PAGE = 1000
MAX_WAIT_MANY = 1000
"""The most calls one WaitMany asks for."""
WAIT_MANY_BYTES = 4 * 1024 * 1024
"""The most outputs and errors one WaitMany answer holds (in stored bytes)."""
PURGE_SECONDS = 10.0
"""How long one Purge request deletes, at most (then it answers ``more``), so that no
client's timeout ends it midway."""

DISPATCH_PATH = "/dispatch.sdk.v1.DispatchService/Dispatch"
MAX_REQUEST_ID = 255
"""The longest request id (``REQUEST_ID_HEADER``), in characters."""
CALLS_PATH = "/dispatchlet.scheduler.v1.CallService/"

_NO_KEYS = (
    f"no API key configured: set {API_KEY_ENV} (comma-separated for rotation) for the "
    "scheduler and its clients, or run it with --insecure for local development"
)
_MISSING_KEY = (
    f"missing API key: set {API_KEY_ENV} to the scheduler's key where the client runs, so "
    "that it sends Authorization: Bearer <key>"
)
_INVALID_KEY = (
    f"invalid API key: the client's {API_KEY_ENV} is none of the scheduler's keys (its "
    f"{API_KEY_ENV}); check that both are the same"
)


class Unary(NamedTuple):
    """A Connect unary method: its handler and request type."""

    handler: Callable[..., Awaitable[message.Message | CallAnswer]]
    kind: type[message.Message]
    headers: bool = False
    """Whether the handler is given the request's headers too."""


@dataclass(frozen=True, slots=True)
class Answered:
    """A unary request's answer, in its codec ``wire``."""

    message: message.Message | CallAnswer
    wire: str

    def payload(self) -> bytes:
        assert not isinstance(self.message, CallAnswer)
        if self.wire == PROTO:
            return self.message.SerializeToString()
        # A stored value of a type this process does not know is shown as
        # {"@type", "value": base64}, not a failed answer.
        return message_to_json(self.message)


class Api:
    """The request handlers, over one store and engine."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        api_keys: Sequence[str] = (),
        insecure: bool = False,
        default_expiration: float = DEFAULT_EXPIRATION,
        max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
        clock: Callable[[], float] | None = None,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        metrics_keys: Sequence[str] = (),
        metrics_public: bool = False,
        dashboard: bool = True,
        retention: Retention | None = None,
        ticker: Ticker | None = None,
        allowed_hosts: Sequence[str] = (),
    ) -> None:
        # Its operations timed into the engine's metrics.
        self.store = engine.metrics.timed(store)
        self.engine = engine
        self.api_keys = [key.encode() for key in api_keys if key]
        self.insecure = insecure
        self.default_expiration = default_expiration
        self.max_input_size = max_input_size
        self.max_body_size = body_limit(max_input_size)
        # The engine's unless told: calls are stored by the time they are run by.
        self.clock = clock or engine.clock
        self.body_timeout = body_timeout
        self.metrics_keys = [key.encode() for key in metrics_keys if key]
        self.metrics_public = metrics_public
        self.recent = Recent()
        """The last hour's finished calls, for overviews (read once in a while)."""
        self.dashboard = dashboard
        self.retention = retention
        """The background deletion, if any: a Purge's deletions are counted with its."""
        self.ticker = ticker
        """The schedules' ticker, if any: told when a schedule is created or resumed."""
        self.allowed_hosts = tuple(allowed_hosts)
        """Names an insecure scheduler answers beside IP addresses and localhost."""

    def unary_methods(self) -> dict[str, Unary]:
        """The Connect unary methods by path."""
        # Read as dispatch.sdk.v1.DispatchRequest with each call's options (field 1000).
        methods = {DISPATCH_PATH: Unary(self.dispatch, options_pb2.DispatchRequest, headers=True)}
        for name, handler, kind in (
            ("Get", self.get, calls_pb2.GetRequest),
            ("Wait", self.wait, calls_pb2.WaitRequest),
            ("WaitMany", self.wait_many, calls_pb2.WaitManyRequest),
            ("List", self.list, calls_pb2.ListRequest),
            ("Cancel", self.cancel, calls_pb2.CancelRequest),
            ("Retry", self.retry, calls_pb2.RetryRequest),
            ("Overview", self.overview, calls_pb2.OverviewRequest),
            ("Purge", self.purge, calls_pb2.PurgeRequest),
            ("Send", self.send, calls_pb2.SendRequest),
        ):
            methods[CALLS_PATH + name] = Unary(handler, kind)
        for name, schedule_handler, schedule_kind in ScheduleApi(self).routes():
            methods[CALLS_PATH + name] = Unary(schedule_handler, schedule_kind)  # type: ignore[arg-type]
        # Given its headers: its request id (``Idempotency-Key``), as Dispatch.
        methods[CALLS_PATH + "Rerun"] = Unary(self.rerun, calls_pb2.RerunRequest, headers=True)
        methods[CALLS_PATH + "Resume"] = Unary(self.resume, calls_pb2.ResumeRequest, headers=True)
        return methods

    def app(self) -> web.Application:
        # Open to anyone who reaches it, so not to pages of other sites rebound to it.
        guards = [self.host_guard] if self.insecure else []
        app = web.Application(client_max_size=self.max_body_size, middlewares=guards)
        app.router.add_get(_lenient("/healthz"), self.healthz)
        app.router.add_get(_lenient("/metrics"), self.metrics)
        for path, unary in self.unary_methods().items():
            app.router.add_route("*", _lenient(path), self.rpc(unary))
        if self.dashboard:
            # Imported only then: --no-dashboard loads no template engine.
            from .dashboard import Dashboard

            Dashboard(self).mount(app)
        return app

    def direct(self) -> DirectApi:
        """The unary methods answered from a request read whole, without aiohttp
        (``direct_api.py``)."""
        methods = self.unary_methods()

        async def answer(request: WholeRequest) -> Response | Streamed:
            if self.insecure and not host_allowed(request.headers.get("Host"), self.allowed_hosts):
                return http_error_response(PermissionDenied(refusal(request.headers.get("Host"))))
            body = request.body

            async def read() -> bytes:
                return body

            done = await self.answer(
                methods[request.path], request.method, request.headers, len(body), read
            )
            if isinstance(done, Response):
                return done
            if isinstance(done.message, CallAnswer):
                # A large output: framed from its stored bytes, sent in pieces.
                return Streamed(done.wire, *done.message.pieces(done.wire))
            return Response(200, [("Content-Type", done.wire)], done.payload())

        return DirectApi(frozenset(methods), answer)

    @web.middleware
    async def host_guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Requests whose ``Host`` an insecure scheduler does not answer: 403
        (``host_check.py``)."""
        header = request.headers.get("Host")
        # A health check (a load balancer's, by any name) learns nothing a page could use.
        if request.path == "/healthz" or host_allowed(header, self.allowed_hosts):
            return await handler(request)
        return _web(http_error_response(PermissionDenied(refusal(header))))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition of this process's engine and of the store's queue
        (``metrics.py``), to holders of an API key or a metrics key: it names every
        destination."""
        if not (self.metrics_public or self.insecure):
            try:
                self._authenticate(
                    request.headers.get("Authorization"), self.api_keys + self.metrics_keys
                )
            except Unauthenticated as exc:
                hint = f" (or one of {METRICS_KEY_ENV}; --metrics-public: no key for /metrics)"
                return _web(http_error_response(Unauthenticated(f"{exc}{hint}")))
        try:
            text = await self.engine.metrics.exposition(self.store, self.clock())
        except Exception as exc:
            if not unavailable(exc):
                raise
            logger.warning("reading the queue for /metrics failed: %s", exc)
            return _web(http_error_response(TemporaryError(_STORE_FAILED)))
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE})

    def rpc(self, unary: Unary) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``unary`` served by aiohttp."""

        async def serve(request: web.Request) -> web.StreamResponse:
            done = await self.answer(
                unary,
                request.method,
                request.headers,
                request.content_length,
                lambda: self._read(request),
            )
            if isinstance(done, Response):
                refusal = _web(done)
                if done.header("Connection") is not None:
                    refusal.force_close()  # the rest of its body may still come
                return refusal
            if isinstance(done.message, CallAnswer):
                # A large output: framed from its stored bytes, sent in pieces.
                return await done.message.write(request, done.wire)
            return web.Response(body=done.payload(), content_type=done.wire)

        return serve

    async def answer(
        self,
        unary: Unary,
        method: str,
        headers: Mapping[str, str],
        content_length: int | None,
        read: Callable[[], Awaitable[bytes]],
    ) -> Answered | Response:
        """A Connect unary request answered: authenticated, decoded, handled, its answer
        in the request's codec; or the error that refuses it."""
        try:
            if method != "POST":
                raise MethodNotAllowed(f"method {method[:20]!r} not allowed: use POST")
            self._authenticate(headers.get("Authorization"))
            wire = codec(headers.get("Content-Type"))
            if (content_length or 0) > self.max_body_size:
                # Announced: refused unread.
                raise self._too_large(content_length)
            body = await read()
            decoded = _decode(unary.kind, body, wire)
            handler = unary.handler
            answer = await (handler(decoded, headers) if unary.headers else handler(decoded))
        except web.HTTPRequestEntityTooLarge:
            return http_error_response(self._too_large(content_length))
        except Exception as exc:
            name = unary.kind.DESCRIPTOR.name
            # First: a StoreError is a DispatchletError too, but not the request's fault.
            if unavailable(exc):
                # The database is restarting or unreachable: nothing was
                # acknowledged, and the request may be sent again.
                logger.exception("a %s request failed", name)
                return http_error_response(TemporaryError(_STORE_FAILED))
            if refuses(exc):  # the request refused, and why
                refused = http_error_response(exc)
                if isinstance(exc, BodyTimeout):
                    refused.headers.append(("Connection", "close"))
                return refused
            # An error of the scheduler's own: logged here, and the client told no
            # more than that (retrying would meet it again).
            logger.exception("a %s request failed unexpectedly", name)
            return http_error_response(InternalError(_INTERNAL))
        if isinstance(answer, CallAnswer) and not answer.framed:
            answer = answer.message()
        return Answered(answer, wire)

    async def _read(self, request: web.Request) -> bytes:
        """The request's body, if it arrives within the body timeout (a client that
        trickles it must not hold its connection and buffer for long)."""
        try:
            return await within(request.read(), self.body_timeout)
        except asyncio.TimeoutError:
            # The rest of the body may still come: the connection cannot serve another.
            request.protocol.close()
            raise BodyTimeout(
                f"the request body did not arrive within {self.body_timeout:g} s (--body-timeout)"
            ) from None

    def _too_large(self, size: int | None) -> RequestTooLarge:
        told = f" of {size} bytes" if size else ""
        return RequestTooLarge(
            f"request body{told} larger than the scheduler's limit of {self.max_body_size} "
            "bytes: send fewer calls per request (each input at most "
            f"{self.max_input_size} bytes)"
        )

    def _authenticate(self, header: str | None, keys: Sequence[bytes] | None = None) -> None:
        if self.insecure:
            return
        keys = self.api_keys if keys is None else keys
        if not keys:
            raise Unauthenticated(_NO_KEYS)
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(_MISSING_KEY)
        given = token.strip().encode()
        # Every key is compared, in constant time: nothing tells which came close.
        matches = [hmac.compare_digest(given, key) for key in keys]
        if not any(matches):
            raise Unauthenticated(_INVALID_KEY)

    # --- DispatchService -------------------------------------------------------------

    async def dispatch(
        self,
        request: options_pb2.DispatchRequest,
        headers: Mapping[str, str],
    ) -> dispatch_pb2.DispatchResponse:
        if len(request.calls) > MAX_CALLS:
            raise InvalidArgument(
                f"{len(request.calls)} calls in one Dispatch: at most {MAX_CALLS}"
            )
        request_id = _request_id(headers, request)
        with tracing.dispatch_span(headers, len(request.calls)) as span:
            now = self.clock()
            # Each call's attempts are children of this span.
            trace = tracing.carried()
            calls = [
                self._new_call(index, call, now, trace) for index, call in enumerate(request.calls)
            ]
            ids = await self._store_calls(calls, now, request_id) if calls else []
            tracing.dispatched(span, ids)
            self.engine.metrics.dispatched.inc(len(ids))
        return dispatch_pb2.DispatchResponse(dispatch_ids=ids)

    async def _store_calls(
        self, calls: list[NewCall], now: float, request_id: RequestId | None
    ) -> list[str]:
        """Store ``calls``; those the engine has room for are leased in the same
        transaction and started at once, with no claim (``Engine.handoff``)."""
        handoff = self.engine.handoff(calls, now)

        def stored(storing: asyncio.Future[list[str]]) -> None:
            if not storing.cancelled():
                storing.exception()  # raised to the request, if it still waits
            self.engine.handed(handoff)
            if handoff is None or len(handoff.claimed) < len(calls):
                self.engine.wake()  # calls left to claim

        # Shielded: a client that goes away while the transaction commits cancels this
        # request, not the handoff, whose leased calls would else wait for their leases
        # to lapse before they run.
        storing = asyncio.ensure_future(
            self.store.dispatch(calls, now=now, request=request_id, handoff=handoff)
        )
        storing.add_done_callback(stored)
        ids = await asyncio.shield(storing)
        if handoff is not None and handoff.claimed:
            # A turn of the loop for the attempts just started to send their Run
            # requests (aiohttp writes a body from a task of its own) before this
            # answer is written: the calls start sooner, the answer is as durable.
            await asyncio.sleep(0)
        return ids

    def _new_call(
        self, index: int, call: options_pb2.Call, now: float, trace_context: str = ""
    ) -> NewCall:
        def invalid(reason: str) -> InvalidArgument:
            return InvalidArgument(f"call {index}: {reason}")

        problem = call_problem(call) or self.engine.unsupported(call.endpoint)
        if problem is not None:
            raise invalid(problem)
        data = call.input.SerializeToString() if call.HasField("input") else b""
        problem = oversized_input(len(data), self.max_input_size)
        if problem is not None:
            raise invalid(f"{problem} (--max-input-size)")
        expiration = self.default_expiration
        if call.HasField("expiration"):
            seconds = duration_seconds(call.expiration)
            if seconds < 0:
                raise invalid("negative expiration")
            if seconds > MAX_EXPIRATION:
                raise invalid(f"expiration beyond {MAX_EXPIRATION:.0f} seconds (a year)")
            if seconds > 0:
                expiration = seconds
        plan = (
            planned(call.dispatchlet_options, now)
            if call.HasField("dispatchlet_options")
            else AT_ONCE
        )
        if isinstance(plan, str):
            raise invalid(plan)
        start = now if plan.ready_at is None else plan.ready_at
        limits = NO_LIMITS
        if call.HasField("dispatchlet_options"):
            try:
                limits = limits_of(call.dispatchlet_options)
            except LimitsInvalid as exc:
                raise invalid(str(exc)) from None
        return NewCall(
            function=call.function,
            endpoint=call.endpoint.rstrip("/"),
            input=data,
            # Counted from when it may start: a delayed call has its whole time to run.
            expires_at=start + expiration,
            version=call.version,
            correlation_id=call.correlation_id,
            key=plan.key,
            trace_context=trace_context,
            ready_at=plan.ready_at,
            policy=plan.policy,
            limits=limits,
        )

    # --- CallService -------------------------------------------------------------------

    async def _found(self, dispatch_id: str) -> Call:
        return _known(dispatch_id, await self.store.get(_asked(dispatch_id)))

    async def _found_with_history(self, dispatch_id: str) -> tuple[Call, AttemptHistory]:
        return _known(dispatch_id, await self.store.get_with_history(_asked(dispatch_id)))

    async def get(self, request: calls_pb2.GetRequest) -> CallAnswer:
        found, history = await self._found_with_history(request.dispatch_id)
        return whole_call(calls_pb2.GetResponse, found, history)

    async def wait(self, request: calls_pb2.WaitRequest) -> CallAnswer:
        limit = MAX_WAIT
        if request.HasField("timeout"):
            limit = min(limit, max(0.0, duration_seconds(request.timeout)))
        seen = request.attempts_seen if request.HasField("attempts_seen") else None
        deadline = time.monotonic() + limit
        # Woken when the call ends or a retry of it is recorded, by this process or
        # (told by the store) another; read again only then, or every ``reread``
        # seconds on a store whose notifications may be lost. A client that goes away
        # cancels the request (the server cancels handlers on disconnection), and with
        # it the watch.
        # Each read takes the history with the call: the one that answers needs it.
        with self.engine.watching(request.dispatch_id) as until:
            found, history = await self._found_with_history(request.dispatch_id)
            until.within(found.dispatch_id, found.root_id)
            while not _answers_wait(found, seen):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                reread = self.engine.reread
                if await until(remaining if reread is None else min(remaining, reread)):
                    found, history = await self._found_with_history(request.dispatch_id)
                elif time.monotonic() < deadline:
                    # The safety re-read.
                    found, history = await self._found_with_history(request.dispatch_id)
        return whole_call(calls_pb2.WaitResponse, found, history)

    async def wait_many(self, request: calls_pb2.WaitManyRequest) -> calls_pb2.WaitManyResponse:
        ids = list(dict.fromkeys(request.dispatch_ids))  # each once, in the request's order
        if not ids:
            raise InvalidArgument("missing dispatch_ids")
        if len(ids) > MAX_WAIT_MANY:
            raise InvalidArgument(f"at most {MAX_WAIT_MANY} dispatch_ids at once")
        wanted = min(max(1, request.min_done), len(ids))
        limit = MAX_WAIT
        if request.HasField("timeout"):
            limit = min(limit, max(0.0, duration_seconds(request.timeout)))
        deadline = time.monotonic() + limit
        # As Wait, for every call at once; read again: only those still running that
        # changed (a final call stays so), or all of them on a safety re-read.
        with self.engine.watching(*ids) as until:
            found = await self._found_many(ids)
            for call in found.values():
                until.within(call.dispatch_id, call.root_id)
            pending = {i for i, call in found.items() if not call.done}
            while len(ids) - len(pending) < wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                reread = self.engine.reread
                changed = await until(remaining if reread is None else min(remaining, reread))
                touched = until.touched() if changed else None
                again = pending if touched is None else pending & touched
                if again:
                    found.update(await self._found_many(sorted(again)))
                    pending -= {i for i in again if found[i].done}
        timed_out = len(ids) - len(pending) < wanted
        return many_calls([found[dispatch_id] for dispatch_id in ids], all_of_them=timed_out)

    async def _found_many(self, ids: Sequence[str]) -> dict[str, Call]:
        found = {call.dispatch_id: call for call in await self.store.get_many(ids)}
        for dispatch_id in ids:
            _known(_asked(dispatch_id), found.get(dispatch_id))
        return found

    async def list(self, request: calls_pb2.ListRequest) -> calls_pb2.ListResponse:
        state = None
        if request.state:
            try:
                state = State(request.state)
            except ValueError:
                raise InvalidArgument(
                    f"invalid state {request.state[:20]!r}: ready, running, waiting or done"
                ) from None
        # A status name, in any case ("OK", "ok"), or "failed".
        wanted = request.status.strip()
        failed = wanted.lower() == FAILED
        status = None
        if wanted and not failed:
            status = _FINAL_STATUSES.get(wanted.upper())
            if status is None:
                raise InvalidArgument(
                    f"invalid status {wanted[:40]!r}: {', '.join(_FINAL_STATUSES)} "
                    f"or {FAILED} (any but OK)"
                )
        size = request.page_size or 100
        if not 0 < size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be 1 to {MAX_PAGE}")
        created_after = _seconds(request.created_after, request.HasField("created_after"))
        created_before = _seconds(request.created_before, request.HasField("created_before"))
        calls = await self.store.list(
            state=state,
            function=request.function or None,
            root_id=request.root_dispatch_id or None,
            status=None if status is None else status.value,
            failed=failed,
            newest_first=request.newest_first,
            after=request.page_token or None,
            limit=size + 1,
            parent_id=request.parent_dispatch_id or None,
            rerun_of=request.rerun_of or None,
            created_after=created_after,
            created_before=created_before,
        )
        page = calls[:size]
        token = page[-1].dispatch_id if len(calls) > size else ""
        return calls_pb2.ListResponse(calls=[call_info(c) for c in page], next_page_token=token)

    async def cancel(self, request: calls_pb2.CancelRequest) -> calls_pb2.CancelResponse:
        """End the call at once, with the first batch of its unfinished descendants
        (``cancelled`` counts those); the others end in batches after the answer
        (``more_ending`` says so: the store stopped at a full batch)."""
        found = await self._found(request.dispatch_id)
        error = error_pb2.Error(type="Cancelled", message="the call was cancelled")
        result = call_pb2.CallResult(error=error).SerializeToString()
        count = await self.store.cancel(
            request.dispatch_id, Status.PERMANENT_ERROR.value, result, now=self.clock()
        )
        if count:
            self.engine.metrics.ended(Status.PERMANENT_ERROR, count)
            self.engine.changed(request.dispatch_id, found.root_id)
            self.engine.end_descendants_soon()
        return calls_pb2.CancelResponse(cancelled=count, more_ending=count > END_BATCH)

    async def retry(self, request: calls_pb2.RetryRequest) -> calls_pb2.RetryResponse:
        """Start the next attempt of a ready call now rather than at its ready time (a
        retry's backoff); a call due already is left as it is (idempotent). A call in any
        other state has no attempt to bring forward: refused, its state named."""
        if not request.dispatch_id:
            raise InvalidArgument("missing dispatch_id")
        found = await self.store.retry_now(request.dispatch_id, now=self.clock())
        if found is None:
            raise NotFound(f"no call {request.dispatch_id[:100]!r}")
        state, brought = found
        if state is not State.READY:
            raise FailedPrecondition(f"the call is {state.value}: {_NO_RETRY[state]}")
        if brought:
            self.engine.wake()
        return calls_pb2.RetryResponse(brought_forward=brought)

    async def send(self, request: calls_pb2.SendRequest) -> calls_pb2.SendResponse:
        """Deliver a message to a call's receive on a topic, or keep it for the next one
        (``core.messages``). An unknown call is not found, a done one a failed
        precondition: the sender learns that no workflow will receive it."""
        if not request.dispatch_id:
            raise InvalidArgument("missing dispatch_id")
        problem = topic_problem(request.topic)
        if problem is not None:
            raise InvalidArgument(f"invalid topic: {problem}")
        result = call_pb2.CallResult()
        if request.HasField("value"):
            result.output.CopyFrom(request.value)
        data = result.SerializeToString()
        size = len(data)
        if size > self.max_input_size:
            raise InvalidArgument(
                f"message of {size} bytes, larger than the scheduler's limit of "
                f"{self.max_input_size} bytes"
            )
        sent = await self.store.send(request.dispatch_id, request.topic, data, now=self.clock())
        if sent is Sent.UNKNOWN:
            raise NotFound(f"no call {request.dispatch_id[:100]!r}")
        if sent is Sent.DONE:
            raise FailedPrecondition(
                f"the call {request.dispatch_id[:100]!r} is done: no receive will take the message"
            )
        if sent is Sent.FOLLOWS:
            follower = await self.store.get(request.dispatch_id)
            followed = follower.follows if follower is not None else None
            raise FailedPrecondition(
                f"the call {request.dispatch_id[:100]!r} follows the call {followed!r}, which "
                "has its key, and runs nothing: no receive will take the message; send it to "
                f"{followed!r}"
            )
        if sent is Sent.RECEIVE:
            raise FailedPrecondition(
                f"the call {request.dispatch_id[:100]!r} is a workflow's receive, which takes "
                "messages for its workflow: send the message to the workflow (its parent)"
            )
        if sent is Sent.FULL:
            raise MailboxFull(
                f"the call {request.dispatch_id[:100]!r} keeps {MAILBOX_MESSAGES} messages "
                "no receive has taken, the most a call keeps: send more once its workflow "
                "has received some"
            )
        if sent is Sent.DELIVERED:
            self.engine.wake()  # its workflow may be ready to resume
        return calls_pb2.SendResponse(delivered=sent is Sent.DELIVERED)

    async def rerun(
        self, request: calls_pb2.RerunRequest, headers: Mapping[str, str]
    ) -> calls_pb2.RerunResponse:
        """A new root call doing the done call's work again: its function, endpoint,
        version and input, for as long as it was given (its expiration less its creation
        time). A call not done is refused: two runs of the same work at once would
        surprise; it is cancelled first if it is to run again now. Idempotent with a
        request id, as Dispatch: sent again, it gets the first re-run's id."""
        found = await self._found(request.dispatch_id)
        if not found.done:
            raise FailedPrecondition(
                f"the call is {found.state.value}: only a done call can be re-run; "
                "cancel it first to run it again now"
            )
        if found.topic is not None:
            raise FailedPrecondition(
                "the call is a workflow's receive, which no function runs: re-run the "
                "workflow instead"
            )
        now = self.clock()
        again = NewCall(
            function=found.function,
            endpoint=found.endpoint,
            input=found.input,
            expires_at=now + (found.expires_at - found.created_at),
            version=found.version,
            correlation_id=found.correlation_id,
            rerun_of=found.dispatch_id,
            policy=found.policy,
            limits=found.limits,
        )
        (new_id,) = await self.store.dispatch(
            [again], now=now, request=_request_id(headers, request)
        )
        self.engine.wake()
        return calls_pb2.RerunResponse(dispatch_id=new_id)

    async def resume(
        self, request: calls_pb2.ResumeRequest, headers: Mapping[str, str]
    ) -> calls_pb2.ResumeResponse:
        """A new root call that resumes the failed workflow from its journal
        (``resume.py``): the steps that finished OK are kept, the failed one (and any
        unfinished) is made anew. Its ``rerun_of`` names the old call, which is left as
        it is but for its mailbox: the messages no receive of it took move to the new
        call, for its receives. It is given as long as the old one was. A call not done,
        done OK, or with no journal kept is refused. Idempotent with a request id, as
        Rerun. It keeps the old call's policy, limits and trace context."""
        found = await self._found(request.dispatch_id)
        if not found.done:
            raise FailedPrecondition(
                f"the call is {found.state.value}: only a failed workflow can be resumed"
            )
        if found.status == Status.OK.value:
            raise FailedPrecondition(
                "the call ended OK: only a failed workflow can be resumed; re-run it to run "
                "it again"
            )
        resumed = resumed_poll(found.poll, await self.store.children(found.dispatch_id))
        started = await self._first_start(found)
        now = self.clock()
        again = NewCall(
            function=found.function,
            endpoint=found.endpoint,
            input=found.input,
            expires_at=now + (found.expires_at - started),
            version=found.version,
            correlation_id=found.correlation_id,
            rerun_of=found.dispatch_id,
            trace_context=found.trace_context,
            poll=resumed.poll,
            policy=found.policy,
            limits=found.limits,
            messages_of=found.dispatch_id,
        )
        (new_id,) = await self.store.dispatch(
            [again], now=now, request=_request_id(headers, request)
        )
        self.engine.wake()
        return calls_pb2.ResumeResponse(
            dispatch_id=new_id, steps_kept=resumed.kept, steps_retried=resumed.retried
        )

    async def _first_start(self, found: Call) -> float:
        """When ``found`` could start, as far as is known: its first attempt's start if
        its history still keeps it (a delayed call's expiration counts from its start,
        not from its creation), else its creation."""
        history = await self.store.history(found.dispatch_id)
        if history.attempts and history.attempts[0].number == 1:
            return max(found.created_at, history.attempts[0].started_at)
        return found.created_at

    async def overview(self, request: calls_pb2.OverviewRequest) -> calls_pb2.OverviewResponse:
        """The calls finished in the last hour (read at most every few seconds) and the
        queue now, from the store; this process's destinations."""
        now = self.clock()
        queue = await self.store.queue_stats(now=now)
        limits = await self.store.limit_stats(now=now)
        finished = await self.recent.read(self.store, now)
        return overview_message(now, finished, queue, self.engine.limiter, limits)

    async def purge(self, request: calls_pb2.PurgeRequest) -> calls_pb2.PurgeResponse:
        """Delete the finished trees older than ``older_than``, in batches (``retention``),
        for at most ``PURGE_SECONDS`` (``more`` then says that some may be left)."""
        older_than = duration_seconds(request.older_than) if request.HasField("older_than") else 0
        if older_than < 0:
            raise InvalidArgument("negative older_than")
        wanted = request.status.strip()
        failed = wanted.lower() == FAILED
        status = None
        if wanted and not failed:
            status = _FINAL_STATUSES.get(wanted.upper())
            if status is None:
                raise InvalidArgument(
                    f"invalid status {wanted[:40]!r}: {', '.join(_FINAL_STATUSES)} "
                    f"or {FAILED} (any but OK)"
                )
        deleted, more = await purge(
            self.store,
            before=self.clock() - older_than,
            status=None if status is None else status.value,
            failed=failed,
            seconds=PURGE_SECONDS,
        )
        if self.retention is not None:
            self.retention.count(deleted)
        return calls_pb2.PurgeResponse(deleted=deleted, more=more)


_STORE_FAILED = "the scheduler cannot reach its database now; try again"
_INTERNAL = "the scheduler failed to handle the request (an internal error, in its log)"


class InternalError(DispatchletError):
    """An error of the scheduler's own (Connect ``internal``, HTTP 500)."""

    http_status = 500
    code = "internal"


class FailedPrecondition(DispatchletError):
    """An action the call is not in a state for (Connect ``failed_precondition``)."""

    http_status = 400
    code = "failed_precondition"


class MailboxFull(DispatchletError):
    """A message to a call whose mailbox is full (Connect ``resource_exhausted``)."""

    http_status = 429
    code = "resource_exhausted"


# Why a call in each state other than ready has no next attempt to start now.
_NO_RETRY = {
    State.RUNNING: "an attempt is running now",
    State.WAITING: "it waits for its children (its Poll), not for a retry",
    State.DONE: "it has ended; re-run it to run it again",
}


class BodyTimeout(DeadlineExceeded):
    """A request body that did not arrive in time: Connect's ``deadline_exceeded``, so
    HTTP 504 (status follows code, as PROTOCOL.md has it), and the connection closed."""


class RequestTooLarge(InvalidArgument):
    """A request body over the scheduler's limit."""

    http_status = 413


def body_limit(max_input_size: int) -> int:
    """The largest request body the API reads: ``MAX_BODY_BYTES``, or room for one call
    whose input is at ``max_input_size`` in JSON (base64: 4 bytes for 3) if more."""
    return max(MAX_BODY_BYTES, 2 * max_input_size + 1024 * 1024)


# What List takes as a status: a final status's name, or any final status but OK.
FAILED = "failed"
_FINAL_STATUSES = {s.name: s for s in Status if s is not Status.UNSPECIFIED}


def _answers_wait(call: Call, attempts_seen: int | None) -> bool:
    """Whether a Wait is answered with ``call`` as it is: once it is done, or, when the
    waiter has seen ``attempts_seen`` attempts, once a later one ended in an error and
    the call waits for its retry."""
    if call.done:
        return True
    return (
        attempts_seen is not None
        and call.state is State.READY
        and call.attempts > attempts_seen
        and call.status is not None
        and bool(call.result)
    )


def _asked(dispatch_id: str) -> str:
    if not dispatch_id:
        raise InvalidArgument("missing dispatch_id")
    return dispatch_id


def _known(dispatch_id: str, found: T | None) -> T:
    if found is None:
        raise NotFound(f"no call {dispatch_id[:100]!r}")
    return found


def whole_call(
    kind: type[CallResponse], call: Call, history: AttemptHistory | None = None
) -> CallAnswer:
    """A Get or Wait answer: all of ``call``, its input, output and error too (these two
    written from their stored bytes: ``CallAnswer``), and its attempts' ``history``."""
    info = call_info(call, with_input=True, with_result=False)
    if history is not None:
        add_history(info, history)
    return CallAnswer(kind, info, call.result)


def add_history(info: calls_pb2.CallInfo, history: AttemptHistory) -> None:
    """Put a call's attempt history in ``info``."""
    info.attempts_total = history.total
    for attempt in history.attempts:
        shown = info.history.add(
            number=attempt.number,
            function=attempt.function,
            status=attempt.status,
            error_type=attempt.error_type,
            error_message=attempt.error_message,
        )
        shown.started_at.CopyFrom(timestamp(attempt.started_at))
        shown.duration.FromNanoseconds(round(attempt.duration * 1e9))


def many_calls(calls: Sequence[Call], *, all_of_them: bool) -> calls_pb2.WaitManyResponse:
    """A WaitMany answer: the final ``calls`` with their results, those too large for
    it named in ``large`` and those past its room left out; ``all_of_them``: the others
    too, as List shows them (their error only when small and it fits)."""
    answer = calls_pb2.WaitManyResponse()
    room = WAIT_MANY_BYTES
    for call in calls:
        size = len(call.result)
        if call.done and size >= LARGE_RESULT:
            answer.large.append(call.dispatch_id)
        elif call.done and size <= room:
            answer.calls.append(call_info(call))
            room -= size
        elif not call.done and all_of_them:
            shown = size <= min(room, LISTED_ERROR_BYTES)
            answer.calls.append(call_info(call, with_result=shown))
            room -= size if shown else 0
    return answer


def call_info(
    call: Call, *, with_input: bool = False, with_result: bool = True
) -> calls_pb2.CallInfo:
    """What the CallService tells of ``call`` (its input too ``with_input``; its output
    and error unless not ``with_result``)."""
    info = calls_pb2.CallInfo(
        dispatch_id=call.dispatch_id,
        function=call.function,
        endpoint=call.endpoint,
        done=call.done,
        attempts=call.attempts,
        parent_dispatch_id=call.parent_id or "",
        root_dispatch_id=call.root_id,
        state=call.state.value,
        rerun_of=call.rerun_of or "",
    )
    if call.status is not None:
        # Final once done; before, the latest attempt's, which is not the call's.
        info.last_status = call.status  # type: ignore[assignment]
        if call.done:
            info.status = call.status  # type: ignore[assignment]
    if with_input and call.input:
        info.input.ParseFromString(call.input)
    if call.state is State.READY:
        info.ready_at.CopyFrom(timestamp(call.ready_at))
    if call.result and with_result:
        add_result(info, call.result)
    info.created_at.CopyFrom(timestamp(call.created_at))
    info.expires_at.CopyFrom(timestamp(call.expires_at))
    if call.finished_at is not None:
        info.finished_at.CopyFrom(timestamp(call.finished_at))
    if call.poll and not call.done:
        poll = poll_pb2.Poll.FromString(call.poll)
        if poll.HasField("typed_coroutine_state"):
            info.coroutine_state.CopyFrom(poll.typed_coroutine_state)
    if call.policy is not None or call.limits.limited:
        info.options.CopyFrom(options_of(call.policy, call.limits))
    return info


def _lenient(path: str) -> str:
    """A route for ``path`` that also matches it with repeated slashes before it, as a
    client configured with a base URL ending in ``/`` sends it (dispatch-py does):
    answered there, not redirected, which would lose a POST's body."""
    return "/{_slashes:/*}" + path[1:]  # the rest is matched literally


def _request_id(headers: Mapping[str, str], request: message.Message) -> RequestId | None:
    """The Dispatch's (or Rerun's) request id (``Idempotency-Key``) with the digest of what it asks,
    whichever the codec; None without one."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is None:
        return None
    if not 0 < len(given) <= MAX_REQUEST_ID or not given.isascii() or not given.isprintable():
        raise InvalidArgument(
            f"invalid {REQUEST_ID_HEADER} header: expected 1 to {MAX_REQUEST_ID} printable "
            "ASCII characters"
        )
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
    return RequestId(given, digest)


def _decode(kind: type[M], body: bytes, wire: str) -> M:
    decoded = kind()
    try:
        if wire == PROTO:
            decoded.ParseFromString(body)
        else:
            json_format.Parse(body, decoded, ignore_unknown_fields=True)
    except (message.DecodeError, json_format.ParseError, ValueError, RecursionError) as exc:
        name = kind.DESCRIPTOR.name
        raise InvalidArgument(f"cannot decode {name}: {exc}"[:500]) from None
    return decoded


def _web(response: Response) -> web.Response:
    headers = [(k, v) for k, v in response.headers if k.lower() != "content-type"]
    return web.Response(
        status=response.status,
        body=response.body,
        headers=headers,
        content_type=JSON,
    )


def _seconds(stamp: timestamp_pb2.Timestamp, given: bool) -> float | None:
    """A List bound in seconds, None when not given."""
    return stamp.seconds + stamp.nanos / 1e9 if given else None
