"""Builders shared by the tests: run requests, HTTP requests, a deterministic key."""

from __future__ import annotations

import http.server
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet import Request, Response
from dispatchlet.core import values
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.signatures import REQUIRED_COMPONENTS, sign_request
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms
from http_message_signatures.structures import CaseInsensitiveDict

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_KEY = KEY.public_key()
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

_UNSET = object()


class EndpointServer(http.server.ThreadingHTTPServer):
    """An endpoint served on threads with a listen backlog as real servers have (gunicorn's
    2048, waitress's 1024). http.server's backlog of 5 overflows when the scheduler opens
    dozens of connections at once, and Linux leaves a connection whose handshake it
    dropped half open, its request unread, for up to two minutes."""

    request_queue_size = 1024
    daemon_threads = True


def run_request(function: str, value: Any = _UNSET, **fields: Any) -> function_pb2.RunRequest:
    request = function_pb2.RunRequest(function=function, **fields)
    if value is not _UNSET:
        request.input.CopyFrom(values.to_any(value))
    return request


def http_request(
    body: function_pb2.RunRequest | bytes,
    *,
    method: str = "POST",
    path: str = RUN_PATH,
    authority: str = "example.com",
    content_type: str | None = PROTO,
    headers: Sequence[tuple[str, str]] = (),
) -> Request:
    payload = body if isinstance(body, bytes) else body.SerializeToString()
    fields = list(headers)
    if content_type is not None:
        fields.insert(0, ("Content-Type", content_type))
    return Request(method=method, path=path, authority=authority, headers=fields, body=payload)


def signed(request: Request, key: Ed25519PrivateKey = KEY, **options: Any) -> Request:
    return sign_request(request, key, **options)


def call(endpoint: Any, function: str, value: Any = _UNSET, **fields: Any) -> Response:
    """A signed proto Run request for ``function`` answered by ``endpoint``."""
    return endpoint.handle(signed(http_request(run_request(function, value, **fields))))


def run_response(response: Response) -> function_pb2.RunResponse:
    assert response.status == 200, (response.status, response.body)
    assert response.header("content-type") == PROTO
    return function_pb2.RunResponse.FromString(response.body)


def output(response: Response) -> Any:
    """The decoded output of a successful run."""
    result = run_response(response)
    assert result.status == 1, result
    return values.from_any(result.exit.result.output)


def connect_error(response: Response) -> tuple[int, str, str]:
    """Status, Connect code and message of an HTTP error response."""
    assert response.header("content-type") == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"code", "message"}, body
    return response.status, body["code"], body["message"]


@dataclass
class IndependentMessage:
    """The request interface http-message-signatures works on."""

    method: str
    url: str
    headers: Any = field(default_factory=CaseInsensitiveDict)


INDEPENDENT_SIGNER = HTTPMessageSigner(
    signature_algorithm=algorithms.ED25519,
    key_resolver=MappingKeyResolver(public_keys={}, private_keys={"default": KEY}),
)


def independently_signed(
    body: bytes,
    *,
    path: str = RUN_PATH,
    authority: str = "example.com",
    scheme: str = "https",
    headers: Sequence[tuple[str, str]] = (),
    **options: Any,
) -> Request:
    """A POST of ``body`` signed by http-message-signatures in the Dispatch profile (label
    dispatch, key id default, the required components), not by dispatchlet. ``options``
    go to its ``sign()``; it adds a Content-Digest unless one is in ``headers``."""
    message = IndependentMessage("POST", f"{scheme}://{authority}{path}")
    message.headers["Content-Type"] = PROTO
    for name, value in headers:
        message.headers[name] = value
    options.setdefault("label", "dispatch")
    INDEPENDENT_SIGNER.sign(
        message,
        key_id="default",
        covered_component_ids=REQUIRED_COMPONENTS,
        body=body,
        **options,
    )
    return Request("POST", path, authority, list(message.headers.items()), body)


def load_script(name: str, path: Path) -> ModuleType:
    """A script (a deploy tool) imported as a module under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- starting commands as a shell's background job or a container's PID 1 ------------

_IGNORE_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def ignoring_sigint(command: Sequence[str]) -> list[str]:
    """``command`` started with SIGINT ignored, as a non-interactive shell starts a
    background job (``command &``): the disposition survives exec."""
    return [sys.executable, "-c", _IGNORE_SIGINT, *command]


_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def at_a_terminal(command: Sequence[str]) -> list[str]:
    """``command`` started as a terminal's foreground job is, Ctrl+C reaching it:
    SIGINT at its default, whatever the test run's own (run as a background job, it
    ignores SIGINT, and so would the commands it starts)."""
    return [sys.executable, "-c", _DEFAULT_SIGINT, *command]


def as_pid_one(command: Sequence[str]) -> list[str]:
    """``command`` run as PID 1 of a new PID namespace, as in a container (needs root or
    user namespaces; fails, never skips, where unshare is not permitted). The process
    started is unshare's, which exits with the command's status; signal the command
    itself with ``namespace_init``."""
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command]


def namespace_init(unshare_pid: int) -> int:
    """The host PID of the process that ``unshare --fork`` (pid ``unshare_pid``) started:
    PID 1 of its namespace."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
    if children.exists():
        pids = children.read_text().split()
    else:  # a kernel without CONFIG_PROC_CHILDREN: look for its parent in every stat
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == unshare_pid:
                pids.append(stat.parent.name)
    assert len(pids) == 1, f"unshare {unshare_pid} has children {pids}"
    return int(pids[0])
