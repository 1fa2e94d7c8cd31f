"""The Endpoint: functions registered by users, served over the Dispatch protocol."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from itertools import chain
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar, overload

from ..proto.dispatch.sdk.v1 import function_pb2
from . import connect, tracing
from .body import BodyReader, oversized
from .declared_schedule import read_schedule
from .dispatch_options import Backoff, Seconds, seconds_of, settings
from .dispatching import Batch, Dispatcher, default_dispatcher
from .errors import (
    ConfigurationError,
    DispatchletError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    Unauthenticated,
    UnsupportedMediaType,
    refuses,
)
from .functions import FUNCTION_NAME, Function
from .http import Request, Response
from .keys import VERIFICATION_KEY_ENV, PublicKeyLike, load_public_keys, public_keys_from_env

# The limits' defaults were defined here; re-exported (``as``) for their users.
from .limits import DEFAULT_CHECKPOINT_AFTER
from .limits import DEFAULT_MAX_BODY_SIZE as DEFAULT_MAX_BODY_SIZE
from .limits import DEFAULT_MAX_HEADER_BYTES as DEFAULT_MAX_HEADER_BYTES
from .limits import DEFAULT_MAX_HEADER_COUNT as DEFAULT_MAX_HEADER_COUNT
from .limits import DEFAULT_MAX_JOURNAL_SIZE as DEFAULT_MAX_JOURNAL_SIZE
from .limits import DEFAULT_MAX_WORKFLOW_STEPS as DEFAULT_MAX_WORKFLOW_STEPS
from .runner import error_run_response, execute
from .signatures import Verifier, header_fields, normalize_authority

P = ParamSpec("P")
R = TypeVar("R")

ENDPOINT_URL_ENV = "DISPATCH_ENDPOINT_URL"

logger = logging.getLogger("dispatchlet")

_NO_KEY = (
    "no verification key configured: set DISPATCH_VERIFICATION_KEY to the Dispatch "
    "public key (PEM or base64), or pass Endpoint(verification_key=...); "
    "Endpoint(insecure=True) serves without verification, for local development only"
)
_NO_KEY_AT_START = (
    "DISPATCH_VERIFICATION_KEY is not set (nor Endpoint(verification_key=...)): %s "
    "will be refused with 401 until it is. Set it to the scheduler's public key, the "
    "public half of its DISPATCH_SIGNING_KEY (`dispatchlet scheduler` prints it at start); "
    "Endpoint(insecure=True) serves without verification, for local development only"
)


class Endpoint:
    """A set of functions served as one Dispatch function endpoint.

    ``verification_key``: Ed25519 public key(s) that sign the scheduler's requests, as
    PEM or base64 (str/bytes), ``Ed25519PublicKey``, or a list of those for rotation;
    by default read from ``DISPATCH_VERIFICATION_KEY``. Without a key every request is
    refused unless ``insecure=True``.

    ``endpoint_url``: the public base URL callers use (default ``DISPATCH_ENDPOINT_URL``).
    When set, signatures are checked against its authority and path prefix rather than
    what reached the server, which a proxy, CDN, API stage or custom domain may change.

    ``max_workflow_steps``, ``max_journal_size``: bounds of a workflow's journal (see
    ``dispatchlet.core.workflow``), with clear errors past them.

    ``checkpoint_after`` (seconds or a ``timedelta``, default 1 s): how long the inline
    steps of one run of a workflow (functions registered with ``inline=True``) may take
    before the run checkpoints through the scheduler (see ``dispatchlet.core.inline_steps``);
    what a killed endpoint runs again is at most the inline steps since the last one.

    ``allow_pickle``: accept and produce pickled Python values (Python callers only);
    unpickling happens only after a request's signature is verified. Input that no
    signature vouches for (``run()``: Lambda direct invocation, in-process callers; and
    every request under ``insecure=True``) is never unpickled unless
    ``allow_unsigned_pickle=True`` says so too: whoever may invoke the function could
    otherwise run code in it.
    """

    warn_without_key = True
    """Whether an adapter built for an endpoint with no key and no ``insecure=True``
    logs, once, that every request will be refused (see ``warn_if_no_key``). A program
    that gives the endpoints it loads a key of its own after loading them (the command
    line's ``dev``, ``serve``, ``call --app``) may turn it off."""

    def __init__(
        self,
        *,
        verification_key: PublicKeyLike | Iterable[PublicKeyLike] | None = None,
        endpoint_url: str | None = None,
        insecure: bool = False,
        allow_pickle: bool = False,
        allow_unsigned_pickle: bool = False,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_signature_age: float = 300.0,
        clock_skew: float = 5.0,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_workflow_steps: int = DEFAULT_MAX_WORKFLOW_STEPS,
        max_journal_size: int = DEFAULT_MAX_JOURNAL_SIZE,
        checkpoint_after: Seconds = DEFAULT_CHECKPOINT_AFTER,
    ) -> None:
        keys = (
            public_keys_from_env()
            if verification_key is None
            else load_public_keys(verification_key)
        )
        self.insecure = insecure
        if allow_unsigned_pickle and not allow_pickle:
            raise ConfigurationError("allow_unsigned_pickle=True needs allow_pickle=True")
        self.allow_pickle = allow_pickle
        self.allow_unsigned_pickle = allow_unsigned_pickle
        self.max_body_size = max_body_size
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes
        self.max_workflow_steps = max_workflow_steps
        """Steps (calls, sleeps, patches) one workflow run may make: each resume replays
        them all."""
        self.max_journal_size = max_journal_size
        """Bytes a workflow's journal may hold; it travels in every resume."""
        self.checkpoint_after = _checkpoint_after(checkpoint_after, "Endpoint(checkpoint_after)")
        """Seconds of inline steps after which a workflow's run checkpoints (its next
        inline step runs as a child call instead, its journal stored with it)."""
        self.max_signature_age = max_signature_age
        self.clock_skew = clock_skew
        self.verifier: Verifier | None = None
        self._warned_no_key = False
        self.set_verification_key(keys)
        if insecure:
            logger.warning("request signatures are NOT verified (insecure=True)")
        url = os.environ.get(ENDPOINT_URL_ENV) if endpoint_url is None else endpoint_url
        self.endpoint_url = url or None
        self._authority: str | None = None
        self._signed_path: str | None = None
        if self.endpoint_url:
            from .endpoint_url import parse_endpoint_url  # only for a URL: cold starts

            setting = ENDPOINT_URL_ENV if endpoint_url is None else "endpoint_url"
            try:
                public = parse_endpoint_url(self.endpoint_url)
            except ValueError as exc:
                raise ConfigurationError(f"{setting}: {exc}") from None
            self._authority = normalize_authority(public.authority, public.scheme)
            self._signed_path = public.run_path
        self._functions: dict[str, Function[..., Any]] = {}
        self._client: Dispatcher | None = None

    @property
    def client(self) -> Dispatcher:
        """Where ``function.dispatch(...)`` and ``batch()`` send calls: the client set
        here (``endpoint.client = Client(...)``), else a ``dispatchlet.Client()`` made
        from the environment (``DISPATCH_API_URL``, ``DISPATCH_API_KEY``) when first
        needed, shared by the endpoints that have none of their own. Setting None goes
        back to that one."""
        return self._client if self._client is not None else default_dispatcher()

    @client.setter
    def client(self, client: Dispatcher | None) -> None:
        self._client = client

    def warn_if_no_key(self, refused: str = "every request") -> None:
        """Log once, as a server starts, that this endpoint has no verification key and
        that ``refused`` (what it will answer 401) will be: adapters call it when they are
        built, so that a missing key shows in the start-up log, not request by request."""
        if self.verifier is not None or self.insecure or not self.warn_without_key:
            return
        if not self._warned_no_key:
            self._warned_no_key = True
            logger.warning(_NO_KEY_AT_START, refused)

    def set_verification_key(
        self, verification_key: PublicKeyLike | Iterable[PublicKeyLike] | None
    ) -> None:
        """Verify requests with these keys from now on (None or empty: no key)."""
        keys = load_public_keys(verification_key)
        self.verifier = (
            Verifier(keys, max_age=self.max_signature_age, clock_skew=self.clock_skew)
            if keys
            else None
        )

    @property
    def functions(self) -> Mapping[str, Function[..., Any]]:
        """The registered functions by name."""
        return MappingProxyType(self._functions)

    @overload
    def function(self, fn: Callable[P, R], /) -> Function[P, R]: ...

    @overload
    def function(
        self,
        /,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: Seconds | None = None,
        backoff: Backoff | Seconds | None = None,
        expiration: Seconds | None = None,
        concurrency: int | None = None,
        concurrency_per_key: int | None = None,
        rate_limit: tuple[int, Seconds] | None = None,
        schedule: str | None = None,
        inline: bool = False,
        checkpoint_after: Seconds | None = None,
    ) -> Callable[[Callable[P, R]], Function[P, R]]: ...

    def function(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: Seconds | None = None,
        backoff: Backoff | Seconds | None = None,
        expiration: Seconds | None = None,
        concurrency: int | None = None,
        concurrency_per_key: int | None = None,
        rate_limit: tuple[int, Seconds] | None = None,
        schedule: str | None = None,
        inline: bool = False,
        checkpoint_after: Seconds | None = None,
    ) -> Any:
        """Register a function (plain or ``async def``) under its name or ``name``.

        The other arguments are the defaults of the function's calls, dispatched from
        Python or made by workflows (``options`` overrides them per call): the policy
        (``max_attempts``, ``timeout`` per attempt, ``backoff``, ``expiration``), the
        limits the scheduler holds its attempts to (``concurrency`` in flight,
        ``concurrency_per_key`` per ``options(concurrency_key=...)``, ``rate_limit=(n,
        period)`` starts per period), and ``schedule``, a cron expression it is run on
        once pushed by ``dispatchlet schedules sync``, read in UTC unless it starts
        with its time zone (``"CRON_TZ=Europe/Paris 0 9 * * *"``).

        ``inline=True``: in a workflow of this endpoint, an await of a call of this
        function (made without ``options``) runs it inside the workflow's own run and
        records its outcome in the journal, as DBOS's steps and Restate's ``ctx.run``
        do, instead of a child call the scheduler runs (see
        ``dispatchlet.core.inline_steps``). Limits the scheduler enforces per call
        cannot hold there: with ``concurrency``, ``concurrency_per_key``, ``rate_limit``
        or ``schedule`` it is a ``ConfigurationError``. ``checkpoint_after`` (on a
        workflow): the endpoint's ``checkpoint_after`` for this workflow's runs."""
        if schedule is not None:
            read_schedule(schedule)  # its form only: the scheduler checks it when synced
        if inline:
            _check_inline(concurrency, concurrency_per_key, rate_limit, schedule)
        after = None
        if checkpoint_after is not None:
            after = _checkpoint_after(checkpoint_after, "@function(checkpoint_after)")

        def register(f: Callable[..., Any]) -> Function[..., Any]:
            function_name = name or str(getattr(f, "__name__", ""))
            defaults = settings(
                f"@function {function_name}",
                max_attempts=max_attempts,
                timeout=timeout,
                backoff=backoff,
                expiration=expiration,
                concurrency=concurrency,
                concurrency_per_key=concurrency_per_key,
                rate_limit=rate_limit,
            )
            registered = Function(
                f,
                function_name,
                self,
                defaults=defaults,
                schedule=schedule,
                inline=inline,
                checkpoint_after=after,
            )
            if after is not None and (inline or not registered.is_async):
                raise ConfigurationError(
                    f"@function {function_name}: checkpoint_after is a workflow's policy "
                    "(an async def that is not inline)"
                )
            if registered.name in self._functions:
                raise ValueError(f"a function named {registered.name!r} is already registered")
            self._functions[registered.name] = registered
            return registered

        return register if fn is None else register(fn)

    def dispatcher(self) -> Dispatcher:
        """What this endpoint's functions' ``dispatch`` calls go to: ``self.client``."""
        return self.client

    def batch(self) -> Batch:
        """A batch of calls dispatched together, atomically, when its block ends."""
        return Batch(self.dispatcher)

    def handle(self, request: Request) -> Response:
        """Answer one HTTP request; never raises."""
        try:
            return self._handle(request)
        except DispatchletError as exc:
            return self.reject(exc)
        except Exception:
            logger.exception("internal error while handling a request")
            return connect.http_error_response(DispatchletError("internal error"))

    def reject(self, error: DispatchletError) -> Response:
        """The answer to a request refused with ``error`` before it could be handled:
        for adapters, whose reading of a request (its body, its platform event) failed.
        An error that is no refusal (a failure of ours) is logged and answered as an
        internal error, telling the client nothing more."""
        if not refuses(error):
            logger.error("internal error while handling a request", exc_info=error)
            return connect.http_error_response(DispatchletError("internal error"))
        if error.http_status in (401, 403):
            logger.warning("rejected request: %s", error)
        return connect.http_error_response(error)

    def body_reader(
        self, content_length: str | int | None, *, ends_without_length: bool, chunked: bool = False
    ) -> BodyReader:
        """The policy for reading a request body of this endpoint (see ``BodyReader``);
        raises ``InvalidArgument`` for a body refused before a byte is read."""
        return BodyReader(
            self.max_body_size,
            content_length,
            ends_without_length=ends_without_length,
            chunked=chunked,
        )

    def run(
        self,
        request: function_pb2.RunRequest,
        *,
        trace_context: Mapping[str, str] | None = None,
    ) -> function_pb2.RunResponse:
        """Run the function a RunRequest names; every outcome is a RunResponse.
        ``trace_context``: the caller's span context (``traceparent``, ``tracestate``),
        the parent of the run's span when tracing."""
        try:
            function = self._lookup(request.function)
        except DispatchletError as exc:
            return error_run_response(exc)
        headers = None
        if trace_context:
            headers = {name.lower(): [value] for name, value in trace_context.items()}
        return self._execute(
            function, request, self.allow_pickle and self.allow_unsigned_pickle, headers
        )

    def _execute(
        self,
        function: Function[..., Any],
        request: function_pb2.RunRequest,
        unpickle: bool,
        headers: Mapping[str, list[str]] | None,
    ) -> function_pb2.RunResponse:
        run = partial(
            execute, function, request, allow_pickle=self.allow_pickle, unpickle_input=unpickle
        )
        # One lookup while the program does not use opentelemetry (``tracing.otel``).
        return tracing.traced_run(request, headers, run) if tracing.enabled() else run()

    def _lookup(self, name: str) -> Function[..., Any]:
        if not name:
            raise InvalidArgument("missing function name")
        function = self._functions.get(name)
        if function is None:
            if not FUNCTION_NAME.fullmatch(name):
                raise InvalidArgument(f"invalid function name {name[:100]!r}")
            raise NotFound(f"function {name!r} does not exist")
        return function

    def _handle(self, request: Request) -> Response:
        self._check_limits(request)
        if not request.path.endswith(connect.RUN_PATH):
            raise NotFound(f"no such RPC: {request.path[:200]!r}")
        if request.method != "POST":
            raise MethodNotAllowed(f"method {request.method[:20]!r} not allowed: use POST")
        fields = header_fields(request.headers)
        content_types = fields.get("content-type")
        codec = connect.codec(content_types[0] if content_types else None)
        encoding = fields.get("content-encoding", ["identity"])[0]
        if encoding != "identity":
            raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding[:40]!r}")
        if not request.body:
            raise InvalidArgument("empty request body: expected a RunRequest")
        if len(request.body) > self.max_body_size:
            raise oversized(self.max_body_size)
        self._verify(request, fields)
        run_request = connect.decode_request(request.body, codec)
        function = self._lookup(run_request.function)
        signed = not self.insecure
        unpickle = self.allow_pickle and (signed or self.allow_unsigned_pickle)
        # Its trace context headers, unsigned, only ever name the run span's parent.
        result = self._execute(function, run_request, unpickle, fields)
        return connect.encode_response(result, codec)

    def _check_limits(self, request: Request) -> None:
        if not request.authority:
            raise InvalidArgument("missing Host header")
        if len(request.headers) > self.max_header_count:
            raise InvalidArgument(f"more than {self.max_header_count} header fields")
        size = sum(map(len, chain.from_iterable(request.headers)))
        if size > self.max_header_bytes:
            raise InvalidArgument(f"header fields exceed {self.max_header_bytes} bytes")

    def _verify(self, request: Request, fields: dict[str, list[str]]) -> None:
        if self.insecure:
            return
        if self.verifier is None:
            raise Unauthenticated(_NO_KEY)
        self.verifier.verify(
            request, fields=fields, authority=self._authority, path=self._signed_path
        )


def _check_inline(
    concurrency: int | None,
    concurrency_per_key: int | None,
    rate_limit: object,
    schedule: str | None,
) -> None:
    """Refuse an inline function with a limit the scheduler would have to enforce on
    each of its calls: an inline step is no call of the scheduler's."""
    given = {
        "concurrency": concurrency,
        "concurrency_per_key": concurrency_per_key,
        "rate_limit": rate_limit,
        "schedule": schedule,
    }
    refused = [name for name, value in given.items() if value is not None]
    if refused:
        raise ConfigurationError(
            f"@function(inline=True) with {', '.join(refused)}: an inline step runs inside "
            "its workflow's run, where the scheduler cannot hold it to limits or run it on a "
            "schedule; drop inline=True (its calls are then child calls) or the limits"
        )


def _checkpoint_after(value: object, name: str) -> float:
    try:
        return seconds_of(value, name, zero=True)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None


__all__ = ["ENDPOINT_URL_ENV", "VERIFICATION_KEY_ENV", "Endpoint"]
