"""``dispatchlet check-replay``: replay recorded workflow journals against the current
code, to catch before a deploy a change that runs in flight could not resume."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from ..client import Client, ClientError
from ..core.endpoint import ENDPOINT_URL_ENV
from ..core.workflow import JOURNAL_TYPE_URL, ReplayCheck, check_replay
from .errors import EXIT_ERROR, EXIT_FAILED, EXIT_OK, CommandError
from .local_server import load_app

_DESCRIPTION = f"""\
Replay workflow journals with APP's code, calling nothing, and say for each whether a
run in that state would resume: a step made in another order than the journal records
(INCOMPATIBLE_STATE after a deploy), a workflow function gone, or a journal this code
cannot read. Exit 0 when all would resume, 1 when one would not.

JOURNAL is a file of one journal (Journal bytes: dispatchlet.testing's
WorkflowRun.save_journals writes them) or a folder of *.journal files. --scheduler
checks instead every workflow the scheduler holds suspended (DISPATCH_API_URL,
DISPATCH_API_KEY), those of --endpoint (default {ENDPOINT_URL_ENV}) when given.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check-replay",
        help="replay recorded workflow journals against the current code",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP", help="module[:attr] or path/to/file.py[:attr]")
    parser.add_argument("journals", metavar="JOURNAL", nargs="*", type=Path)
    parser.add_argument(
        "--scheduler",
        action="store_true",
        help="check the workflows suspended in the scheduler instead of files",
    )
    parser.add_argument("--endpoint", metavar="URL", help="with --scheduler: only this endpoint's")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.journals) == bool(args.scheduler):
        raise CommandError("give JOURNAL files or folders, or --scheduler (one of them)")
    endpoint = load_app(args.app)
    checked = 0
    failed = 0
    found = _from_scheduler(args.endpoint) if args.scheduler else _from_files(args.journals)
    for label, data in found:
        check = check_replay(endpoint, data)
        checked += 1
        if not check.ok:
            failed += 1
        print(_line(label, check))
    if not checked:
        print("no journals to check")
    else:
        print(f"{checked - failed} of {checked} would resume")
    return EXIT_FAILED if failed else EXIT_OK


def _line(label: str, check: ReplayCheck) -> str:
    verdict = "ok  " if check.ok else "FAIL"
    return (
        f"{verdict} {label}: {check.function or '?'}, {check.replayed} of {check.recorded} "
        f"steps replayed, {check.outcome}"
    )


def _from_files(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    for path in paths:
        if path.is_dir():
            files = sorted(path.glob("*.journal"))
            if not files:
                raise CommandError(f"{path}: no *.journal files in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise CommandError(f"{path}: no such file or folder", EXIT_ERROR)
        for file in files:
            yield str(file), file.read_bytes()


def _from_scheduler(endpoint: str | None) -> Iterator[tuple[str, bytes]]:
    wanted = (endpoint or os.environ.get(ENDPOINT_URL_ENV) or "").rstrip("/")
    try:
        with Client() as client:
            for state in ("waiting", "ready", "running"):
                for listed in client.list(state=state, page_size=500):
                    if wanted and listed.endpoint.rstrip("/") != wanted:
                        continue
                    # List gives summaries; the state is in the whole call.
                    journal = client.get(listed.dispatch_id).coroutine_state
                    if journal is None or journal.type_url != JOURNAL_TYPE_URL:
                        continue
                    yield listed.dispatch_id, journal.value
    except ClientError as exc:
        raise CommandError(f"the scheduler: {exc}") from None
