"""The client of the scheduler: ``DispatchService/Dispatch`` and ``CallService``.

    from dispatchlet import Client

    client = Client()                      # DISPATCH_API_URL (default the local
                                           # scheduler), DISPATCH_API_KEY
    (dispatch_id,) = client.dispatch([greet.build_call("World")])
    info = client.wait(dispatch_id)        # CallInfo: status, output, error, attempts...

    def failed(attempt: CallInfo) -> None:  # each failed attempt, as it happens
        print(f"attempt {attempt.attempts} failed: {attempt.error}")

    info = client.wait(dispatch_id, on_attempt=failed)

Plain blocking calls over one kept-alive HTTP connection (``http.client``), so it works
from any code, sync or not. Each Dispatch carries a request id (``Idempotency-Key``),
the same when the client sends it again, so that the scheduler stores its calls once.
A request the scheduler answers 503 (busy, or its database briefly away), or leaves
unanswered (connection refused or reset), is sent again a few times with growing
pauses (``retries``, ``retry_timeout``; see ``retries.py``); no other answer is retried.
A Connect error from the scheduler raises ``ClientError`` with its code and message; a
scheduler that cannot be reached raises ``ClientError`` with code ``unavailable``.
"""

from __future__ import annotations

import builtins
import datetime
import http.client
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

from google.protobuf import any_pb2, message

from ..core import tracing, values
from ..core.connect import PROTO
from ..core.connect_client import parse_error
from ..core.dispatch_options import Backoff as CallBackoff
from ..core.dispatch_options import Seconds
from ..core.dispatching import (
    API_KEY_ENV,
    API_URL_ENV,
    DEFAULT_API_URL,
    REQUEST_ID_HEADER,
    split_api_keys,
)
from ..core.endpoint import Endpoint
from ..core.errors import DispatchletError
from ..core.http import retry_after
from ..core.status import Status
from ..proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from ..proto.dispatchlet.scheduler.v1 import calls_pb2
from .connection import Connection, SecureConnection
from .overview import Overview
from .policies import policy_fields
from .retries import DEFAULT_RETRIES, DEFAULT_RETRY_TIMEOUT, Backoff
from .schedules import ScheduleInfo, SyncResult, declared_schedules, schedule_spec

M = TypeVar("M", bound=message.Message)
logger = logging.getLogger(__name__)

_WAIT_STEP = 50  # seconds per Wait RPC, under the scheduler's limit
_POLL_PAUSE = 0.5  # seconds between Wait RPCs that brought nothing new
_WAIT_MANY = 1000  # calls per WaitMany RPC, the scheduler's limit
_WINDOW_STEP = 1.0  # seconds per WaitMany RPC of as_completed over more than that
_SCHEDULES = "/dispatchlet.scheduler.v1.CallService/"


class ClientError(DispatchletError):
    """The scheduler refused a request (a Connect error), or could not be reached.

    ``code`` is the Connect code the scheduler answered; ``http_status`` its HTTP status,
    None when no answer came (the scheduler could not be reached: code ``unavailable``).
    """

    http_status: int | None  # type: ignore[assignment]  # None: no answer to tell of

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
class AttemptInfo:
    """One attempt of a call, as its history keeps it (``CallInfo.attempts_history``)."""

    number: int
    """1 for the call's first attempt, counting every attempt in its life."""
    function: str
    """The function it ran (a tail call hands the call over to another)."""
    started_at: datetime.datetime
    duration: datetime.timedelta
    status: Status | None
    """What it came to (None: a status this client does not know)."""
    error: CallError | None
    """Its error (the message cut to 1 KiB), None when it had none."""

    @classmethod
    def from_proto(cls, attempt: calls_pb2.Attempt) -> AttemptInfo:
        error = None
        if attempt.error_type or attempt.error_message:
            error = CallError(attempt.error_type, attempt.error_message)
        return cls(
            number=attempt.number,
            function=attempt.function,
            started_at=attempt.started_at.ToDatetime(datetime.timezone.utc),
            duration=attempt.duration.ToTimedelta(),
            status=_status(attempt.status),
            error=error,
        )


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
    input: object = None
    """The decoded input, as dispatched (``get`` and ``wait``; ``list`` leaves it out).
    A value that cannot be decoded here (a pickle, an unknown message) stays an ``Any``."""
    ready_at: datetime.datetime | None = None
    """While the call is ready: when its next attempt (a first one or a retry) may start."""
    last_status: Status | None = None
    """The status of the latest attempt that ended, also while the call is retried."""
    rerun_of: str = ""
    """The call this one is a re-run of (``Client.rerun``); empty for any other."""
    attempts_history: tuple[AttemptInfo, ...] = ()
    """The call's latest attempts, oldest first (``get`` and ``wait``; ``list`` leaves
    them out): at most the scheduler's ``--attempt-history`` of them."""
    attempts_total: int = 0
    """How many attempts of the call the scheduler recorded in its life (the history
    keeps the latest; 0 with the history off)."""
    # The call's own retry policy and limits, as dispatched (``options(...)``, the
    # function's defaults, ``dispatchlet dispatch --max-attempts ...``); None: the
    # scheduler's setting, or no limit.
    max_attempts: int | None = None
    timeout: datetime.timedelta | None = None
    """How long one attempt may run."""
    backoff: CallBackoff | None = None
    """The wait before retries (its times in seconds)."""
    concurrency: int | None = None
    concurrency_key: str = ""
    concurrency_per_key: int | None = None
    rate_limit: tuple[int, datetime.timedelta] | None = None
    """At most this many attempts of its function start per this period."""

    @classmethod
    def from_proto(cls, info: calls_pb2.CallInfo, *, allow_pickle: bool = False) -> CallInfo:
        def decoded(value: any_pb2.Any, present: bool) -> object:
            if not present:
                return None
            try:
                return values.from_any(value, allow_pickle=allow_pickle)
            except values.DecodeError:
                return value

        done = info.done
        error = CallError(info.error.type, info.error.message) if info.HasField("error") else None
        return cls(
            dispatch_id=info.dispatch_id,
            function=info.function,
            endpoint=info.endpoint,
            status=_status(info.status) if done else None,
            done=done,
            output=decoded(info.output, info.HasField("output")),
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
            input=decoded(info.input, info.HasField("input")),
            ready_at=info.ready_at.ToDatetime(datetime.timezone.utc)
            if info.HasField("ready_at")
            else None,
            last_status=_status(info.last_status),
            rerun_of=info.rerun_of,
            attempts_history=tuple(AttemptInfo.from_proto(a) for a in info.history),
            attempts_total=info.attempts_total,
            **policy_fields(info.options),
        )


def _wait_step(deadline: float | None) -> float:
    """How long the next Wait or WaitMany RPC waits: up to ``_WAIT_STEP``, never past the
    ``time.monotonic()`` ``deadline`` (None: none)."""
    if deadline is None:
        return _WAIT_STEP
    return min(_WAIT_STEP, max(0.0, deadline - time.monotonic()))


def _attempts_ended(info: CallInfo) -> int:
    """How many attempts of the call's current run have ended (a suspended workflow
    counts afresh once resumed)."""
    if info.state == "ready":
        return info.attempts
    if info.state == "running":
        return max(info.attempts - 1, 0)
    return 0


def _missing_key_hint(message: str) -> str:
    """What to add to a refusal of a request sent without a key: where the key goes,
    unless the scheduler said it already."""
    if message.startswith("no API key configured"):
        return ""  # the scheduler has none: nothing the client sends would do
    if API_KEY_ENV in message:
        return f" (`dispatchlet dev` prints the {API_KEY_ENV} to export)"
    return f" (set {API_KEY_ENV}; `dispatchlet dev` prints it)"


def _brief(answer: _Answer) -> str:
    """The message of an error answer, for a log line."""
    return parse_error(answer.status, answer.content_type, answer.body).message


def _status(number: int) -> Status | None:
    """The Status of a number from the wire; None when unset or unknown here."""
    try:
        return Status(number) if number else None
    except ValueError:
        return None


class Cancelled(int):
    """What ``Client.cancel`` ended at once: the call and the first batch of its
    unfinished descendants (an ``int``, their count). ``more_ending``: the tree was
    larger than that batch, and the scheduler ends the rest right after, in batches
    (uncounted: counting them would mean walking the whole tree)."""

    more_ending: bool

    def __new__(cls, count: int, *, more_ending: bool = False) -> Cancelled:
        cancelled = super().__new__(cls, count)
        cancelled.more_ending = more_ending
        return cancelled


class Resumed(str):
    """What ``Client.resume`` made: the new call's dispatch id (a ``str``), with how many
    of the failed run's steps it starts with, finished (``steps_kept``), and how many it
    runs again (``steps_retried``: the failed one, and any left unfinished)."""

    steps_kept: int
    steps_retried: int

    def __new__(cls, dispatch_id: str, *, steps_kept: int = 0, steps_retried: int = 0) -> Resumed:
        resumed = super().__new__(cls, dispatch_id)
        resumed.steps_kept = steps_kept
        resumed.steps_retried = steps_retried
        return resumed


@dataclass(frozen=True)
class CallPage:
    """One page of ``Client.list_page``: its calls and the cursor of the next page."""

    calls: list[CallInfo]
    cursor: str | None
    """Pass it back as ``cursor=`` for the next page; None on the last page."""


class _Answer(NamedTuple):
    """One HTTP answer of the scheduler."""

    status: int
    content_type: str | None
    body: bytes
    retry_after: float | None
    tried: str = ""
    """How it was tried, when more than once (for an error's message)."""


class _NoAnswer(Exception):
    """No answer came, and the request may be sent again: the connection was refused
    (nothing was sent) or closed before an answer (``reset``: what was sent may have
    been handled, harmlessly twice for the requests this client makes)."""

    def __init__(self, message: str, *, brief: str, reset: bool) -> None:
        super().__init__(message)
        self.message = message
        self.brief = brief  # for a log line
        self.reset = reset


class Client:
    """The scheduler at ``api_url`` (default ``DISPATCH_API_URL``, then the local
    scheduler at http://127.0.0.1:4450), authenticated with ``api_key`` (default
    ``DISPATCH_API_KEY``).

    ``timeout``: seconds to wait for each answer. A request answered 503 or left
    unanswered (connection refused or reset) is sent again up to ``retries`` times
    (default 4: five tries in all), after pauses of 0.5 s doubling up to 5 s with jitter,
    or the ``Retry-After`` the scheduler asks for (up to 10 s), while no more than
    ``retry_timeout`` seconds (default 15) have passed since the first try; ``retries=0``
    sends each request once."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = DEFAULT_RETRIES,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        if retries < 0 or not retry_timeout >= 0:
            raise ValueError(
                f"invalid retries={retries!r} or retry_timeout={retry_timeout!r}: "
                "expected numbers of 0 or more"
            )
        self.api_url = (api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        parts = urlsplit(self.api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid scheduler URL {self.api_url!r}: expected http(s)://host")
        self._parts = parts
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        # DISPATCH_API_KEY may list several keys (the scheduler's rotation): send the first.
        self.api_key = next(iter(split_api_keys(key)), "")
        self.timeout = timeout
        self.retries = retries
        self.retry_timeout = retry_timeout
        self._backoff = Backoff()
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    # --- DispatchService -------------------------------------------------------------

    def dispatch(
        self, calls: Iterable[call_pb2.Call], *, request_id: str | None = None
    ) -> list[str]:
        """Start ``calls`` in one atomic request; their dispatch ids, in order.

        The request carries ``request_id`` (default a random one) as its
        ``Idempotency-Key``: sent again (by this client after a lost answer, or by the
        caller with the same id and calls), it gets the same ids and starts nothing
        new."""
        request = dispatch_pb2.DispatchRequest(calls=list(calls))
        headers = {REQUEST_ID_HEADER: request_id or secrets.token_hex(16)}
        tracing.inject(headers)  # the current span, if any: the Dispatch span's parent
        answer = self._rpc(
            "/dispatch.sdk.v1.DispatchService/Dispatch",
            request,
            dispatch_pb2.DispatchResponse,
            headers=headers,
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

    def wait(
        self,
        dispatch_id: str,
        timeout: float | None = None,
        *,
        on_attempt: Callable[[CallInfo], object] | None = None,
    ) -> CallInfo:
        """The call once it is done, or as it is when ``timeout`` seconds have passed
        (None: as long as it takes).

        ``on_attempt``, when given, is called in this thread with the ``CallInfo`` of
        each attempt that failed and left the call to be retried, as it happens and once
        per attempt: its ``attempts`` is that attempt's number, ``last_status`` and
        ``error`` tell how it failed, ``ready_at`` when the next attempt may start. An
        exception it raises (KeyboardInterrupt included) ends the wait. A scheduler
        that cannot answer each attempt (an older one) still has the call waited for;
        the callback then hears only of the latest failure, about once a minute."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0  # attempts ended so far, as reported to on_attempt
        while True:
            step = _wait_step(deadline)
            request = calls_pb2.WaitRequest(dispatch_id=dispatch_id)
            request.timeout.FromMilliseconds(int(step * 1000))
            if on_attempt is not None:
                request.attempts_seen = seen
            answer = self._rpc(
                "/dispatchlet.scheduler.v1.CallService/Wait",
                request,
                calls_pb2.WaitResponse,
                timeout=step + self.timeout,
                deadline=deadline,  # no resend after the wait's own end
            )
            info = CallInfo.from_proto(answer.call)
            if info.done or (deadline is not None and time.monotonic() >= deadline):
                return info
            if on_attempt is None:
                continue
            ended = _attempts_ended(info)
            # A scheduler that tells attempts apart sets ready_at and the latest attempt's
            # status (cleared when a restart or a resume starts a new run, whose stored
            # error is an older run's); an older one tells only the last error.
            failed = (
                info.last_status is not None
                if info.ready_at is not None
                else info.error is not None
            )
            if failed and ended > seen:
                # The error (and last status) are those of the latest attempt that ended.
                on_attempt(replace(info, attempts=ended))
            elif ended <= seen:
                # Nothing new: never ask again at once (a scheduler may answer early).
                time.sleep(_POLL_PAUSE)
            seen = ended

    def wait_all(
        self, dispatch_ids: Iterable[str], timeout: float | None = None
    ) -> builtins.list[CallInfo]:
        """Each call once it is done, or as it is when ``timeout`` seconds have passed
        (None: as long as it takes), in the order of ``dispatch_ids``: a request asks
        for up to 1,000 of them at once, however many there are. Without input,
        coroutine state and attempt history (``get`` has them)."""
        ids = builtins.list(dispatch_ids)
        ended = {info.dispatch_id: info for info in self._ending(ids, timeout, every=True)}
        return [ended[dispatch_id] for dispatch_id in ids]

    def as_completed(
        self, dispatch_ids: Iterable[str], timeout: float | None = None
    ) -> Iterator[CallInfo]:
        """The calls as they end (each once), as ``wait_all`` tells them; TimeoutError,
        as ``concurrent.futures.as_completed`` raises, when ``timeout`` seconds pass
        before the last one ended."""
        for info in self._ending(builtins.list(dispatch_ids), timeout, every=False):
            if not info.done:
                raise TimeoutError(f"calls still running after {timeout} seconds")
            yield info

    def _ending(
        self, ids: builtins.list[str], timeout: float | None, *, every: bool
    ) -> Iterator[CallInfo]:
        """Each of the calls ``ids`` once, done, as it ends (``every``: a request's
        calls once all of them ended, which the scheduler reads with fewer wake-ups);
        after ``timeout``, those not done as they are then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = dict.fromkeys(ids)  # in order, each once
        while pending:
            step = _wait_step(deadline)
            asked = builtins.list(pending)[:_WAIT_MANY]
            rotating = not every and len(pending) > len(asked)
            if rotating:
                # More than one request holds: a short wait on these, then the next ones
                # (each asked goes to the back), so that no call waits behind others.
                step = min(step, _WINDOW_STEP)
                for dispatch_id in asked:
                    pending[dispatch_id] = pending.pop(dispatch_id)
            request = calls_pb2.WaitManyRequest(dispatch_ids=asked)
            request.min_done = len(asked) if every else 1
            request.timeout.FromMilliseconds(int(step * 1000))
            answer = self._rpc(
                "/dispatchlet.scheduler.v1.CallService/WaitMany",
                request,
                calls_pb2.WaitManyResponse,
                timeout=step + self.timeout,
                deadline=deadline,  # no resend after the wait's own end
            )
            timed_out = deadline is not None and time.monotonic() >= deadline
            infos = [CallInfo.from_proto(found) for found in answer.calls]
            # A result too large for the answer comes with a Wait of its own.
            infos += [self.wait(dispatch_id) for dispatch_id in answer.large]
            ended = [info for info in infos if info.done or timed_out]
            for info in ended:
                pending.pop(info.dispatch_id, None)
                yield info
            if not ended and not timed_out and not rotating:
                # Never ask again at once (an early answer), nor sleep past the deadline.
                left = _POLL_PAUSE if deadline is None else deadline - time.monotonic()
                time.sleep(max(0.0, min(_POLL_PAUSE, left)))
            if timed_out:
                # Those the answer had no room for, or past the first 1,000.
                yield from (self.get(dispatch_id) for dispatch_id in pending)
                return

    def cancel(self, dispatch_id: str) -> Cancelled:
        """End the call and its unfinished descendants; how many were ended at once (0:
        unknown or already done), with ``more_ending`` true when the rest of a large
        tree is still being ended by the scheduler."""
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Cancel",
            calls_pb2.CancelRequest(dispatch_id=dispatch_id),
            calls_pb2.CancelResponse,
        )
        return Cancelled(answer.cancelled, more_ending=answer.more_ending)

    def retry(self, dispatch_id: str) -> bool:
        """Start the next attempt of a call that waits for it (a retry's backoff) now;
        whether its start was brought forward (False: it was due already). A
        ``ClientError`` ``failed_precondition`` for a call that is running, waiting for
        its children or done; ``not_found`` for an unknown one."""
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Retry",
            calls_pb2.RetryRequest(dispatch_id=dispatch_id),
            calls_pb2.RetryResponse,
        )
        return answer.brought_forward

    def send(self, dispatch_id: str, topic: str, value: object = None) -> bool:
        """Send ``value`` (encoded as a call's input is) to the workflow of call
        ``dispatch_id`` on ``topic``, for its ``receive(topic)``: whether a receive was
        waiting and got it now (False: it is kept, in order, for the next receive on the
        topic). A ``ClientError`` ``not_found`` for an unknown call,
        ``failed_precondition`` for a done one (or one that follows another, or a
        receive), ``resource_exhausted`` for one whose mailbox is full,
        ``invalid_argument`` for a bad topic or a value over the scheduler's input
        limit. Sent at most once: a connection lost after sending is an ``unavailable``
        error, not a second message."""
        request = calls_pb2.SendRequest(
            dispatch_id=dispatch_id, topic=topic, value=values.to_any(value)
        )
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Send",
            request,
            calls_pb2.SendResponse,
            at_most_once=True,
        )
        return answer.delivered

    def rerun(self, dispatch_id: str, *, request_id: str | None = None) -> str:
        """Run a done call again: a new root call with its function, endpoint, version
        and input, whose ``rerun_of`` names it; the new call's dispatch id. A
        ``ClientError`` ``failed_precondition`` for a call not done (cancel it first).
        Sent again with the same ``request_id`` (default a random one, as ``dispatch``),
        it answers with the same new call."""
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Rerun",
            calls_pb2.RerunRequest(dispatch_id=dispatch_id),
            calls_pb2.RerunResponse,
            headers={REQUEST_ID_HEADER: request_id or secrets.token_hex(16)},
        )
        return answer.dispatch_id

    def resume(self, dispatch_id: str, *, request_id: str | None = None) -> Resumed:
        """Resume a failed workflow from where it failed: a new root call, whose
        ``rerun_of`` names it, that starts from its journal, so that the steps that
        finished are not run again and the failed one is tried anew; the new call's
        dispatch id (``Resumed``). A ``ClientError`` ``failed_precondition`` for a call
        not done, done OK, or that kept no journal (not a workflow); ``not_found`` for an
        unknown one. Sent again with the same ``request_id`` (default a random one), it
        answers with the same new call."""
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Resume",
            calls_pb2.ResumeRequest(dispatch_id=dispatch_id),
            calls_pb2.ResumeResponse,
            headers={REQUEST_ID_HEADER: request_id or secrets.token_hex(16)},
        )
        return Resumed(
            answer.dispatch_id,
            steps_kept=answer.steps_kept,
            steps_retried=answer.steps_retried,
        )

    def purge(self, older_than: float | datetime.timedelta, status: str | None = None) -> int:
        """Delete the finished call trees (a root and all its descendants, all final)
        whose root finished more than ``older_than`` (seconds, or a timedelta) ago, only
        those whose root ended with ``status`` when given (a final status name, or
        ``"failed"``: any but OK); how many calls were deleted. A request deletes for a
        few seconds at most: sent again until all is done."""
        seconds = (
            older_than.total_seconds()
            if isinstance(older_than, datetime.timedelta)
            else float(older_than)
        )
        if not 0 <= seconds < float("inf"):
            raise ValueError(f"older_than must be a number of seconds, 0 or more: {older_than}")
        request = calls_pb2.PurgeRequest(status=status or "")
        request.older_than.FromNanoseconds(round(seconds * 1e9))
        deleted = 0
        while True:
            answer = self._rpc(
                "/dispatchlet.scheduler.v1.CallService/Purge", request, calls_pb2.PurgeResponse
            )
            deleted += answer.deleted
            if not answer.more:
                return deleted

    def list(
        self,
        *,
        state: str | None = None,
        function: str | None = None,
        root_dispatch_id: str | None = None,
        status: str | None = None,
        newest_first: bool = False,
        page_size: int = 100,
        parent_dispatch_id: str | None = None,
        rerun_of: str | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
    ) -> Iterator[CallInfo]:
        """The calls matching every filter given, in creation order (``newest_first``:
        the newest first), fetched a page at a time as they are iterated. ``status`` is a
        final status name (``"OK"``, ``"PERMANENT_ERROR"``...) or ``"failed"``, any final
        status but OK; ``parent_dispatch_id``: the children of that call; ``rerun_of``:
        the re-runs of that call; ``created_after`` and ``created_before``: created at or
        after, and before, those times (naive ones are UTC)."""
        cursor: str | None = ""
        while cursor is not None:
            page = self.list_page(
                state=state,
                function=function,
                root_dispatch_id=root_dispatch_id,
                status=status,
                newest_first=newest_first,
                page_size=page_size,
                cursor=cursor,
                parent_dispatch_id=parent_dispatch_id,
                rerun_of=rerun_of,
                created_after=created_after,
                created_before=created_before,
            )
            yield from page.calls
            cursor = page.cursor

    def list_page(
        self,
        *,
        state: str | None = None,
        function: str | None = None,
        root_dispatch_id: str | None = None,
        status: str | None = None,
        newest_first: bool = False,
        page_size: int = 100,
        cursor: str | None = None,
        parent_dispatch_id: str | None = None,
        rerun_of: str | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
    ) -> CallPage:
        """One page of ``list``: up to ``page_size`` calls from ``cursor`` (None: the
        first page), and the cursor of the next page (None after the last)."""
        request = calls_pb2.ListRequest(
            state=state or "",
            function=function or "",
            root_dispatch_id=root_dispatch_id or "",
            status=status or "",
            newest_first=newest_first,
            page_size=page_size,
            page_token=cursor or "",
            parent_dispatch_id=parent_dispatch_id or "",
            rerun_of=rerun_of or "",
        )
        for field, moment in (("created_after", created_after), ("created_before", created_before)):
            if moment is not None:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.timezone.utc)
                getattr(request, field).FromDatetime(moment)
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/List", request, calls_pb2.ListResponse
        )
        calls = [CallInfo.from_proto(info) for info in answer.calls]
        return CallPage(calls, answer.next_page_token or None)

    def overview(self) -> Overview:
        """What the calls came to in the last hour (by minute and final status; each
        function's count, failures, p50 and p99), the queue's depth now, and the
        destinations of the scheduler process that answers."""
        answer = self._rpc(
            "/dispatchlet.scheduler.v1.CallService/Overview",
            calls_pb2.OverviewRequest(),
            calls_pb2.OverviewResponse,
        )
        return Overview.from_proto(answer)

    # --- schedules -------------------------------------------------------------------

    def create_schedule(
        self,
        name: str,
        cron: str,
        function: str,
        input: object = None,
        *,
        endpoint: str,
        timezone: str = "UTC",
        max_attempts: int | None = None,
        timeout: Seconds | None = None,
        backoff: CallBackoff | Seconds | None = None,
        expiration: Seconds | None = None,
        concurrency: int | None = None,
        rate_limit: tuple[int, Seconds] | None = None,
    ) -> ScheduleInfo:
        """Create a schedule: a call of ``function`` at ``endpoint`` with ``input`` at
        each tick of ``cron`` (5 fields, or 6 with seconds last) in ``timezone`` (an
        IANA name). Each tick's call has the policy and limits given, as
        ``options(...)`` and ``@endpoint.function(...)`` give them. ``ClientError``
        ``invalid_argument`` for a bad name, expression, time zone, function name or
        endpoint; ``already_exists`` for a name taken."""
        spec = schedule_spec(
            name,
            cron,
            function,
            input,
            endpoint=endpoint,
            timezone=timezone,
            max_attempts=max_attempts,
            timeout=timeout,
            backoff=backoff,
            expiration=expiration,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )
        answer = self._rpc(
            _SCHEDULES + "CreateSchedule",
            calls_pb2.CreateScheduleRequest(schedule=spec),
            calls_pb2.CreateScheduleResponse,
        )
        return ScheduleInfo.from_proto(answer.schedule)

    def list_schedules(self) -> builtins.list[ScheduleInfo]:
        """Every schedule, by name."""
        answer = self._rpc(
            _SCHEDULES + "ListSchedules",
            calls_pb2.ListSchedulesRequest(),
            calls_pb2.ListSchedulesResponse,
        )
        return [ScheduleInfo.from_proto(info) for info in answer.schedules]

    def pause_schedule(self, name: str) -> ScheduleInfo:
        """Stop the schedule's ticks until it is resumed (``not_found``: no such name)."""
        answer = self._rpc(
            _SCHEDULES + "PauseSchedule",
            calls_pb2.PauseScheduleRequest(name=name),
            calls_pb2.PauseScheduleResponse,
        )
        return ScheduleInfo.from_proto(answer.schedule)

    def resume_schedule(self, name: str) -> ScheduleInfo:
        """Tick again from the first tick after now (those of the pause are skipped)."""
        answer = self._rpc(
            _SCHEDULES + "ResumeSchedule",
            calls_pb2.ResumeScheduleRequest(name=name),
            calls_pb2.ResumeScheduleResponse,
        )
        return ScheduleInfo.from_proto(answer.schedule)

    def delete_schedule(self, name: str) -> None:
        """Delete the schedule; the calls it dispatched are kept."""
        self._rpc(
            _SCHEDULES + "DeleteSchedule",
            calls_pb2.DeleteScheduleRequest(name=name),
            calls_pb2.DeleteScheduleResponse,
        )

    def sync_schedules(
        self, endpoint: Endpoint, *, endpoint_url: str | None = None, owner: str | None = None
    ) -> SyncResult:
        """Push the schedules ``endpoint``'s functions declare (``schedule=``), for its
        ``endpoint_url`` (or the one given): those missing are created, those changed
        updated, and those an earlier sync of the same ``owner`` (default: that URL)
        created and no longer declared deleted. A schedule created by hand, or synced by
        another owner, is never touched: a declared name it holds is ``already_exists``,
        and nothing changes."""
        url = endpoint_url or endpoint.endpoint_url
        if not url:
            raise ValueError(
                "the endpoint has no public URL to sync its schedules for: set "
                "DISPATCH_ENDPOINT_URL, Endpoint(endpoint_url=...) or endpoint_url="
            )
        request = calls_pb2.SyncSchedulesRequest(
            endpoint=url, schedules=declared_schedules(endpoint), owner=owner or ""
        )
        answer = self._rpc(_SCHEDULES + "SyncSchedules", request, calls_pb2.SyncSchedulesResponse)
        return SyncResult.from_proto(answer)

    # --- transport -------------------------------------------------------------------

    def _rpc(
        self,
        path: str,
        request: message.Message,
        kind: type[M],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
        at_most_once: bool = False,
    ) -> M:
        """The answer to ``request``, sent again as ``retries`` allows (never past the
        ``time.monotonic()`` ``deadline``, when given); ``at_most_once``: not sent again
        once the scheduler may have handled it (a connection reset after sending)."""
        headers = {**(headers or {}), "Content-Type": PROTO, "User-Agent": "dispatchlet-client"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = request.SerializeToString()
        prefix = self._parts.path.rstrip("/")
        with self._lock:
            if at_most_once:
                # A fresh connection: a kept-alive one the server closed meanwhile would
                # leave it unknown whether the request was handled.
                self._close()
            answer = self._retrying(prefix + path, body, headers, timeout, deadline, at_most_once)
        if answer.status != 200:
            error = parse_error(answer.status, answer.content_type, answer.body)
            text = error.message + answer.tried
            if error.code == "unauthenticated" and not self.api_key:
                text += _missing_key_hint(text)
            raise ClientError(error.code or "unknown", text, answer.status)
        try:
            return kind.FromString(answer.body)
        except message.DecodeError as exc:
            raise ClientError("internal", f"cannot decode the scheduler's answer: {exc}") from None

    def _retrying(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float | None,
        deadline: float | None,
        at_most_once: bool = False,
    ) -> _Answer:
        """The first answer that is not a 503, or the last one once no resend is left."""
        started = time.monotonic()
        bound = started + self.retry_timeout
        if deadline is not None:
            bound = min(bound, deadline)
        tries = 0
        stale_resent = False
        while True:
            # A kept-alive connection may have been closed by the server meanwhile.
            reused = self._connection is not None and self._connection.sock is not None
            tries += 1
            try:
                answer = self._exchange(path, body, headers, timeout)
            except _NoAnswer as exc:
                if exc.reset and at_most_once:
                    raise ClientError(
                        "unavailable",
                        f"{exc.message}: the request may have been handled, and is not sent "
                        "again (it is not idempotent)",
                    ) from None
                if exc.reset and reused and not stale_resent:
                    # Resent at once on a new connection, and not counted as a retry.
                    stale_resent = True
                    tries -= 1
                    continue
                failure: _NoAnswer | None = exc
                what, wait_asked = exc.brief, None
            else:
                if answer.status != 503:
                    return answer
                failure = None
                what = f"{self.api_url} answered 503 ({_brief(answer)})"
                wait_asked = answer.retry_after
            pause = self._backoff.pause(tries, wait_asked)
            if tries > self.retries or time.monotonic() + pause > bound:
                elapsed = time.monotonic() - started
                tried = f" ({tries} tries in {elapsed:.1f} s)" if tries > 1 else ""
                if failure is None:
                    return answer._replace(tried=tried)
                raise ClientError("unavailable", failure.message + tried) from None
            # A warning, as urllib3's: a command line without logging set up shows it.
            logger.warning(
                "%s; trying again in %.1f s (retry %d of %d)", what, pause, tries, self.retries
            )
            time.sleep(pause)

    def _exchange(
        self, path: str, body: bytes, headers: dict[str, str], timeout: float | None
    ) -> _Answer:
        """One try: the answer, or ``_NoAnswer`` when the request may be sent again."""
        connection = self._connect(timeout)
        try:
            connection.request("POST", path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            waited = retry_after(answer.getheader("Retry-After"))
            return _Answer(answer.status, answer.getheader("Content-Type"), data, waited)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            # RemoteDisconnected included: the request may have been handled, and what
            # this client sends may be handled twice harmlessly (a read, or a Dispatch
            # with its request id).
            self._close()
            closed = f"{self.api_url} closed the connection"
            raise _NoAnswer(closed, brief=closed, reset=True) from None
        except http.client.HTTPException as exc:
            # An answer cut short or garbled (a proxy or the server died mid-answer): no
            # answer, as after a reset.
            self._close()
            broken = f"{self.api_url} sent a broken answer ({type(exc).__name__})"
            raise _NoAnswer(broken, brief=broken, reset=True) from None
        except OSError as exc:
            self._close()
            reason = exc.strerror or str(exc) or type(exc).__name__
            problem = (
                f"cannot reach the scheduler at {self.api_url}: {reason} (is it running? "
                "`dispatchlet scheduler` or `dispatchlet dev` starts one)"
            )
            if isinstance(exc, ConnectionRefusedError):  # nothing was sent: a restart?
                brief = f"cannot reach the scheduler at {self.api_url}: {reason}"
                raise _NoAnswer(problem, brief=brief, reset=False) from None
            raise ClientError("unavailable", problem) from None

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._connection is None:
            cls = SecureConnection if self._parts.scheme == "https" else Connection
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


__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "AttemptInfo",
    "CallError",
    "CallInfo",
    "CallPage",
    "Cancelled",
    "Client",
    "ClientError",
    "Overview",
    "Resumed",
    "ScheduleInfo",
    "SyncResult",
]
