"""``dispatchlet scheduler``: the scheduler, its calls in a SQLite file, or in a PostgreSQL
database that several scheduler processes share."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from ..core.dispatching import API_KEY_ENV
from ..core.keys import SIGNING_KEY_ENV, load_private_key, public_key_base64
from ..scheduler.retry import RetryPolicy
from ..scheduler.settings import DEFAULT_MAX_INPUT_SIZE, DEFAULT_PORT
from .errors import EXIT_OK, CommandError
from .serve import port, positive_int

DEFAULT_DATABASE = "dispatchlet.db"
DATABASE_URL_ENV = "DISPATCHLET_DATABASE_URL"

_DESCRIPTION = f"""\
Run the scheduler: it accepts calls (DispatchService/Dispatch), stores them in a
SQLite file (--db) or a PostgreSQL database (--database-url, {DATABASE_URL_ENV}:
several scheduler processes may share one), runs them on their endpoints with requests
signed by {SIGNING_KEY_ENV} (or --signing-key-file), retries what fails, and
answers CallService Get, Wait, List and Cancel.

Clients authenticate with Authorization: Bearer <api key>; the keys come from
{API_KEY_ENV} (comma-separated, for rotation). Without keys every request is
refused, unless --insecure (local development only: no API key, unsigned calls).
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "scheduler",
        help="run the scheduler (SQLite, or PostgreSQL for several processes)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        type=Path,
        help=f"the SQLite database file (default: {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="a PostgreSQL database (postgresql://user:password@host/db; default "
        f"{DATABASE_URL_ENV}) that several scheduler processes may share, instead of --db",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument(
        "--port", type=port, default=DEFAULT_PORT, help="port; 0 picks one (default: %(default)s)"
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other scheduler processes on this machine, the kernel "
        "spreading connections over them: several processes, one address",
    )
    parser.add_argument("--signing-key-file", metavar="PATH", type=Path)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no API key and unsigned calls: for local development only",
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
        default=300.0,
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Here: aiohttp and the store load only for this command, not for every one.
    from ..scheduler.server import POSTGRES_SCHEMES, Settings, serve
    from ..scheduler.store import StoreError

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    key = None
    if args.signing_key_file is not None:
        try:
            text, source = args.signing_key_file.read_text(), str(args.signing_key_file)
        except OSError as exc:
            raise CommandError(f"cannot read the signing key: {exc}") from None
    else:
        text, source = os.environ.get(SIGNING_KEY_ENV, ""), SIGNING_KEY_ENV
    if text.strip():
        try:
            key = load_private_key(text)
        except ValueError as exc:
            raise CommandError(f"invalid signing key in {source}: {exc}") from None
    elif not args.insecure:
        raise CommandError(
            f"no signing key: set {SIGNING_KEY_ENV} or pass --signing-key-file (`dispatchlet "
            "keygen` makes a pair; endpoints verify with its public half), or --insecure"
        )
    api_keys = [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    url = args.database_url or os.environ.get(DATABASE_URL_ENV, "")
    if url and args.db is not None:
        raise CommandError(f"give --db or a database URL ({DATABASE_URL_ENV}), not both")
    if url and not url.startswith(POSTGRES_SCHEMES):
        raise CommandError(f"not a PostgreSQL URL: {url[:40]!r} (postgresql://...)")
    database = url or str(args.db or DEFAULT_DATABASE)
    settings = Settings(
        database=database,
        host=args.host,
        port=args.port,
        signing_key=key,
        api_keys=api_keys,
        insecure=args.insecure,
        policy=RetryPolicy(base=args.backoff, cap=args.backoff_cap, max_attempts=args.max_attempts),
        attempt_timeout=args.attempt_timeout,
        max_per_destination=args.max_per_destination,
        reuse_port=args.reuse_port,
        max_input_size=args.max_input_size,
    )

    def ready(addresses: list[tuple[str, int]]) -> None:
        host, port_number = addresses[0]
        lines = [f"dispatchlet scheduler: listening at http://{host}:{port_number}"]
        lines.append(f"database: {_shown(database)}")
        if key is not None:
            lines.append(f"endpoints verify with: {public_key_base64(key.public_key())}")
        if args.insecure:
            lines.append("INSECURE: no API key is checked and calls are not signed")
        print("\n".join(lines), flush=True)

    try:
        asyncio.run(serve(settings, ready=ready))
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    print("dispatchlet scheduler: stopped", file=sys.stderr)
    return EXIT_OK


def _shown(database: str) -> str:
    """The database as printed: a URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(database)
    if parts.password is None:
        return database
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
