"""The scheduler's settings, each default in one place, and where they come from in the
environment (``Settings.from_env``). Importable without the scheduler's own dependencies
(aiohttp): the command line reads them before it starts anything."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..core.dispatching import API_KEY_ENV, DEFAULT_API_URL, split_api_keys
from ..core.errors import ConfigurationError
from ..core.keys import SIGNING_KEY_ENV, load_private_key
from ..core.limits import DEFAULT_MAX_BODY_SIZE
from .retry import RetryPolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = int(DEFAULT_API_URL.rpartition(":")[2])
"""The port of the clients' default URL (``DEFAULT_API_URL``, in core, where the client
finds it), so that the number is written once."""
DEFAULT_ATTEMPT_TIMEOUT = 300.0
"""The longest an attempt may take, in seconds."""
DEFAULT_ATTEMPT_HISTORY = 50
"""How many of each call's latest attempts its history keeps."""
DEFAULT_GRACE_PERIOD = 10.0
"""How long a graceful stop waits for attempts in flight, in seconds."""
DEFAULT_MAX_INPUT_SIZE = DEFAULT_MAX_BODY_SIZE
"""The largest input a call may have, in bytes (its serialized ``Any``): an endpoint's
own default limit on a request's body, which would refuse a larger one anyway."""
DEFAULT_MAX_CHILDREN = 10_000
"""The most unfinished children one call may have: a workflow's bound on its steps
(``DEFAULT_MAX_WORKFLOW_STEPS``), ten full Polls, five times Temporal's 2,000 pending
child workflows."""
DEFAULT_MAX_DESCENDANTS = 100_000
"""The most calls below one root, over its life: ten workflows at their bound on steps;
a tree that forks without end stops there within seconds."""
DEFAULT_MAX_CONNECTIONS = 1000
"""Connections the API keeps open at once, unless the open files limit allows fewer."""
DEFAULT_KEEPALIVE_TIMEOUT = 60.0
"""Seconds a connection may stay open without a whole request head, from its start or
from its last answer: it bounds idle connections and slow heads alike (nginx: 60 s for
a head, 75 s idle)."""
DEFAULT_BODY_TIMEOUT = 60.0
"""Seconds a request's body may take to arrive (nginx's client_body_timeout: 60 s)."""
METRICS_KEY_ENV = "DISPATCHLET_METRICS_KEY"
"""Keys that may read /metrics and nothing else (comma-separated), beside the API keys."""
DEFAULT_MAX_OUTPUT_SIZE = 16 * 1024 * 1024
"""The largest output a call may store, in bytes (its serialized ``CallResult``: the
output, or the error), and the largest state a Poll may leave: as large as an input."""
MAX_OUTPUT_SIZE_ENV = "DISPATCHLET_MAX_OUTPUT_SIZE"
"""Where ``max_output_size`` comes from when ``--max-output-size`` is not given."""
DEFAULT_DATABASE = "dispatchlet.db"
"""The SQLite file used when no database is named."""
DATABASE_URL_ENV = "DISPATCHLET_DATABASE_URL"
"""A PostgreSQL database that several scheduler processes share."""

DEFAULT_RETENTION = 7 * 24 * 3600.0
"""How long a finished call tree is kept after its root finished, in seconds (0: for
ever)."""
RETENTION_ENV = "DISPATCHLET_RETENTION"
"""Where ``retention`` comes from when ``--retention`` is not given (a duration)."""

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")


def parse_duration(text: str) -> float:
    """Seconds from a duration: a number of seconds (``90``, ``2.5``) or a number and a
    unit (``90s``, ``30m``, ``12h``, ``7d``); ``ValueError`` saying what is expected for
    anything else."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise ValueError(
            f"invalid duration {text[:40]!r}: expected seconds, or a number with s, m, h or d "
            "(e.g. 90, 30m, 12h, 7d)"
        )
    return float(found[1]) * _UNITS[found[2]]


def is_database_url(database: str) -> bool:
    return database.startswith(POSTGRES_SCHEMES)


@dataclass(frozen=True)
class Settings:
    database: str
    """A SQLite file's path, or a PostgreSQL URL (``postgresql://...``)."""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    signing_key: Ed25519PrivateKey | None = None
    api_keys: Sequence[str] = ()
    insecure: bool = False
    allowed_hosts: Sequence[str] = ()
    """With ``insecure``, the names (``.example.com``: every name under it) whose
    requests are answered beside IP addresses and localhost (``host_check.py``)."""
    grace_period: float = DEFAULT_GRACE_PERIOD
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    reuse_port: bool = False
    """Share the port with other scheduler processes on this machine (SO_REUSEPORT: the
    kernel spreads connections over them), for several processes behind one address."""
    max_per_destination: int | None = None
    """A hard cap on attempts in flight to one destination; None: adaptive only."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE
    """The largest input of a call, in bytes: a larger one is refused at Dispatch, and a
    Poll or tail call that makes one ends its call (INVALID_RESPONSE)."""
    max_children: int = DEFAULT_MAX_CHILDREN
    """The most unfinished children of one call: a Poll beyond ends its call."""
    max_descendants: int = DEFAULT_MAX_DESCENDANTS
    """The most calls below one root: a Poll beyond ends its call."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Connections the API keeps open at once (lowered to fit the open files limit):
    past it, the one idle for longest (nothing sent since it opened or since its last
    answer) is closed, or else the new one is answered 503."""
    max_connections_per_client: int | None = None
    """Connections one address other than loopback may hold; None: a quarter of
    ``max_connections``. Past it, its oldest idle one is closed, or else the new one
    is answered 503."""
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    metrics_keys: Sequence[str] = ()
    """Keys that may read /metrics, beside the API keys."""
    metrics_public: bool = False
    """/metrics without a key (for a scraper on a private network)."""
    dashboard: bool = True
    """Serve the web dashboard at ``/`` (its pages ask for an API key, unless insecure)."""
    max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE
    """The largest output (or error, or Poll state) of a call, in bytes: an endpoint
    answer with a larger one ends its call (INVALID_RESPONSE), and no more of an answer
    than this (and a little for what surrounds it) is read."""
    retention: float = DEFAULT_RETENTION
    """Seconds a finished call tree is kept after its root finished, then deleted in
    the background (``retention.py``); 0: kept for ever."""
    attempt_history: int = DEFAULT_ATTEMPT_HISTORY
    """How many of each call's latest attempts its history keeps (0: none recorded)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> Settings:
        """Settings from the environment (``os.environ`` unless ``environ``), the fields
        in ``given`` taking precedence (the environment is then not read for them):

        - ``database``: ``DISPATCHLET_DATABASE_URL``, else the file ``dispatchlet.db``;
        - ``signing_key``: ``DISPATCH_SIGNING_KEY`` (PEM or base64), else None;
        - ``api_keys``: ``DISPATCH_API_KEY``, comma-separated;
        - ``metrics_keys``: ``DISPATCHLET_METRICS_KEY``, comma-separated;
        - ``max_output_size``: ``DISPATCHLET_MAX_OUTPUT_SIZE`` (bytes), else 16 MiB;
        - ``retention``: ``DISPATCHLET_RETENTION`` (a duration: ``7d``, ``12h``, ``30m``,
          ``90s``, seconds; 0 keeps for ever), else 7 days.

        A value that cannot be used raises ``ConfigurationError`` naming its variable.
        """
        env = os.environ if environ is None else environ
        found: dict[str, Any] = {}
        if "database" not in given:
            found["database"] = env.get(DATABASE_URL_ENV, "").strip() or DEFAULT_DATABASE
        if "signing_key" not in given:
            text = env.get(SIGNING_KEY_ENV, "")
            if text.strip():
                try:
                    found["signing_key"] = load_private_key(text)
                except ValueError as exc:
                    raise ConfigurationError(
                        f"invalid signing key in {SIGNING_KEY_ENV}: {exc}"
                    ) from None
        if "api_keys" not in given:
            found["api_keys"] = split_api_keys(env.get(API_KEY_ENV, ""))
        if "metrics_keys" not in given:
            found["metrics_keys"] = tuple(split_api_keys(env.get(METRICS_KEY_ENV, "")))
        if "max_output_size" not in given and env.get(MAX_OUTPUT_SIZE_ENV, "").strip():
            found["max_output_size"] = _size(env, MAX_OUTPUT_SIZE_ENV)
        if "retention" not in given and env.get(RETENTION_ENV, "").strip():
            try:
                found["retention"] = parse_duration(env[RETENTION_ENV])
            except ValueError as exc:
                raise ConfigurationError(f"{RETENTION_ENV}: {exc}") from None
        unknown = set(given) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**found, **given)


def _size(env: Mapping[str, str], name: str) -> int:
    """A positive number of bytes from the variable ``name``."""
    text = env[name].strip()
    if not text.isdigit() or int(text) <= 0:
        raise ConfigurationError(f"invalid {name} {text[:40]!r}: expected a number of bytes")
    return int(text)
