"""``dispatchlet dev``: the whole loop on this machine, the scheduler (SQLite) and the
app's endpoint (waitress), both on loopback, wired with a fresh key pair and API key."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import shlex
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..client import Client, ClientError
from ..core.dispatching import API_KEY_ENV, API_URL_ENV
from ..core.endpoint import ENDPOINT_URL_ENV, Endpoint
from ..core.values import EncodeError, to_any
from ..proto.dispatch.sdk.v1 import call_pb2
from ..scheduler.settings import DEFAULT_PORT
from .call import parse_input
from .dispatch import show
from .errors import EXIT_OK, CommandError
from .local_server import load_app, serving
from .scheduler import DEFAULT_DATABASE
from .serve import port

_DESCRIPTION = """\
Run the scheduler and serve APP, both on this machine, with a key pair and an API key
made for the session, and print the exports another terminal needs for
`dispatchlet dispatch` and `dispatchlet calls`. Ctrl+C stops both.

With FUNCTION, dispatch one call of it (INPUT as for `dispatchlet call`), wait for it,
print its output and how many attempts it took, and stop: the whole loop in one command.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dev",
        help="the scheduler and an app's endpoint on this machine, wired together",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP", help="module[:attr] or path/to/file.py[:attr]")
    parser.add_argument("function", metavar="FUNCTION", nargs="?")
    parser.add_argument("input", metavar="INPUT", nargs="?")
    parser.add_argument(
        "--port", type=port, help="the endpoint's port (default 8000; with FUNCTION a free one)"
    )
    parser.add_argument(
        "--scheduler-port",
        type=port,
        help=f"the scheduler's port (default {DEFAULT_PORT}; with FUNCTION a free one)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help=f"the database (default {DEFAULT_DATABASE}; with FUNCTION a temporary one)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    endpoint = load_app(args.app)
    key = Ed25519PrivateKey.generate()
    api_key = secrets.token_urlsafe(24)
    endpoint.set_verification_key(key.public_key())
    call = None
    if args.function is not None:
        call = call_pb2.Call(function=args.function)
        if args.input is not None:
            try:
                call.input.CopyFrom(to_any(parse_input(args.input)))
            except EncodeError as exc:
                raise CommandError(f"cannot send INPUT: {exc}") from None
    once = call is not None
    if args.port is None:
        args.port = 0 if once else 8000
    if args.scheduler_port is None:
        args.scheduler_port = 0 if once else DEFAULT_PORT
    with tempfile.TemporaryDirectory(prefix="dispatchlet-dev-") as scratch:
        if args.db is None:
            args.db = Path(scratch, DEFAULT_DATABASE) if once else Path(DEFAULT_DATABASE)
        return _serve(args, endpoint, key, api_key, call)


def _serve(
    args: argparse.Namespace,
    endpoint: Endpoint,
    key: Ed25519PrivateKey,
    api_key: str,
    call: call_pb2.Call | None,
) -> int:
    try:
        with serving(endpoint, port=args.port) as endpoint_url:
            if endpoint.endpoint_url is None:
                # The app's own dispatches (greet.dispatch(...)) reach it here.
                endpoint.endpoint_url = endpoint_url
            return asyncio.run(_loop(args, key, api_key, endpoint_url, call))
    except OSError as exc:
        raise CommandError(f"cannot listen: {exc.strerror or exc}") from None


async def _loop(
    args: argparse.Namespace,
    key: Ed25519PrivateKey,
    api_key: str,
    endpoint_url: str,
    call: call_pb2.Call | None,
) -> int:
    from ..scheduler.server import Settings, serve

    settings = Settings(
        database=str(args.db), port=args.scheduler_port, signing_key=key, api_keys=[api_key]
    )
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def ready(addresses: list[tuple[str, int]]) -> None:
        host, number = addresses[0]
        started.set_result(f"http://{host}:{number}")

    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, ready=ready, stop=stop))
    try:
        waited: set[asyncio.Future[object]] = {server, started}  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            server.result()  # raises what stopped it (a port in use)
            return EXIT_OK
        scheduler_url = started.result()
        if call is None:
            print(banner(args.app, endpoint_url, scheduler_url, api_key), flush=True)
            await server
            return EXIT_OK
        call.endpoint = endpoint_url
        return await asyncio.to_thread(_dispatch_and_wait, scheduler_url, api_key, call)
    finally:
        stop.set()
        await server


def _dispatch_and_wait(scheduler_url: str, api_key: str, call: call_pb2.Call) -> int:
    with Client(scheduler_url, api_key) as client:
        try:
            (dispatch_id,) = client.dispatch([call])
            info = client.wait(dispatch_id)
        except ClientError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
    status = show(info)
    outcome = info.status.name if info.status is not None else info.state
    print(f"({outcome} after {info.attempts} attempt(s), dispatch id {info.dispatch_id})")
    return status


def banner(app: str, endpoint_url: str, scheduler_url: str, api_key: str) -> str:
    exports = [
        f"export {API_URL_ENV}={scheduler_url}",
        f"export {API_KEY_ENV}={shlex.quote(api_key)}",
        f"export {ENDPOINT_URL_ENV}={endpoint_url}",
    ]
    return "\n".join(
        [
            f"dispatchlet dev: serving {app} at {endpoint_url}",
            f"                 scheduler at {scheduler_url}",
            "",
            "in another terminal:",
            "",
            *(f"    {line}" for line in exports),
            "    dispatchlet dispatch greet World --wait",
            "",
            "Press Ctrl+C to stop.",
        ]
    )
