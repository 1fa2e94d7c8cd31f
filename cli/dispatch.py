"""``dispatchlet dispatch`` (start a call through the scheduler) and ``dispatchlet calls``
(list, show, wait for, cancel, retry, re-run the calls it holds, send messages to them)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from ..client import CallInfo, Client, ClientError
from ..core.call_options import key_problem
from ..core.dispatch_options import MAX_COUNT, Backoff, settings
from ..core.endpoint import ENDPOINT_URL_ENV
from ..core.messages import topic_problem
from ..core.status import Status
from ..core.values import EncodeError, to_any
from ..proto.dispatch.sdk.v1 import call_pb2
from .call import parse_input, render, seconds
from .call_views import as_dict, attempt_line, describe, table, unlisted_result
from .errors import EXIT_ERROR, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CommandError
from .local_server import DEFAULT_ENDPOINT_URL
from .overview_views import overview_dict, overview_lines
from .scheduler import duration

T = TypeVar("T")
MAX_PAGE = 1000  # the scheduler's largest page

_DISPATCH = f"""\
Start a call of FUNCTION through the scheduler and print its dispatch id; with
--wait, wait for it and print its output instead (exit 0 when it ended OK, 1 when it
failed). INPUT is read as by `dispatchlet call`: JSON when it parses, else a string.

The scheduler is DISPATCH_API_URL (default the local one, http://127.0.0.1:4450),
its API key DISPATCH_API_KEY; the endpoint is --endpoint, else {ENDPOINT_URL_ENV},
else {DEFAULT_ENDPOINT_URL}. `dispatchlet dev` prints the exports.

With --key KEY, the call has an idempotency key: while the scheduler keeps the first
call dispatched with KEY, dispatching again with it starts nothing and prints the
first call's dispatch id (so a script may retry a dispatch safely).

With --delay DURATION (90, 30s, 10m, 2h, 1d) or --at TIME (ISO 8601 with its offset,
e.g. 2026-12-05T18:00:00Z), the call is stored at once and first runs no earlier than
then; its expiration counts from then. --max-attempts N, --timeout DURATION (per
attempt) and --backoff DURATION (the first retry's wait, doubled each retry, at most
--backoff-cap DURATION) replace the scheduler's retry policy for this call.

Limits, as @endpoint.function(...) gives them to calls made in Python: --concurrency
N (at most N attempts of FUNCTION in flight across the scheduler's processes),
--concurrency-key KEY with --concurrency-per-key N (at most N in flight with KEY),
--rate-limit COUNT/PERIOD (at most COUNT attempts of FUNCTION start per PERIOD:
10/1s, 100/1m, 1000/1h). A call over a limit waits; it does not fail.

With --wait (and `calls wait`), stderr tells the dispatch id at once, then each
failed attempt as it happens; Ctrl+C stops waiting, not the call (exit 130), and
`dispatchlet calls wait ID` follows it again.
"""

_CALLS = """\
What became of the calls the scheduler holds.

  list    the newest calls first, one per line: dispatch id, created (UTC), state,
          final status, attempts, duration, function, error (the last one while the
          call is retried). When there are more, stderr's last line says
          "more: --cursor TOKEN": pass it for the next page. --json prints one JSON
          object per call and line. --status takes a final status, or failed.
  show    one call, field by field, with its input and output decoded, its latest
          attempts as a table (number, start, duration, status, function, error)
          and, for a suspended workflow, its journal step by step; --json for
          programs.
  wait    wait for a call and print its output (exit 0 OK, 1 failed), each failed
          attempt on stderr as it happens.
  cancel  end a call and its unfinished descendants.
  retry   start the next attempt of a call that waits for its retry now, not when
          its backoff ends (an error for a call running, waiting or done).
  rerun   run a done call again: a new call with the same function, endpoint and
          input, whose "re-run of" names the old one; prints its dispatch id. A call
          not done is refused: cancel it first.
  send    send a message to a running workflow: `calls send ID TOPIC VALUE`, VALUE
          read as INPUT is (JSON when it parses, else a string; --string: always a
          string), for its receive(TOPIC); kept in order until received. An
          unknown or done call is an error.
  resume  resume a failed workflow from where it failed: a new call, whose "re-run
          of" names the old one, that starts from its journal, so that the steps
          that finished are not run again and the failed one is tried anew, and
          which takes the messages no receive of the failed call took; prints its
          dispatch id (and, on stderr, how many steps it kept and runs again).
          A call not done, done OK, or that is not a workflow is refused.
  purge   delete the finished call trees whose root finished longer ago than
          --older-than (30d, 12h, ...), only those whose root ended with --status
          if given; prints how many calls were deleted.

`list --parent ID` lists a call's children, `list --rerun-of ID` its re-runs;
`list --since TIME --until TIME` the calls created from TIME (UTC unless it says)
until TIME.
  stats   the last hour's calls by minute and final status, each function's count,
          failures, p50 and p99 (from creation to finish), the slowest and most
          failing functions, the queue now (ready, scheduled, running, waiting,
          the oldest ready call's wait) and the answering process's destinations
          (concurrency limit, in flight); --json for programs.
"""


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dispatch",
        help="start a call through the scheduler",
        description=_DISPATCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("function", metavar="FUNCTION")
    parser.add_argument("input", metavar="INPUT", nargs="?")
    parser.add_argument("--string", action="store_true", help="send INPUT as a string")
    parser.add_argument("--endpoint", metavar="URL", help="the endpoint's base URL")
    parser.add_argument(
        "--wait", action="store_true", help="wait for the call and print its output"
    )
    parser.add_argument(
        "--expiration", type=seconds, metavar="SECONDS", help="give up on the call after this"
    )
    parser.add_argument(
        "--key",
        type=idempotency_key,
        metavar="KEY",
        help="idempotency key: the same key again starts nothing and gives the same id",
    )
    parser.add_argument(
        "--delay",
        type=delay,
        metavar="DURATION",
        help="first run no earlier than this long from now (90, 30s, 10m, 2h, 1d)",
    )
    parser.add_argument(
        "--at",
        type=start_time,
        metavar="TIME",
        help="first run no earlier than this time (ISO 8601 with its offset)",
    )
    parser.add_argument(
        "--max-attempts", type=attempts, metavar="N", help="at most N attempts, the first included"
    )
    parser.add_argument(
        "--timeout",
        type=attempt_timeout,
        metavar="DURATION",
        help="how long one attempt may run (10, 30s, 5m)",
    )
    add_backoff_arguments(parser)
    add_limit_arguments(parser, per_key=True)
    parser.add_argument(
        "--json", dest="use_json", action="store_true", help="print the call as JSON"
    )
    parser.set_defaults(handler=run_dispatch)

    calls = commands.add_parser(
        "calls",
        help="list, show, wait for, cancel, retry, re-run, send a message to or purge calls",
        description=_CALLS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = calls.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="calls, newest first, a page at a time")
    listing.add_argument("--state", choices=("ready", "running", "waiting", "done"))
    listing.add_argument(
        "--status",
        type=status_filter,
        metavar="STATUS",
        help="final status: OK, PERMANENT_ERROR, TIMEOUT, ..., or failed (any but OK)",
    )
    listing.add_argument("--function")
    listing.add_argument("--root", metavar="DISPATCH_ID", help="the calls of one call tree")
    listing.add_argument("--parent", metavar="DISPATCH_ID", help="the children of one call")
    listing.add_argument("--rerun-of", metavar="DISPATCH_ID", help="the re-runs of one call")
    listing.add_argument(
        "--since",
        type=moment,
        metavar="TIME",
        help="the calls created at or after this time (UTC unless it says: 2026-12-05T18:00)",
    )
    listing.add_argument(
        "--until", type=moment, metavar="TIME", help="the calls created before this time"
    )
    listing.add_argument(
        "--limit", type=page_size, default=100, help="calls per page, up to 1000 (default 100)"
    )
    listing.add_argument(
        "--cursor", metavar="TOKEN", help="the next page, as the previous one's last line said"
    )
    listing.add_argument(
        "--json", dest="use_json", action="store_true", help="one JSON object per call and line"
    )
    listing.set_defaults(handler=run_list)
    purging = actions.add_parser(
        "purge",
        help="delete the finished call trees whose root finished longer ago than a duration",
    )
    purging.add_argument(
        "--older-than",
        type=duration,
        required=True,
        metavar="DURATION",
        help="how long ago the root finished: 30d, 12h, 30m, 90s or seconds (0: all)",
    )
    purging.add_argument(
        "--status",
        type=status_filter,
        metavar="STATUS",
        help="only trees whose root ended so: OK, PERMANENT_ERROR, ..., or failed (any but OK)",
    )
    purging.set_defaults(handler=run_purge)
    sending = actions.add_parser("send", help="send a message to a workflow's receive(TOPIC)")
    sending.add_argument("dispatch_id", metavar="ID")
    sending.add_argument("topic", metavar="TOPIC", type=message_topic)
    sending.add_argument("value", metavar="VALUE", nargs="?")
    sending.add_argument("--string", action="store_true", help="send VALUE as a string")
    sending.set_defaults(handler=run_send)
    for name, help_text, handler in (
        (
            "show",
            "one call: its fields, input, output, attempts, a workflow's journal",
            run_show,
        ),
        ("wait", "wait for calls and print their outputs", run_wait),
        ("cancel", "end a call and its unfinished descendants", run_cancel),
        ("retry", "start a call's next attempt now, not after its backoff", run_retry),
        ("rerun", "run a done call again, as a new call linked to it", run_rerun),
        ("resume", "resume a failed workflow from its failed step", run_resume),
    ):
        action = actions.add_parser(name, help=help_text)
        if name == "wait":
            action.add_argument("dispatch_ids", metavar="ID", nargs="+")
            action.add_argument("--timeout", type=seconds, metavar="SECONDS")
        else:
            action.add_argument("dispatch_id", metavar="ID")
        if name in ("show", "wait"):
            action.add_argument("--json", dest="use_json", action="store_true")
        action.set_defaults(handler=handler)
    stats = actions.add_parser("stats", help="the last hour's calls and the queue now")
    stats.add_argument("--json", dest="use_json", action="store_true")
    stats.set_defaults(handler=run_stats)


def add_backoff_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backoff`` and ``--backoff-cap``: a call's own wait before retries."""
    parser.add_argument(
        "--backoff",
        type=backoff_wait,
        metavar="DURATION",
        help="the first retry's wait, doubled each retry (1s, 30s, 5m)",
    )
    parser.add_argument(
        "--backoff-cap",
        type=backoff_wait,
        metavar="DURATION",
        help="the longest wait between attempts (with --backoff)",
    )


def backoff_wait(text: str) -> float:
    """``--backoff``, ``--backoff-cap``: a positive duration."""
    return positive_duration(text, "a wait between attempts")


def backoff_of(args: argparse.Namespace) -> Backoff | None:
    """The ``Backoff`` that ``--backoff`` and ``--backoff-cap`` ask for, if any."""
    if args.backoff is None:
        if args.backoff_cap is not None:
            raise CommandError("--backoff-cap needs --backoff: the first retry's wait")
        return None
    try:
        return Backoff(args.backoff, args.backoff_cap)
    except ValueError as exc:
        raise CommandError(str(exc).replace("Backoff maximum", "--backoff-cap")) from None


def add_limit_arguments(parser: argparse.ArgumentParser, *, per_key: bool) -> None:
    """``--concurrency``, ``--rate-limit`` and (``per_key``) the per-key limit."""
    parser.add_argument(
        "--concurrency",
        type=attempts,
        metavar="N",
        help="at most N attempts of the function in flight at once",
    )
    if per_key:
        parser.add_argument(
            "--concurrency-key", metavar="KEY", help="the call's key for --concurrency-per-key"
        )
        parser.add_argument(
            "--concurrency-per-key",
            type=attempts,
            metavar="N",
            help="at most N attempts in flight with the same --concurrency-key",
        )
    parser.add_argument(
        "--rate-limit",
        type=rate_limit,
        metavar="COUNT/PERIOD",
        help="at most COUNT attempts of the function start per PERIOD (10/1s, 100/1m)",
    )


def rate_limit(text: str) -> tuple[int, float]:
    """``--rate-limit``: ``COUNT/PERIOD``, PERIOD a duration (``1s``, ``1m``, ``90``) or
    a unit alone (``10/s`` is ``10/1s``)."""
    from ..scheduler.store.limits import MAX_RATE_PERIOD  # only when one is given

    count, slash, period = text.partition("/")
    if not slash:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not COUNT/PERIOD: write it as 10/1s, 100/1m or 1000/1h"
        )
    number = attempts(count.strip())
    period = period.strip()
    seconds = delay("1" + period if period in ("s", "m", "h", "d") else period)
    if not 0 < seconds <= MAX_RATE_PERIOD:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r}: a rate limit's period is above 0 and at most a day"
        )
    return number, seconds


def status_filter(text: str) -> str:
    """A final status name (any case), or ``failed``."""
    if text.lower() == "failed":
        return "failed"
    name = text.upper()
    if name not in Status.__members__ or name == "UNSPECIFIED":
        names = ", ".join(s.name for s in Status if s is not Status.UNSPECIFIED)
        raise argparse.ArgumentTypeError(f"{text!r} is not a status: {names}, or failed")
    return name


def idempotency_key(text: str) -> str:
    problem = key_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}")
    return text


def delay(text: str) -> float:
    """``--delay``: a duration of 0 or more."""
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: a delay cannot be negative")
    return duration(text)


def attempt_timeout(text: str) -> float:
    """``--timeout``: a positive duration."""
    return positive_duration(text, "an attempt's timeout")


def positive_duration(text: str, what: str) -> float:
    """A duration above 0; argparse's error naming ``what`` otherwise."""
    found = delay(text)
    if found <= 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: {what} must be positive")
    return found


def attempts(text: str) -> int:
    """``--max-attempts``, ``--concurrency``, ``--concurrency-per-key``: a count of 1 or
    more."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number") from None
    if not 1 <= number <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{number} is not in 1..{MAX_COUNT}")
    return number


def start_time(text: str) -> datetime.datetime:
    """``--at``: an ISO 8601 time that names its offset (``Z`` for UTC): a time without
    one would be read in some zone the user did not say."""
    written = text.strip()
    try:
        found = datetime.datetime.fromisoformat(
            written[:-1] + "+00:00" if written.endswith(("Z", "z")) else written
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a time: write it as 2026-12-05T18:00:00Z or with an "
            "offset, 2026-12-05T19:00:00+01:00"
        ) from None
    if found.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} has no timezone: add Z (UTC) or its offset, e.g. {written}Z"
        )
    return found


def message_topic(text: str) -> str:
    problem = topic_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}")
    return text


def moment(text: str) -> datetime.datetime:
    """An ISO 8601 time, in UTC unless it names its offset."""
    try:
        found = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: write it as 2026-12-05T18:00:00 (UTC) or with an offset"
        ) from None
    return found if found.tzinfo is not None else found.replace(tzinfo=datetime.timezone.utc)


def page_size(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text} is not a number of calls from 1 to {MAX_PAGE}")
    return number


def client() -> Client:
    try:
        return Client()
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def run_dispatch(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or os.environ.get(ENDPOINT_URL_ENV) or DEFAULT_ENDPOINT_URL
    call = call_pb2.Call(function=args.function, endpoint=endpoint)
    if args.input is not None:
        value = args.input if args.string else parse_input(args.input)
        try:
            call.input.CopyFrom(to_any(value))
        except EncodeError as exc:
            raise CommandError(f"cannot send INPUT: {exc}") from None
    if args.expiration is not None:
        call.expiration.FromMilliseconds(int(args.expiration * 1000))
    try:
        given = settings(
            "dispatch",
            key=args.key,
            delay=args.delay,
            at=args.at,
            max_attempts=args.max_attempts,
            timeout=args.timeout,
            backoff=backoff_of(args),
            concurrency=args.concurrency,
            concurrency_key=args.concurrency_key,
            concurrency_per_key=args.concurrency_per_key,
            rate_limit=args.rate_limit,
        )
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if (given.concurrency_key is None) != (given.concurrency_per_key is None):
        raise CommandError(
            "--concurrency-key and --concurrency-per-key go together: the key and the limit"
            " of the calls with it"
        )
    given.apply(call)
    with client() as scheduler:
        (dispatch_id,) = checked(lambda: scheduler.dispatch([call]))
        if not args.wait:
            print(dispatch_id)
            return EXIT_OK
        return _wait(scheduler, dispatch_id, None, as_json=args.use_json)


def run_wait(args: argparse.Namespace) -> int:
    with client() as scheduler:
        if len(args.dispatch_ids) > 1:
            return _wait_all(scheduler, args.dispatch_ids, args.timeout, as_json=args.use_json)
        (dispatch_id,) = args.dispatch_ids
        return _wait(scheduler, dispatch_id, args.timeout, as_json=args.use_json)


def _wait_all(
    scheduler: Client, dispatch_ids: list[str], timeout: float | None, *, as_json: bool
) -> int:
    """Wait for several calls (``Client.wait_all``) and print each, in the order given:
    its id and output (stdout) or error (stderr); with ``as_json``, one JSON array."""
    _note(f"waiting for {len(dispatch_ids)} calls (Ctrl+C stops waiting, not the calls)")
    try:
        infos = checked(lambda: scheduler.wait_all(dispatch_ids, timeout=timeout))
    except KeyboardInterrupt:
        _note("stopped waiting; the calls go on")
        return EXIT_INTERRUPTED
    if as_json:
        print(json.dumps([as_dict(info) for info in infos], indent=2, ensure_ascii=False))
    for info in infos:
        if not info.done:
            _note(f"{info.dispatch_id} is not done yet ({info.state})")
        elif info.status is Status.OK and not as_json:
            print(f"{info.dispatch_id}\t{render(info.output)}")
        elif info.status is not Status.OK:
            _note(f"{info.dispatch_id} {failure(info)}")
    if not all(info.done for info in infos):
        return EXIT_ERROR
    return EXIT_OK if all(info.status is Status.OK for info in infos) else EXIT_FAILED


def _wait(scheduler: Client, dispatch_id: str, timeout: float | None, *, as_json: bool) -> int:
    """Wait for a call, telling on stderr its id at once and each failed attempt as it
    happens; Ctrl+C stops waiting (not the call) with exit status 130."""
    _note(f"waiting for {dispatch_id} (Ctrl+C stops waiting, not the call)")
    try:
        info = checked(
            lambda: scheduler.wait(
                dispatch_id, timeout=timeout, on_attempt=lambda a: _note(attempt_line(a))
            )
        )
    except KeyboardInterrupt:
        _note(
            f"stopped waiting; the call goes on. Follow it with: dispatchlet calls wait "
            f"{dispatch_id}"
        )
        return EXIT_INTERRUPTED
    if not info.done:
        _note(f"{dispatch_id} is not done yet ({info.state})")
        return EXIT_ERROR
    return show(info, as_json=as_json)


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_list(args: argparse.Namespace) -> int:
    with client() as scheduler:
        page = checked(
            lambda: scheduler.list_page(
                state=args.state,
                function=args.function,
                root_dispatch_id=args.root,
                status=args.status,
                newest_first=True,
                page_size=args.limit,
                cursor=args.cursor,
                parent_dispatch_id=args.parent,
                rerun_of=args.rerun_of,
                created_after=args.since,
                created_before=args.until,
            )
        )
        if args.use_json:
            for listed in page.calls:
                print(json.dumps(as_dict(_whole_result(scheduler, listed)), ensure_ascii=False))
        elif page.calls:
            print("\n".join(table(page.calls)))
    if page.cursor is not None:
        # On stderr, so that what a pipe reads is the calls alone; after them.
        sys.stdout.flush()
        _note(f"more: --cursor {page.cursor}")
    return EXIT_OK


def _whole_result(scheduler: Client, listed: CallInfo) -> CallInfo:
    """``listed`` with its output (or an error too large to list): List gives
    summaries, so those come from the whole call, one at a time, where there are some."""
    if not unlisted_result(listed):
        return listed
    whole = checked(lambda: scheduler.get(listed.dispatch_id))
    return dataclasses.replace(listed, output=whole.output, error=whole.error)


def run_show(args: argparse.Namespace) -> int:
    with client() as scheduler:
        info = checked(lambda: scheduler.get(args.dispatch_id))
    if args.use_json:
        print(json.dumps(as_dict(info, history=True), indent=2, ensure_ascii=False))
    else:
        print("\n".join(describe(info)))
    return EXIT_OK


def run_cancel(args: argparse.Namespace) -> int:
    with client() as scheduler:
        cancelled = checked(lambda: scheduler.cancel(args.dispatch_id))
    rest = "; the rest of its tree is ending in the background" if cancelled.more_ending else ""
    print(f"cancelled {cancelled} call(s){rest}")
    return EXIT_OK


def run_retry(args: argparse.Namespace) -> int:
    with client() as scheduler:
        brought = checked(lambda: scheduler.retry(args.dispatch_id))
    print("retrying now" if brought else "due already: its next attempt starts as soon as it can")
    return EXIT_OK


def run_rerun(args: argparse.Namespace) -> int:
    with client() as scheduler:
        print(checked(lambda: scheduler.rerun(args.dispatch_id)))
    return EXIT_OK


def run_send(args: argparse.Namespace) -> int:
    value = None
    if args.value is not None:
        value = args.value if args.string else parse_input(args.value)
    with client() as scheduler:
        try:
            delivered = checked(lambda: scheduler.send(args.dispatch_id, args.topic, value))
        except EncodeError as exc:
            raise CommandError(f"cannot send VALUE: {exc}") from None
    print("received" if delivered else "kept until the workflow receives it")
    return EXIT_OK


def run_resume(args: argparse.Namespace) -> int:
    with client() as scheduler:
        resumed = checked(lambda: scheduler.resume(args.dispatch_id))
    print(resumed)
    print(
        f"resumed with {resumed.steps_kept} step(s) kept, {resumed.steps_retried} to run again",
        file=sys.stderr,
    )
    return EXIT_OK


def run_stats(args: argparse.Namespace) -> int:
    with client() as scheduler:
        overview = checked(scheduler.overview)
    if args.use_json:
        print(json.dumps(overview_dict(overview), indent=2, ensure_ascii=False))
    else:
        print("\n".join(overview_lines(overview)))
    return EXIT_OK


def run_purge(args: argparse.Namespace) -> int:
    with client() as scheduler:
        deleted = checked(lambda: scheduler.purge(args.older_than, status=args.status))
    print(f"deleted {deleted} call(s)")
    return EXIT_OK


def show(info: CallInfo, *, as_json: bool = False) -> int:
    """Print a final call: its output (stdout) or its error (stderr)."""
    if as_json:
        print(json.dumps(as_dict(info), indent=2, ensure_ascii=False))
    elif info.status is Status.OK:
        print(render(info.output))
    else:
        print(failure(info), file=sys.stderr)
    return EXIT_OK if info.status is Status.OK else EXIT_FAILED


def failure(info: CallInfo) -> str:
    """How a final call that did not succeed ended."""
    status = info.status.name if info.status is not None else info.state
    error = f"{info.error.type}: {info.error.message}" if info.error else "no error"
    return f"{status} after {info.attempts} attempt(s): {error}"


def checked(action: Callable[[], T]) -> T:
    try:
        return action()
    except ClientError as exc:
        raise CommandError(f"{exc.code}: {exc.message}") from None
