"""``dispatchlet dev``: the whole loop on this machine, the scheduler (SQLite) and the
app's endpoint (``serving.thread_server``), both on loopback, wired with a key pair and an
API key that last across restarts, the endpoint reloaded when the app's code changes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..client import CallInfo, Client, ClientError
from ..core.body import BodyReader
from ..core.dispatching import API_KEY_ENV, API_URL_ENV, split_api_keys
from ..core.endpoint import ENDPOINT_URL_ENV, Endpoint
from ..core.errors import DispatchletError
from ..core.http import Request, Response
from ..core.keys import load_private_key, private_key_base64
from ..core.values import EncodeError, to_any
from ..proto.dispatch.sdk.v1 import call_pb2
from ..scheduler.settings import DEFAULT_PORT
from ..serving import logging_setup
from ..serving.app_loading import (
    AppLoadError,
    app_files,
    forget_app,
    load_endpoint,
    user_traceback,
)
from ..serving.thread_server import serving
from .call import parse_input
from .call_views import attempt_line
from .dispatch import show
from .errors import CommandError
from .local_server import load_app
from .scheduler import DEFAULT_DATABASE, check_database_folder, serve_until_stopped
from .schedules import sync_line
from .serve import example_input, port
from .signals import EPILOG, Stop, exit_now, stopping_loop

STATE_FOLDER = ".dispatchlet"
"""Beside the database: the session's API key and signing key, kept across restarts."""
API_KEY_FILE = "api-key"
SIGNING_KEY_FILE = "signing-key"
POLL_INTERVAL = 0.5
"""Seconds between two looks at the app's files."""

_DESCRIPTION = f"""\
Run the scheduler and serve APP, both on this machine, and print the exports another
terminal needs for `dispatchlet dispatch` and `dispatchlet calls`.

The API key is {API_KEY_ENV} when it is set; otherwise one is made on the first start
and kept, with the key pair that signs the scheduler's calls, in a {STATE_FOLDER}/
folder beside the database (files of mode 0600): the exports stay valid, and calls in
flight keep verifying, across restarts. The endpoint is reloaded when APP's files change
(the scheduler and its database keep running); a reload that fails shows the app's error
and keeps serving the last version that loaded.

The schedules APP declares (@endpoint.function(schedule="0 9 * * *")) are synced for
its loopback URL at start and after each reload that loads, as `dispatchlet schedules
sync` does.

Ctrl+C stops it: attempts in flight finish first (up to 10 s), a second Ctrl+C stops it
at once.

With FUNCTION, dispatch one call of it (INPUT as for `dispatchlet call`), wait for it,
print its output and how many attempts it took, and stop: the whole loop in one command.
Each failed attempt is shown as it happens. Exit status 0 when the call ended OK, 1 when
it failed; Ctrl+C (or SIGTERM) stops it at once, prints the call's dispatch id and exits
130 (143): the call did not end.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dev",
        help="the scheduler and an app's endpoint on this machine, wired together",
        description=_DESCRIPTION,
        epilog=EPILOG,
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
        help=f"the database, in a folder that exists (default {DEFAULT_DATABASE}; with "
        "FUNCTION a temporary one)",
    )
    logging_setup.add_arguments(parser, default_level="warning")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging_setup.configure(args)
    if args.db is not None:
        check_database_folder(args.db)
    # Bytecode caches are keyed by a source's size and mtime in whole seconds: an edit
    # within the second that keeps the size would reload stale code.
    sys.dont_write_bytecode = True
    endpoint = load_app(args.app)
    call = None
    if args.function is not None:
        check_function(endpoint, args.app, args.function)
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
        temporary = args.db is None and once
        if args.db is None:
            args.db = Path(scratch, DEFAULT_DATABASE) if once else Path(DEFAULT_DATABASE)
        state = DevState(args.db.parent / STATE_FOLDER)
        key = state.signing_key()
        api_keys = split_api_keys(os.environ.get(API_KEY_ENV, ""))
        if not api_keys:
            api_keys = [state.api_key()]
        app = ReloadingApp(args.app, endpoint, key)
        try:
            with serving(app, port=args.port) as endpoint_url:
                app.served_at(endpoint_url)
                if call is None:
                    return asyncio.run(_serve(args, app, key, api_keys))
                call.endpoint = endpoint_url
                leftover = Path(scratch) if temporary else None
                return asyncio.run(_once(args, key, api_keys[0], call, leftover))
        except BrokenPipeError:
            raise  # its output's reader went away (`| head`): the command line's own exit
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc.strerror or exc}") from None


def check_function(endpoint: Endpoint, app: str, name: str) -> None:
    """Refuse a FUNCTION the app does not register, before anything is dispatched."""
    if name in endpoint.functions:
        return
    names = list(endpoint.functions)
    close = difflib.get_close_matches(name, names, n=3)
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    elif names:
        hint = f"its functions: {', '.join(names)}"
    else:
        hint = "it registers none (decorate them with @endpoint.function)"
    raise CommandError(f"{app} has no function {name!r}: {hint}")


class DevState:
    """The ``.dispatchlet`` folder: secrets that must outlive one ``dev`` process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def api_key(self) -> str:
        import secrets

        return self._kept(API_KEY_FILE, lambda: secrets.token_urlsafe(24))

    def signing_key(self) -> Ed25519PrivateKey:
        path = self.folder / SIGNING_KEY_FILE
        text = self._kept(
            SIGNING_KEY_FILE, lambda: private_key_base64(Ed25519PrivateKey.generate())
        )
        try:
            return load_private_key(text)
        except ValueError as exc:
            raise CommandError(f"{path}: {exc} (delete it to make a new key pair)") from None

    def _kept(self, name: str, make: Callable[[], str]) -> str:
        """The file's text, made by ``make()`` the first time (mode 0600)."""
        path = self.folder / name
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            ignore = self.folder / ".gitignore"
            if not ignore.exists():
                # Secrets: never committed with the project by accident.
                ignore.write_text("# made by dispatchlet dev: keys, never commit them\n*\n")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                text = path.read_text(encoding="ascii", errors="replace").strip()
            else:
                text = make()
                with os.fdopen(fd, "w", encoding="ascii") as file:
                    file.write(text + "\n")
        except OSError as exc:
            raise CommandError(f"cannot keep the session's keys in {self.folder}: {exc}") from None
        if not text:
            raise CommandError(f"{path} is empty (delete it to make a new one)")
        return text


class ReloadingApp:
    """What ``dev`` serves: the app's current Endpoint, loaded again when its files
    change. A reload that fails keeps the last Endpoint that loaded."""

    def __init__(self, app: str, endpoint: Endpoint, key: Ed25519PrivateKey) -> None:
        self.app = app
        self.key = key
        self.endpoint_url = ""
        self.endpoint = endpoint
        self._prepare(endpoint)
        self._files = self._snapshot(app_files(app))
        self.synced: Callable[[], None] | None = None
        """Pushes the app's declared schedules (set once the scheduler listens)."""

    # What the server asks of an Endpoint, asked of the current one.
    @property
    def max_body_size(self) -> int:
        return self.endpoint.max_body_size

    def handle(self, request: Request) -> Response:
        return self.endpoint.handle(request)

    def reject(self, error: DispatchletError) -> Response:
        return self.endpoint.reject(error)

    def body_reader(
        self, content_length: str | int | None, *, ends_without_length: bool, chunked: bool = False
    ) -> BodyReader:
        return self.endpoint.body_reader(
            content_length, ends_without_length=ends_without_length, chunked=chunked
        )

    def served_at(self, url: str) -> None:
        self.endpoint_url = url
        self._prepare(self.endpoint)

    def _prepare(self, endpoint: Endpoint) -> None:
        endpoint.set_verification_key(self.key.public_key())
        if endpoint.endpoint_url is None and self.endpoint_url:
            # The app's own dispatches (greet.dispatch(...)) reach it here.
            endpoint.endpoint_url = self.endpoint_url

    @staticmethod
    def _snapshot(files: Iterable[Path]) -> dict[Path, tuple[int, int] | None]:
        stamps: dict[Path, tuple[int, int] | None] = {}
        for file in files:
            try:
                stat = file.stat()
                stamps[file] = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                stamps[file] = None
        return stamps

    def changed(self) -> bool:
        return self._snapshot(self._files) != self._files

    def reload(self) -> bool:
        """Load the app again; True when it loaded (and is now served)."""
        before = set(self._files)
        forget_app(self.app)
        try:
            endpoint = load_endpoint(self.app)
        except AppLoadError as exc:
            trace = user_traceback(exc) or ""
            message = (
                f"dispatchlet dev: reloading {self.app} failed: {exc}; still serving the "
                "last version that loaded"
            )
            if logging_setup.json_format():
                logging_setup.notice(message, traceback=trace)
            else:
                logging_setup.notice(trace + message)
            # Watch what the failed load touched too: fixing any of it loads again.
            self._files = self._snapshot(before | app_files(self.app))
            return False
        self._prepare(endpoint)
        self.endpoint = endpoint
        self._files = self._snapshot(before | app_files(self.app))
        names = ", ".join(endpoint.functions) or "none"
        print(f"dispatchlet dev: reloaded {self.app} (functions: {names})", flush=True)
        if self.synced is not None:
            self.synced()
        return True

    async def watch(self) -> None:
        """Reload whenever the app's files change, until cancelled."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self.changed():
                # In a thread: the app's code runs as it loads, and the scheduler's
                # attempts and API share this loop.
                await asyncio.to_thread(self.reload)


async def _serve(
    args: argparse.Namespace, app: ReloadingApp, key: Ed25519PrivateKey, api_keys: list[str]
) -> int:
    from ..scheduler.server import Settings

    settings = Settings(
        database=str(args.db), port=args.scheduler_port, signing_key=key, api_keys=api_keys
    )

    one_at_a_time = threading.Lock()

    def sync_in_background(scheduler_url: str) -> None:
        def sync() -> None:
            with one_at_a_time:
                sync_declared(app, scheduler_url, api_keys[0])

        # A daemon thread, not the loop's executor: a sync still retrying when the
        # scheduler stops (Ctrl+C right after the banner) must not hold the exit.
        threading.Thread(target=sync, name="dispatchlet-dev-sync", daemon=True).start()

    def ready(addresses: list[tuple[str, int]]) -> None:
        host, number = addresses[0]
        scheduler_url = f"http://{host}:{number}"
        print(
            banner(args.app, app.endpoint, app.endpoint_url, scheduler_url, api_keys[0]),
            flush=True,
        )
        # The schedules the app declares, pushed now and after each reload that loads.
        app.synced = lambda: sync_in_background(scheduler_url)
        app.synced()

    watcher = asyncio.create_task(app.watch())
    try:
        status = await serve_until_stopped("dev", settings, ready)
    finally:
        watcher.cancel()
    logging_setup.notice("dispatchlet dev: stopped")
    return status


def dev_owner(app: str) -> str:
    """Who owns the schedules `dispatchlet dev` syncs for APP: the app, by its path."""
    return f"dispatchlet dev {Path(app.partition(':')[0]).resolve()}"


def sync_declared(app: ReloadingApp, scheduler_url: str, api_key: str) -> None:
    """Push the schedules ``app`` declares for its loopback URL, saying what changed; a
    refusal (a name taken by a schedule created by hand) is said, and dev goes on."""
    try:
        with Client(scheduler_url, api_key) as client:
            # Owned by the app, not its URL: a restart on another port takes them over.
            synced = client.sync_schedules(
                app.endpoint, endpoint_url=app.endpoint_url, owner=dev_owner(app.app)
            )
    except (ClientError, EncodeError) as exc:
        text = f"{exc.code}: {exc.message}" if isinstance(exc, ClientError) else str(exc)
        logging_setup.notice(f"dispatchlet dev: syncing the schedules failed: {text}")
        return
    if synced.created or synced.updated or synced.deleted:
        print(f"dispatchlet dev: {sync_line(synced, app.endpoint_url)}", flush=True)


async def _once(
    args: argparse.Namespace,
    key: Ed25519PrivateKey,
    api_key: str,
    call: call_pb2.Call,
    temporary: Path | None,
) -> int:
    """Dispatch ``call``, wait for it, print what came of it. A signal stops all at once."""
    from ..scheduler.server import Settings, serve

    settings = Settings(
        database=str(args.db), port=args.scheduler_port, signing_key=key, api_keys=[api_key]
    )
    loop = asyncio.get_running_loop()
    started: asyncio.Future[str] = loop.create_future()
    interrupted: asyncio.Future[int] = loop.create_future()
    dispatch_id: list[str] = []

    def ready(addresses: list[tuple[str, int]]) -> None:
        host, number = addresses[0]
        started.set_result(f"http://{host}:{number}")

    def interrupt(signum: int) -> None:
        if not interrupted.done():
            interrupted.set_result(signum)

    def at_once(stop: Stop) -> NoReturn:
        # Waiting on the scheduler or the function would keep Ctrl+C waiting.
        text = "dispatchlet dev: interrupted"
        if dispatch_id:
            text += f" (dispatch id {dispatch_id[0]})"
            if temporary is None:
                text += (
                    f"; the call stays in {args.db}: `dispatchlet dev "
                    f"{shlex.quote(args.app)} --db {shlex.quote(str(args.db))}` runs it on"
                )
            else:
                text += "; its database was a temporary one (--db keeps calls)"
        logging_setup.notice(text)
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        # The call did not end: a failure whichever signal stopped the wait (128 + it, as
        # a shell reports it), not the normal end SIGTERM is for the servers.
        exit_now(128 + (stop.signum or signal.SIGINT))

    stop = asyncio.Event()
    with stopping_loop(loop, interrupt) as signals:
        server = asyncio.create_task(serve(settings, ready=ready, stop=stop, handle_signals=False))
        try:
            scheduler_url = await _until(started, server, interrupted)
            if scheduler_url is None:
                at_once(signals)
            with Client(scheduler_url, api_key) as client:
                try:
                    dispatching = asyncio.ensure_future(asyncio.to_thread(client.dispatch, [call]))
                    ids = await _until(dispatching, interrupted)
                    if ids is None:
                        # The call may be stored already: its id, if its answer comes
                        # soon, tells the user which call to follow.
                        with contextlib.suppress(Exception):
                            ids = await asyncio.wait_for(asyncio.shield(dispatching), 5)
                            dispatch_id.append(ids[0])
                        at_once(signals)
                    dispatch_id.append(ids[0])
                    # Each failed attempt is shown as it happens, as `dispatch --wait` does.
                    waiting = asyncio.to_thread(client.wait, ids[0], on_attempt=_show_attempt)
                    info = await _until(waiting, interrupted)
                    if info is None:
                        at_once(signals)
                except ClientError as exc:
                    raise CommandError(f"{exc.code}: {exc.message}") from None
        finally:
            stop.set()
            if not interrupted.done():
                await server
    status = show(info)
    outcome = info.status.name if info.status is not None else info.state
    print(f"({outcome} after {info.attempts} attempt(s), dispatch id {info.dispatch_id})")
    return status


def _show_attempt(info: CallInfo) -> None:
    print(attempt_line(info), file=sys.stderr, flush=True)


async def _until(work: Any, *others: asyncio.Future[Any]) -> Any:
    """``work``'s result, or None when one of ``others`` (an interruption) is done first;
    the scheduler's task ending first raises what stopped it."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task, *others}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    for other in others:
        if other in done and isinstance(other, asyncio.Task):
            other.result()  # the scheduler stopped: a port in use raises here
            raise CommandError("the scheduler stopped")
    return None


def hint(endpoint: Endpoint) -> str:
    """A `dispatchlet dispatch` command line for one of the app's own functions."""
    functions = list(endpoint.functions.values())
    if not functions:
        return "(no functions registered yet: decorate them with @endpoint.function)"
    example = example_input(functions[0])
    command = ["dispatchlet", "dispatch", functions[0].name]
    if example is not None:
        command.append(example)
    return shlex.join([*command, "--wait"])


def banner(
    app: str, endpoint: Endpoint, endpoint_url: str, scheduler_url: str, api_key: str
) -> str:
    exports = [
        f"export {API_URL_ENV}={scheduler_url}",
        f"export {API_KEY_ENV}={shlex.quote(api_key)}",
        f"export {ENDPOINT_URL_ENV}={endpoint_url}",
    ]
    return "\n".join(
        [
            f"dispatchlet dev: serving {app} at {endpoint_url} (reloaded when its files change)",
            f"                 scheduler at {scheduler_url}",
            f"                 dashboard at {scheduler_url}/ (log in with the API key below)",
            "",
            "in another terminal:",
            "",
            *(f"    {line}" for line in exports),
            f"    {hint(endpoint)}",
            "",
            "Press Ctrl+C to stop.",
        ]
    )
