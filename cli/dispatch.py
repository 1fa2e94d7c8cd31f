"""``dispatchlet dispatch`` (start a call through the scheduler) and ``dispatchlet calls``
(list, show, wait for and cancel the calls it holds)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..client import CallInfo, Client, ClientError
from ..core.endpoint import ENDPOINT_URL_ENV
from ..core.status import Status
from ..core.values import EncodeError, to_any
from ..proto.dispatch.sdk.v1 import call_pb2
from .call import parse_input, render, seconds
from .errors import EXIT_ERROR, EXIT_FAILED, EXIT_OK, CommandError
from .local_server import DEFAULT_ENDPOINT_URL

_DISPATCH = f"""\
Start a call of FUNCTION through the scheduler and print its dispatch id; with
--wait, wait for it and print its output instead (exit 0 when it ended OK, 1 when it
failed). INPUT is read as by `dispatchlet call`: JSON when it parses, else a string.

The scheduler is DISPATCH_API_URL (default the local one, http://127.0.0.1:4450),
its API key DISPATCH_API_KEY; the endpoint is --endpoint, else {ENDPOINT_URL_ENV},
else {DEFAULT_ENDPOINT_URL}. `dispatchlet dev` prints the exports.
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
        "--json", dest="use_json", action="store_true", help="print the call as JSON"
    )
    parser.set_defaults(handler=run_dispatch)

    calls = commands.add_parser("calls", help="list, show, wait for or cancel calls")
    actions = calls.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="calls, newest last")
    listing.add_argument("--state", choices=("ready", "running", "waiting", "done"))
    listing.add_argument("--function")
    listing.add_argument("--root", metavar="DISPATCH_ID", help="the calls of one call tree")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(handler=run_list)
    for name, help_text, handler in (
        ("show", "one call, as JSON", run_show),
        ("wait", "wait for a call and print its output", run_wait),
        ("cancel", "end a call and its unfinished descendants", run_cancel),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("dispatch_id", metavar="ID")
        if name == "wait":
            action.add_argument("--timeout", type=seconds, metavar="SECONDS")
            action.add_argument("--json", dest="use_json", action="store_true")
        action.set_defaults(handler=handler)


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
    with client() as scheduler:
        (dispatch_id,) = _checked(lambda: scheduler.dispatch([call]))
        if not args.wait:
            print(dispatch_id)
            return EXIT_OK
        info = _checked(lambda: scheduler.wait(dispatch_id))
    return show(info, as_json=args.use_json)


def run_list(args: argparse.Namespace) -> int:
    with client() as scheduler:
        found = _checked(
            lambda: list(
                _take(
                    scheduler.list(
                        state=args.state, function=args.function, root_dispatch_id=args.root
                    ),
                    args.limit,
                )
            )
        )
    for info in found:
        status = info.status.name if info.status is not None else "-"
        print(
            f"{info.dispatch_id}  {info.state:<7}  {status:<17}  {info.attempts:>3}  "
            f"{info.function}"
        )
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    with client() as scheduler:
        info = _checked(lambda: scheduler.get(args.dispatch_id))
    print(json.dumps(as_dict(info), indent=2, default=str))
    return EXIT_OK


def run_wait(args: argparse.Namespace) -> int:
    with client() as scheduler:
        info = _checked(lambda: scheduler.wait(args.dispatch_id, timeout=args.timeout))
    if not info.done:
        print(f"{args.dispatch_id} is not done yet ({info.state})", file=sys.stderr)
        return EXIT_ERROR
    return show(info, as_json=args.use_json)


def run_cancel(args: argparse.Namespace) -> int:
    with client() as scheduler:
        count = _checked(lambda: scheduler.cancel(args.dispatch_id))
    print(f"cancelled {count} call(s)")
    return EXIT_OK


def show(info: CallInfo, *, as_json: bool = False) -> int:
    """Print a final call: its output (stdout) or its error (stderr)."""
    if as_json:
        print(json.dumps(as_dict(info), indent=2, default=str))
    elif info.status is Status.OK:
        print(render(info.output))
    else:
        status = info.status.name if info.status is not None else info.state
        error = f"{info.error.type}: {info.error.message}" if info.error else "no error"
        print(f"{status} after {info.attempts} attempt(s): {error}", file=sys.stderr)
    return EXIT_OK if info.status is Status.OK else EXIT_FAILED


def as_dict(info: CallInfo) -> dict[str, Any]:
    shown = dict(vars(info))
    shown["status"] = info.status.name if info.status is not None else None
    shown["error"] = vars(info.error) if info.error is not None else None
    try:
        json.dumps(info.output)
    except (TypeError, ValueError):
        shown["output"] = render(info.output)
    return shown


def _take(items: Any, limit: int) -> Any:
    for count, item in enumerate(items):
        if count >= limit:
            return
        yield item


def _checked(action: Any) -> Any:
    try:
        return action()
    except ClientError as exc:
        raise CommandError(f"{exc.code}: {exc.message}") from None
