"""``dispatchlet scheduler``: the scheduler, its calls in a SQLite file, or in a PostgreSQL
database that several scheduler processes share."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..core.dispatching import API_KEY_ENV
from ..core.errors import ConfigurationError
from ..core.keys import SIGNING_KEY_ENV, load_private_key, public_key_base64
from ..scheduler.retry import RetryPolicy
from ..scheduler.settings import (
    DATABASE_URL_ENV,
    DEFAULT_ATTEMPT_HISTORY,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_DATABASE,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HOST,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CHILDREN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DESCENDANTS,
    DEFAULT_MAX_INPUT_SIZE,
    DEFAULT_MAX_OUTPUT_SIZE,
    DEFAULT_PORT,
    MAX_OUTPUT_SIZE_ENV,
    METRICS_KEY_ENV,
    POSTGRES_SCHEMES,
    RETENTION_ENV,
    Settings,
    parse_duration,
)
from ..serving import logging_setup
from .call import seconds
from .errors import CommandError
from .serve import port, positive_int
from .signals import EPILOG, Stop, exit_now, stopping_loop

logger = logging.getLogger(__name__)

# The database's defaults, where `dispatchlet dev` imports them too.
__all__ = [
    "DATABASE_URL_ENV",
    "DEFAULT_DATABASE",
    "add_parser",
    "check_database_folder",
    "run",
    "serve_until_stopped",
]

_DESCRIPTION = f"""\
Run the scheduler: it accepts calls (DispatchService/Dispatch), stores them in a
SQLite file (--db) or a PostgreSQL database (--database-url, {DATABASE_URL_ENV}:
several scheduler processes may share one), runs them on their endpoints with requests
signed by {SIGNING_KEY_ENV} (or --signing-key-file), retries what fails, and
answers CallService Get, Wait, List and Cancel.

Clients authenticate with Authorization: Bearer <api key>; the keys come from
{API_KEY_ENV} (comma-separated, for rotation). Without keys every request is
refused (a warning at start says so), unless --insecure (local development only: no
API key, unsigned calls).

Ctrl+C (SIGINT) or SIGTERM stops it gracefully: new requests are refused and attempts
in flight finish, for up to {DEFAULT_GRACE_PERIOD:g} s; a second one stops it at once
(attempts in flight run again once their leases lapse).
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "scheduler",
        help="run the scheduler (SQLite, or PostgreSQL for several processes)",
        description=_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        type=Path,
        help=f"the SQLite database file, in a folder that exists (default: {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="a PostgreSQL database (postgresql://user:password@host/db; default "
        f"{DATABASE_URL_ENV}) that several scheduler processes may share, instead of --db",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address (default: %(default)s)")
    parser.add_argument(
        "--port", type=port, default=DEFAULT_PORT, help="port; 0 picks one (default: %(default)s)"
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other scheduler processes on this machine, the kernel "
        "spreading connections over them: several processes, one address, one PostgreSQL "
        "database (refused on SQLite)",
    )
    parser.add_argument("--signing-key-file", metavar="PATH", type=Path)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no API key and unsigned calls: for local development only",
    )
    parser.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        metavar="NAME",
        action="append",
        default=[],
        help="with --insecure, answer requests for this host name too (repeatable; "
        "'.example.com' allows every name under it): by default only IP addresses and "
        "localhost are answered, a guard against DNS rebinding",
    )
    parser.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve /metrics without a key (it names every destination); by default it "
        f"needs an API key or a key of {METRICS_KEY_ENV} (comma-separated)",
    )
    parser.add_argument(
        "--no-dashboard",
        dest="dashboard",
        action="store_false",
        help="serve no web dashboard at / (by default it is served, asking for an API key "
        "unless --insecure)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections kept open at once, lowered to fit the open files limit; past "
        "it the one idle for longest (nothing sent since it opened or since its last "
        "answer) is closed, or else, when every one has a request in progress, the new "
        "one is answered 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections-per-client",
        type=positive_int,
        default=None,
        metavar="N",
        help="connections one client address may hold, loopback aside (a local proxy or "
        "development setup is one address for all its clients); past it its idle one is "
        "closed, or else the new one is answered 503 (default: a quarter of "
        "--max-connections; behind a proxy on another machine, raise it to "
        "--max-connections)",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=seconds,
        default=DEFAULT_KEEPALIVE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection that has not sent a whole request head this long after it "
        "opened or after its last answer: idle and slow clients alike (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=seconds,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="SECONDS",
        help="answer 504 (deadline_exceeded) and close the connection when a request's "
        "body takes longer to arrive (default: %(default)s)",
    )
    parser.add_argument(
        "--max-attempts", type=positive_int, default=RetryPolicy.max_attempts, metavar="N"
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=RetryPolicy.base,
        metavar="SECONDS",
        help="the first retry's delay, doubled each time (default: %(default)s)",
    )
    parser.add_argument(
        "--backoff-cap",
        type=float,
        default=RetryPolicy.cap,
        metavar="SECONDS",
        help="the longest delay between attempts (default: %(default)s)",
    )
    parser.add_argument(
        "--attempt-timeout",
        type=float,
        default=DEFAULT_ATTEMPT_TIMEOUT,
        metavar="SECONDS",
        help="the longest an attempt may take; a call in flight when the scheduler dies "
        "runs again after about this much (default: %(default)s)",
    )
    parser.add_argument(
        "--max-per-destination",
        type=positive_int,
        metavar="N",
        help="at most N attempts in flight to one endpoint host or function; without it the "
        "limit adapts alone (more while calls succeed, half on THROTTLED, TIMEOUT, "
        "TEMPORARY_ERROR)",
    )
    parser.add_argument(
        "--max-input-size",
        type=positive_int,
        default=DEFAULT_MAX_INPUT_SIZE,
        metavar="BYTES",
        help="the largest input of a call: a larger one is refused at Dispatch, and a Poll or "
        "tail call that makes one ends its call (default: %(default)s, an endpoint's own "
        "default limit)",
    )
    parser.add_argument(
        "--max-children",
        type=positive_int,
        default=DEFAULT_MAX_CHILDREN,
        metavar="N",
        help="the most unfinished children one call may have: a Poll that would leave it "
        "more ends the call, with an error naming this limit (default: %(default)s)",
    )
    parser.add_argument(
        "--max-descendants",
        type=positive_int,
        default=DEFAULT_MAX_DESCENDANTS,
        metavar="N",
        help="the most calls below one root dispatch, over its life: a Poll that would put "
        "more ends its call, with an error naming this limit (default: %(default)s)",
    )
    parser.add_argument(
        "--max-output-size",
        type=positive_int,
        metavar="BYTES",
        help="the largest output (or error, or workflow state) of a call: an endpoint answer "
        "with a larger one ends its call INVALID_RESPONSE, and no more of an answer is read "
        f"(default: {MAX_OUTPUT_SIZE_ENV}, else {DEFAULT_MAX_OUTPUT_SIZE})",
    )
    parser.add_argument(
        "--retention",
        type=duration,
        metavar="DURATION",
        help="delete the finished call trees whose root finished longer ago than this, in "
        "the background: 7d, 12h, 30m, 90s or seconds; 0 keeps them for ever "
        f"(default: {RETENTION_ENV}, else 7d)",
    )
    parser.add_argument(
        "--attempt-history",
        type=_history_size,
        default=DEFAULT_ATTEMPT_HISTORY,
        metavar="N",
        help="how many of each call's latest attempts to keep, with their start, duration, "
        "status and error (calls show, Get); 0 keeps none (default: %(default)s)",
    )
    logging_setup.add_arguments(parser, default_level="info")
    parser.set_defaults(handler=run)


def duration(text: str) -> float:
    """Seconds from a duration (``parse_duration``: ``--retention``, ``calls purge
    --older-than``), or argparse's error."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _history_size(text: str) -> int:
    """``--attempt-history``: a count of attempts, 0 (none kept) or more."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number") from None
    if not 0 <= number <= MAX_ATTEMPT_HISTORY:
        raise argparse.ArgumentTypeError(f"{number} is not in 0..{MAX_ATTEMPT_HISTORY}")
    return number


MAX_ATTEMPT_HISTORY = 10_000
"""The most attempts of one call ``--attempt-history`` may keep (each is a row to read
with every Get of the call)."""


def run(args: argparse.Namespace) -> int:
    # Here: aiohttp and the store load only for this command, not for every one.
    from ..scheduler.store import StoreError

    logging_setup.configure(args)
    given: dict[str, Any] = {}
    if args.signing_key_file is not None:
        given["signing_key"] = _key_from_file(args.signing_key_file)
    if args.max_output_size is not None:
        given["max_output_size"] = args.max_output_size
    if args.retention is not None:
        given["retention"] = args.retention
    url = args.database_url or os.environ.get(DATABASE_URL_ENV, "")
    if url and args.db is not None:
        raise CommandError(f"give --db or a database URL ({DATABASE_URL_ENV}), not both")
    if url and not url.startswith(POSTGRES_SCHEMES):
        raise CommandError(f"not a PostgreSQL URL: {url[:40]!r} (postgresql://...)")
    if args.reuse_port and not url:
        raise CommandError(
            "--reuse-port shares the port with other scheduler processes, which must share "
            f"one PostgreSQL database: give --database-url or {DATABASE_URL_ENV} (on SQLite "
            "each process would keep calls of its own that the others never see)"
        )
    database = url or str(check_database_folder(args.db or Path(DEFAULT_DATABASE)))
    try:
        # The signing key (unless from a file) and the API keys from the environment.
        settings = Settings.from_env(
            database=database,
            host=args.host,
            port=args.port,
            insecure=args.insecure,
            allowed_hosts=tuple(args.allowed_hosts),
            policy=RetryPolicy(
                base=args.backoff, cap=args.backoff_cap, max_attempts=args.max_attempts
            ),
            attempt_timeout=args.attempt_timeout,
            max_per_destination=args.max_per_destination,
            reuse_port=args.reuse_port,
            max_input_size=args.max_input_size,
            max_children=args.max_children,
            max_descendants=args.max_descendants,
            max_connections=args.max_connections,
            max_connections_per_client=args.max_connections_per_client,
            keepalive_timeout=args.keepalive_timeout,
            body_timeout=args.body_timeout,
            metrics_public=args.metrics_public,
            dashboard=args.dashboard,
            attempt_history=args.attempt_history,
            **given,
        )
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    key = settings.signing_key
    if key is None and not args.insecure:
        raise CommandError(
            f"no signing key: set {SIGNING_KEY_ENV} or pass --signing-key-file (`dispatchlet "
            "keygen` makes a pair; endpoints verify with its public half), or --insecure"
        )
    if not settings.api_keys and not args.insecure:
        logger.warning(
            "%s is not set: every request to the API will be refused (401 unauthenticated); "
            "set it to the clients' keys (comma-separated), or pass --insecure for local "
            "development",
            API_KEY_ENV,
        )

    def ready(addresses: list[tuple[str, int]]) -> None:
        host, port_number = addresses[0]
        lines = [f"dispatchlet scheduler: listening at http://{host}:{port_number}"]
        lines.append(f"database: {_shown(database)}")
        if settings.dashboard:
            lines.append(f"dashboard: http://{host}:{port_number}/")
        if key is not None:
            lines.append(f"endpoints verify with: {public_key_base64(key.public_key())}")
        if args.insecure:
            lines.append("INSECURE: no API key is checked and calls are not signed")
        print("\n".join(lines), flush=True)

    try:
        status = asyncio.run(serve_until_stopped("scheduler", settings, ready))
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    except BrokenPipeError:
        raise  # its output's reader went away (`| head`): the command line's own exit
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    logging_setup.notice("dispatchlet scheduler: stopped")
    return status


async def serve_until_stopped(
    command: str,
    settings: Settings,
    ready: Callable[[list[tuple[str, int]]], None],
    stop: asyncio.Event | None = None,
) -> int:
    """Run the scheduler until SIGINT, SIGTERM or ``stop``: the first signal stops it
    gracefully (attempts in flight finish, for up to the grace period), a second one at
    once. The exit status the signal means."""
    from ..scheduler.server import serve

    stopped = stop or asyncio.Event()

    def stopping(in_flight: int) -> None:
        if not signals.requested:
            return
        if in_flight:
            waits = (
                f"waiting up to {settings.grace_period:g} s for {in_flight} attempt(s) in "
                "flight; Ctrl+C again stops at once (they then run again once their "
                "leases lapse)"
            )
        else:
            waits = "no attempt in flight"
        logging_setup.notice(f"dispatchlet {command}: stopping: {waits}", in_flight=in_flight)

    def at_once(stop: Stop) -> None:
        logging_setup.notice(
            f"dispatchlet {command}: stopped at once; attempts still in flight run again "
            "once their leases lapse"
        )
        exit_now(stop.exit_status)

    loop = asyncio.get_running_loop()
    with stopping_loop(loop, lambda signum: stopped.set(), at_once) as signals:
        await serve(settings, ready=ready, stop=stopped, stopping=stopping, handle_signals=False)
    return signals.exit_status


def _key_from_file(path: Path) -> Ed25519PrivateKey | None:
    """The key in --signing-key-file; None if it is empty (as an unset variable)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CommandError(f"cannot read the signing key: {exc}") from None
    if not text.strip():
        return None
    try:
        return load_private_key(text)
    except ValueError as exc:
        raise CommandError(f"invalid signing key in {path}: {exc}") from None


def check_database_folder(path: Path) -> Path:
    """``path``, a SQLite file whose folder must exist: a typo in it must not make a new
    tree of folders with an empty database in it."""
    folder = path.expanduser().absolute().parent
    if not folder.is_dir():
        raise CommandError(
            f"--db {path}: the folder {folder} does not exist (create it first: no "
            "folder is made for a database, so that a typo does not start an empty one)"
        )
    return path


def _shown(database: str) -> str:
    """The database as printed: a URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(database)
    if parts.password is None:
        return database
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
