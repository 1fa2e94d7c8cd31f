"""The ``dispatchlet`` command: ``keygen``, ``serve``, ``call``, ``scheduler``, ``dev``,
``dispatch``, ``calls``, ``schedules`` and ``check-replay``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from . import call, check_replay, dev, dispatch, keygen, scheduler, schedules, serve
from .errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, CommandError

_EPILOG = """\
exit status:
  0    success
  1    call, dispatch --wait, calls wait: the function ran and failed (not OK)
  2    the command could not do its job: bad arguments, configuration, key,
       connection or HTTP error
  0    serve, scheduler, dev: stopped by SIGTERM
  130  interrupted (Ctrl+C, SIGINT)
  141  the reader of the output went away (`dispatchlet calls list | head`)

quick start:
  dispatchlet dev examples/hello.py greet_flaky World   # the whole loop, one call
  dispatchlet dev examples/hello.py                     # the loop; prints exports
  dispatchlet dispatch greet World --wait               # in another terminal
"""


def _version() -> str:
    try:
        return metadata.version("dispatchlet")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dispatchlet`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="dispatchlet",
        description="Develop and run Dispatch function endpoints.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    keygen.add_parser(commands)
    serve.add_parser(commands)
    call.add_parser(commands)
    scheduler.add_parser(commands)
    dev.add_parser(commands)
    dispatch.add_parsers(commands)
    schedules.add_parser(commands)
    check_replay.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe fails here, not at the interpreter's exit
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as a program killed by
        # SIGPIPE would. Python's docs ("Note on SIGPIPE"): point stdout at devnull so
        # that the interpreter's last flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except CommandError as exc:
        print(f"dispatchlet {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    raise SystemExit(main())
