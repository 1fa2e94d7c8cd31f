"""``dispatchlet serve``: an app's Endpoint on a local HTTP server (waitress)."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import shlex
import signal
import sys
import threading
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from ..adapters.wsgi import wsgi_app
from ..core.context import RunContext
from ..core.endpoint import Endpoint
from ..core.functions import Function
from ..core.keys import private_key_base64, public_key_base64
from .app_loader import AppLoadError, load_endpoint, user_traceback
from .call import DEFAULT_ENDPOINT_URL
from .errors import EXIT_OK, CommandError
from .keygen import SIGNING_KEY_ENV

_DESCRIPTION = """\
Serve the Endpoint of APP over HTTP on this machine.

APP is module, module:attr, path/to/file.py or path/to/file.py:attr; without
:attr the module must hold exactly one Endpoint among its globals.

Signatures are checked with the endpoint's verification key (DISPATCH_VERIFICATION_KEY).
When it has none, a key pair is made for this session and its signing key printed,
ready for `dispatchlet call` in another terminal.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve an app's Endpoint on a local HTTP server",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP", help="module[:attr] or path/to/file.py[:attr]")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=port,
        default=8000,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=4,
        help="requests handled at once (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the app, start waitress, serve until SIGINT or SIGTERM."""
    configure_logging()
    endpoint = load_app(args.app)
    session_key = None
    if endpoint.verifier is None and not endpoint.insecure:
        session_key = Ed25519PrivateKey.generate()
        endpoint.set_verification_key(session_key.public_key())

    from waitress import create_server  # here: only `serve` needs it

    try:
        server = create_server(
            wsgi_app(endpoint),
            host=args.host,
            port=args.port,
            threads=args.threads,
            **waitress_options(endpoint),
        )
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {reason}") from None

    addresses = _listening(server)
    print(banner(args.app, endpoint, addresses, session_key), flush=True)
    with _sigterm_stops():
        try:
            # Returns on KeyboardInterrupt or SystemExit, once its threads have stopped.
            server.run()
        finally:
            server.close()
    print("dispatchlet serve: stopped", file=sys.stderr)
    return EXIT_OK


CHANNEL_TIMEOUT = 10
"""Seconds a connection may send nothing, with no request running, before waitress
closes it: a client that stalls mid-request frees its connection in seconds."""
CLEANUP_INTERVAL = 2
"""How often waitress looks for such connections (its default, 30 s, would keep one open
for up to 40 s)."""


def load_app(app: str) -> Endpoint:
    """The Endpoint APP names; a failure shows the app's own traceback, then one line."""
    try:
        return load_endpoint(app)
    except AppLoadError as exc:
        trace = user_traceback(exc)
        if trace:
            print(trace, end="", file=sys.stderr)
        raise CommandError(str(exc)) from None


def waitress_options(endpoint: Endpoint) -> dict[str, int]:
    """The waitress settings that bound what a client can hold, matched to ``endpoint``.

    Waitress reads a whole body before the app sees it, spooling large ones to disk:
    ``max_request_body_size`` stops it near the endpoint's own limit, with a margin for
    chunked framing (which waitress counts) so that a body just over the limit still gets
    the endpoint's 400. Headers and bodies are read by waitress's event loop, not by a
    worker thread, so a slow client holds a connection (up to ``connection_limit``), never
    a thread; ``channel_timeout`` releases one that stops sending.
    """
    return {
        "max_request_body_size": endpoint.max_body_size + 64 * 1024,
        "channel_timeout": CHANNEL_TIMEOUT,
        "cleanup_interval": CLEANUP_INTERVAL,
    }


@contextmanager
def serving(endpoint: Endpoint) -> Iterator[str]:
    """Serve ``endpoint`` on a free loopback port in a background thread; yield its URL."""
    from waitress import create_server

    server = create_server(
        wsgi_app(endpoint),
        host="127.0.0.1",
        port=0,
        threads=2,
        asyncore_loop_timeout=0.05,
        **waitress_options(endpoint),
    )
    host, port_number = _listening(server)[0]
    thread = threading.Thread(target=server.run, name="dispatchlet-server", daemon=True)
    thread.start()
    try:
        yield _url(host, port_number)
    finally:
        # Functions still running (the call timed out) are not waited for: their
        # connections are cancelled, so what they answer later is dropped quietly, and
        # their threads, daemons, end when they return or when the process exits.
        for channel in list(server.active_channels.values()):
            channel.cancel()
        server.close()
        server.task_dispatcher.set_thread_count(0)
        thread.join(timeout=5)


def configure_logging() -> None:
    """Warnings of every library, and dispatchlet's own messages (rejected requests), on
    stderr."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("dispatchlet").setLevel(logging.INFO)


def banner(
    app: str,
    endpoint: Endpoint,
    addresses: list[tuple[str, int]],
    session_key: Ed25519PrivateKey | None,
) -> str:
    """What ``serve`` prints once it listens: where, which functions, how to call one."""
    local_url = _url(*addresses[0])
    url = endpoint.endpoint_url or local_url
    head = [f"dispatchlet: serving {app} at {local_url}"]
    head += [f"             and at {_url(host, port)}" for host, port in addresses[1:]]
    if addresses[0][0] in _WILDCARDS:
        head.append(f"(listening on all interfaces, port {addresses[0][1]})")
    if endpoint.endpoint_url:
        head.append(
            f"public URL: {endpoint.endpoint_url} (DISPATCH_ENDPOINT_URL); "
            "signatures must be made for it"
        )
    functions = list(endpoint.functions.values())
    if functions:
        listing = ["functions:", *(f"  {_describe(function)}" for function in functions)]
    else:
        listing = ["functions: none registered (decorate them with @endpoint.function)"]

    call = ["dispatchlet", "call"]
    if url != DEFAULT_ENDPOINT_URL:
        call += ["--endpoint", url]
    after = ""
    if endpoint.insecure:
        keys = ["signatures: NOT checked (insecure=True): call with --unsigned"]
        call.append("--unsigned")
    elif session_key is not None:
        keys = [
            "signatures: checked with a key pair made for this session; its signing key:",
            "",
            f"    export {SIGNING_KEY_ENV}={private_key_base64(session_key)}",
        ]
        after = ", after the export above"
    else:
        verifier = endpoint.verifier
        public = ", ".join(public_key_base64(k) for k in verifier.keys) if verifier else ""
        keys = [
            f"signatures: checked with the verification key {public}",
            f"  (sign with its private key: {SIGNING_KEY_ENV}, --key or --key-file)",
        ]

    sections = [head, listing, keys]
    if functions:
        example = _example_input(functions[0])
        command = [*call, functions[0].name, *([] if example is None else [example])]
        sections.append(
            [
                f"call one from another terminal{after}:",
                "",
                f"    {shlex.join(command)}",
                "",
                "(INPUT is JSON when it parses as JSON, else a string: "
                "see dispatchlet call --help)",
            ]
        )
    sections.append(["Press Ctrl+C to stop."])
    return "\n\n".join("\n".join(section) for section in sections)


def _describe(function: Function[..., Any]) -> str:
    """``name(params) -> result`` with annotations as short as they were written."""
    signature = function.signature
    params = [p.replace(annotation=_shown(p.annotation)) for p in signature.parameters.values()]
    shown = signature.replace(
        parameters=params, return_annotation=_shown(signature.return_annotation)
    )
    prefix = "async " if function.is_async else ""
    return f"{prefix}{function.name}{shown}"


class _Annotation:
    """Shown by ``inspect.Signature`` exactly as ``text``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(annotation: object) -> object:
    if annotation is inspect.Parameter.empty:
        return annotation
    if isinstance(annotation, str):  # postponed evaluation: the text as written
        return _Annotation(annotation)
    if isinstance(annotation, type):
        return _Annotation(annotation.__qualname__)
    return _Annotation(repr(annotation).replace("typing.", ""))


_SAMPLES: dict[object, object] = {str: "World", float: 1.5, bool: True}


def _example_input(function: Function[..., Any]) -> str | None:
    """A plausible INPUT for ``function`` from its annotations, or None for no input."""
    try:
        hints = typing.get_type_hints(function.fn)
    except Exception:
        hints = {}
    inputs = [
        p
        for p in function.signature.parameters.values()
        if hints.get(p.name) is not RunContext and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(inputs) == 1:
        # A single parameter receives the input value itself.
        sample = _sample(hints.get(inputs[0].name), 1)
        return sample if isinstance(sample, str) else json.dumps(sample)
    required = [p.name for p in inputs if p.default is p.empty]
    if not required:
        return None
    values = {name: _sample(hints.get(name), n) for n, name in enumerate(required, 1)}
    return json.dumps(values)


def _sample(annotation: object, number: int) -> object:
    return number if annotation is int else _SAMPLES.get(annotation)


_WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - recognised, not bound to


def _url(host: str, port: int) -> str:
    if host in _WILDCARDS:  # listening everywhere: call it on this machine
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _listening(server: Any) -> list[tuple[str, int]]:
    # One socket gives a server with effective_host/port; several give effective_listen.
    listen = getattr(server, "effective_listen", None)
    if listen:
        return [(str(host), int(port)) for host, port in listen]
    return [(str(server.effective_host), int(server.effective_port))]


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Within the block, SIGTERM stops the server as Ctrl+C (SIGINT) does."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535")
    return port


def positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not a positive integer")
    return number
