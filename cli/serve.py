"""``dispatchlet serve``: an app's Endpoint on a local HTTP server (``ThreadServer``: a
thread per connection, which has the Endpoint handle the requests it reads)."""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import typing
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from ..core.context import RunContext
from ..core.endpoint import Endpoint
from ..core.functions import Function
from ..core.keys import SIGNING_KEY_ENV, private_key_base64, public_key_base64
from ..serving import logging_setup
from ..serving.thread_server import WILDCARDS, ThreadServer, local_url
from .errors import CommandError
from .local_server import DEFAULT_ENDPOINT_URL, load_app
from .signals import EPILOG, interrupting_main_thread

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
        epilog=EPILOG,
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
    logging_setup.add_arguments(parser, default_level="info")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the app, listen, serve until SIGINT or SIGTERM."""
    logging_setup.configure(args)
    endpoint = load_app(args.app)
    session_key = None
    if endpoint.verifier is None and not endpoint.insecure:
        session_key = Ed25519PrivateKey.generate()
        endpoint.set_verification_key(session_key.public_key())

    try:
        server = ThreadServer(endpoint, args.host, args.port, threads=args.threads)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {reason}") from None

    with interrupting_main_thread() as stop:
        try:
            print(banner(args.app, endpoint, server.addresses, session_key), flush=True)
            # Returns on KeyboardInterrupt (SIGINT or SIGTERM, see interrupting_main_thread).
            server.serve()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
    logging_setup.notice("dispatchlet serve: stopped")
    return stop.exit_status


def banner(
    app: str,
    endpoint: Endpoint,
    addresses: list[tuple[str, int]],
    session_key: Ed25519PrivateKey | None,
) -> str:
    """What ``serve`` prints once it listens: where, which functions, how to call one."""
    here = local_url(*addresses[0])
    url = endpoint.endpoint_url or here
    head = [f"dispatchlet: serving {app} at {here}"]
    head += [f"             and at {local_url(host, port)}" for host, port in addresses[1:]]
    if addresses[0][0] in WILDCARDS:
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
        example = example_input(functions[0])
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


def example_input(function: Function[..., Any]) -> str | None:
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
