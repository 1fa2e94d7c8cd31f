"""``dispatchlet call``: run one function of an endpoint over HTTP, signed, and show
its result."""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import any_pb2, json_format, message

from ..core.connect import JSON, PROTO
from ..core.connect_client import InvalidAnswer, decode_response, encode_request, parse_error
from ..core.endpoint import ENDPOINT_URL_ENV
from ..core.endpoint_url import EndpointURL, parse_endpoint_url
from ..core.http import Request
from ..core.keys import SIGNING_KEY_ENV, load_private_key
from ..core.signatures import sign_request
from ..core.status import Status
from ..core.values import DecodeError, EncodeError, from_any, to_any, type_name
from ..proto.dispatch.sdk.python.v1.pickled_pb2 import Pickled
from ..proto.dispatch.sdk.v1 import function_pb2, status_pb2
from ..serving.thread_server import serving
from . import call_lambda
from .errors import EXIT_ERROR, EXIT_FAILED, EXIT_OK, CommandError
from .local_server import DEFAULT_ENDPOINT_URL, load_app

_NO_KEY = (
    f"no signing key: set {SIGNING_KEY_ENV}, or pass --key or --key-file, to the private "
    "key matching the endpoint's verification key. `dispatchlet serve` prints one for its "
    "session when the app has no key; `dispatchlet keygen` makes a new pair. "
    "--unsigned sends the request without a signature."
)

_DESCRIPTION = f"""\
Call FUNCTION on a running endpoint and print its output as JSON.

INPUT is parsed as JSON when it is valid JSON and taken as a plain string
otherwise: `greet World` and `greet '"World"'` send the same string, `add
'{{"a": 1, "b": 2}}'` an object, `f 42` a number (`--string f 42` the string).
INPUT that starts with {{, [ or " but is not valid JSON is an error. Without INPUT
the function gets no input.

The request is signed with the Ed25519 key in {SIGNING_KEY_ENV}, --key or
--key-file (PEM, or base64 of the 32-byte seed). --lambda HANDLER sends no HTTP
request: it invokes an AWS Lambda handler in this process with a direct-invocation
event, e.g. `dispatchlet call --lambda examples/lambda_app.py:handler greet World`.
Outputs that JSON cannot show are printed as Python values: bytes as b'...', a datetime in ISO 8601.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "call",
        help="call a function of a running endpoint",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("function", metavar="FUNCTION", help="name of the function")
    parser.add_argument("input", metavar="INPUT", nargs="?", help="JSON, or a plain string")
    parser.add_argument(
        "--string", action="store_true", help="send INPUT as a string even if it is valid JSON"
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help=f"base URL of the endpoint (default: ${ENDPOINT_URL_ENV} or {DEFAULT_ENDPOINT_URL})",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--key", metavar="KEY", help="signing key, PEM or base64")
    keys.add_argument("--key-file", metavar="PATH", type=Path, help="file holding the signing key")
    keys.add_argument("--unsigned", action="store_true", help="send the request without signing it")
    keys.add_argument(
        "--app",
        metavar="APP",
        help="serve APP (as `dispatchlet serve` takes it) on a free loopback port with a "
        "one-off key for this call: a check of the whole path with no setup",
    )
    keys.add_argument(
        "--lambda",
        dest="lambda_handler",
        metavar="HANDLER",
        help="invoke the Lambda handler HANDLER (MODULE:ATTR, path/to/file.py[:ATTR] or "
        "Lambda's MODULE.ATTR) in this process with the event the scheduler sends to an "
        "arn:aws:lambda: endpoint: a JSON string holding the base64 of the RunRequest",
    )
    parser.add_argument(
        "--json",
        dest="use_json",
        action="store_true",
        help=f"send and receive {JSON} (protobuf JSON mapping) instead of {PROTO}",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=seconds,
        default=60.0,
        help="how long to wait for the answer (default: %(default)s)",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="print the traceback of a function that failed"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build, sign and send the RunRequest; print its outcome."""
    if args.lambda_handler is not None:
        return call_lambda_handler(args)
    if args.app is None:
        url = args.endpoint or os.environ.get(ENDPOINT_URL_ENV) or DEFAULT_ENDPOINT_URL
        key = None if args.unsigned else signing_key(args.key, args.key_file)
        return call(args, run_target(url), key)
    if args.endpoint:
        raise CommandError("--app serves the app itself: leave out --endpoint")
    endpoint = load_app(args.app)
    key = Ed25519PrivateKey.generate()
    endpoint.set_verification_key(key.public_key())
    with serving(endpoint) as url:
        return call(args, run_target(url), key)


def call_lambda_handler(args: argparse.Namespace) -> int:
    """Invoke the Lambda handler of ``args`` directly, as the scheduler invokes an ARN."""
    for option, given in (("--endpoint", args.endpoint), ("--json", args.use_json)):
        if given:
            raise CommandError(
                f"--lambda invokes the handler in this process with a base64 RunRequest: "
                f"leave out {option}"
            )
    handler = call_lambda.load_handler(args.lambda_handler)
    response = call_lambda.invoke(
        handler, run_request(args), timeout=args.timeout, show_traceback=args.traceback
    )
    return show(response, show_traceback=args.traceback)


def run_request(args: argparse.Namespace) -> function_pb2.RunRequest:
    """The RunRequest of FUNCTION and INPUT."""
    request = function_pb2.RunRequest(function=args.function)
    if args.input is not None:
        value = args.input if args.string else parse_input(args.input)
        try:
            request.input.CopyFrom(to_any(value))
        except EncodeError as exc:
            raise CommandError(f"cannot send INPUT: {exc}") from None
    return request


def call(args: argparse.Namespace, target: EndpointURL, key: Ed25519PrivateKey | None) -> int:
    """Send the RunRequest of ``args`` to ``target``, signed with ``key``."""
    request = run_request(args)
    codec = JSON if args.use_json else PROTO
    http_request = Request(
        method="POST",
        path=target.run_path,
        authority=target.authority,
        headers=[("Content-Type", codec)],
        body=encode_request(request, codec),
        scheme=target.scheme,
    )
    if key is not None:
        http_request = sign_request(http_request, key)
    status, content_type, answer = post(target.run_url, http_request, args.timeout)
    if status != 200:
        print(f"HTTP {status} {parse_error(status, content_type, answer)}", file=sys.stderr)
        return EXIT_ERROR
    try:
        response = decode_response(content_type, answer)
    except InvalidAnswer as exc:
        raise CommandError(str(exc)) from None
    return show(response, show_traceback=args.traceback)


def run_target(url: str) -> EndpointURL:
    """The Run RPC of the endpoint whose base URL is ``url`` (which may have a path)."""
    try:
        return parse_endpoint_url(url)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def signing_key(key: str | None, key_file: Path | None) -> Ed25519PrivateKey:
    """The key given by ``--key``, ``--key-file`` or the environment."""
    if key is not None:
        text, source = key, "--key"
    elif key_file is not None:
        try:
            text = key_file.read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise CommandError(f"cannot read the signing key: {exc}") from None
        source = str(key_file)
    else:
        text, source = os.environ.get(SIGNING_KEY_ENV, ""), SIGNING_KEY_ENV
        if not text.strip():
            raise CommandError(_NO_KEY)
    try:
        return load_private_key(text)
    except ValueError as exc:
        raise CommandError(f"invalid signing key in {source}: {exc}") from None


def parse_input(text: str) -> object:
    """``text`` as JSON when it is valid JSON, otherwise the string itself.

    Text that starts like a JSON object, array or string but does not parse is an error:
    it was meant as JSON, and sending it as a string would hide the typo.
    """
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("{", "[", '"'):
            raise CommandError(
                f"INPUT looks like JSON but does not parse: {exc} "
                "(--string sends it as a plain string)"
            ) from None
        return text


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A signature covers the authority and path: following a redirect would not help.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def post(url: str, request: Request, timeout: float) -> tuple[int, str, bytes]:
    """Send ``request`` to ``url``: status, Content-Type and body of the answer."""
    opener = urllib.request.build_opener(_NoRedirects)
    outgoing = urllib.request.Request(  # noqa: S310 - the scheme is checked in run_target
        url,
        data=request.body,
        headers={"User-Agent": "dispatchlet-cli", **dict(request.headers)},
        method="POST",
    )
    try:
        with opener.open(outgoing, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) else exc.reason
        raise CommandError(
            f"cannot connect to {url}: {reason or exc.reason} (is the endpoint running? "
            "`dispatchlet serve APP` starts one)"
        ) from None
    except TimeoutError:
        raise CommandError(f"no answer from {url} within {timeout:g} s (see --timeout)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise CommandError(f"connection to {url} failed: {exc!r}") from None


def show(response: function_pb2.RunResponse, *, show_traceback: bool = False) -> int:
    """Print the outcome of a run; the exit status it means."""
    if response.WhichOneof("directive") == "poll":
        calls = len(response.poll.calls)
        print(
            f"the function suspended, waiting for {calls} call(s): "
            "only a Dispatch scheduler can resume it",
            file=sys.stderr,
        )
        return EXIT_FAILED
    result = response.exit.result
    if response.status != status_pb2.STATUS_OK:
        error = result.error
        kind = f"{error.type}: " if error.type else ""
        print(f"{_status_name(response.status)}: {kind}{error.message}", file=sys.stderr)
        if error.traceback:
            if show_traceback:
                print(error.traceback.decode("utf-8", "replace").rstrip(), file=sys.stderr)
            else:
                print("(--traceback shows where it was raised)", file=sys.stderr)
        return EXIT_FAILED
    if response.exit.HasField("tail_call"):
        call = response.exit.tail_call
        tail: dict[str, object] = {"function": call.function}
        if call.endpoint:
            tail["endpoint"] = call.endpoint
        tail["input"] = decode_any(call.input) if call.HasField("input") else None
        print(render({"tail_call": tail}))
        print(
            f"(the function handed over to {call.function}: a scheduler would call it next)",
            file=sys.stderr,
        )
        return EXIT_OK
    print(render_any(result.output) if result.HasField("output") else "null")
    return EXIT_OK


def decode_any(value: any_pb2.Any) -> object:
    """The value an Any holds; a pickle is described, never unpickled."""
    try:
        if value.type_url and type_name(value) == Pickled.DESCRIPTOR.full_name:
            return f"<a pickled Python value of {len(value.value)} bytes, not unpickled>"
        return from_any(value)
    except DecodeError as exc:
        raise CommandError(f"cannot decode the value: {exc}") from None


def render_any(value: any_pb2.Any) -> str:
    """A value as text: JSON when JSON can show it."""
    return render(decode_any(value))


def render(value: object) -> str:
    """JSON when ``value`` is JSON-like, otherwise a Python literal (a datetime in ISO 8601)."""
    if isinstance(value, any_pb2.Any):
        return f"<{value.type_url}: {len(value.value)} bytes>"
    if isinstance(value, message.Message):
        text = json_format.MessageToJson(value, indent=2)
        return f"{value.DESCRIPTOR.full_name} {text}"
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"status {status}"


def seconds(text: str) -> float:
    number = float(text)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return number
