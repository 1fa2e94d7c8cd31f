"""The scheduler's settings: each default in one place, read from the environment by
``Settings.from_env``; and the shared names still importable where they were first."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet.core.dispatching import DEFAULT_API_URL
from dispatchlet.core.errors import ConfigurationError
from dispatchlet.core.keys import private_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from dispatchlet.scheduler import settings
from dispatchlet.scheduler.settings import Settings


def test_the_scheduler_listens_where_clients_look_by_default() -> None:
    default_url = f"http://{settings.DEFAULT_HOST}:{settings.DEFAULT_PORT}"
    assert default_url == DEFAULT_API_URL
    defaults = Settings(database="x")
    assert (defaults.host, defaults.port) == (settings.DEFAULT_HOST, settings.DEFAULT_PORT)


def test_the_command_line_offers_the_settings_defaults() -> None:
    import argparse

    from dispatchlet.cli import scheduler as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["scheduler"])
    assert args.attempt_timeout == Settings(database="x").attempt_timeout
    assert args.port == Settings(database="x").port
    assert args.max_input_size == Settings(database="x").max_input_size


def test_from_env_reads_the_database_the_signing_key_and_the_api_keys() -> None:
    key = Ed25519PrivateKey.generate()
    environ = {
        "DISPATCHLET_DATABASE_URL": "postgresql://h/db",
        "DISPATCH_SIGNING_KEY": private_key_base64(key),
        "DISPATCH_API_KEY": "new, old",
    }
    found = Settings.from_env(environ)
    assert found.database == "postgresql://h/db"
    assert found.signing_key is not None
    assert found.signing_key.public_key() == key.public_key()
    assert list(found.api_keys) == ["new", "old"]
    assert found.attempt_timeout == settings.DEFAULT_ATTEMPT_TIMEOUT


def test_from_env_without_variables_is_the_defaults() -> None:
    assert Settings.from_env({}) == Settings(database=settings.DEFAULT_DATABASE, api_keys=[])


def test_given_settings_win_and_their_variables_are_not_read() -> None:
    environ = {"DISPATCH_SIGNING_KEY": "not a key", "DISPATCHLET_DATABASE_URL": "postgresql://h/db"}
    found = Settings.from_env(environ, signing_key=None, database="calls.db", port=0)
    assert (found.signing_key, found.database, found.port) == (None, "calls.db", 0)


def test_an_unusable_signing_key_names_its_variable() -> None:
    with pytest.raises(ConfigurationError, match="invalid signing key in DISPATCH_SIGNING_KEY"):
        Settings.from_env({"DISPATCH_SIGNING_KEY": "not a key"})


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown settings: colour"):
        Settings.from_env({}, colour="blue")


def test_names_that_moved_are_importable_where_they_were() -> None:
    from dispatchlet.scheduler import calls, concurrency, engine, http_caller, outcome, server

    assert server.Settings is Settings
    assert server.POSTGRES_SCHEMES is settings.POSTGRES_SCHEMES
    assert http_caller.Outcome is outcome.Outcome
    assert http_caller.MAX_ANSWER_BYTES == outcome.MAX_ANSWER_BYTES
    assert concurrency.destination is calls.destination
    # The engine's names (its own until it imports them from calls) judge alike.
    bad = call_pb2.Call(function="1x", endpoint="ftp://h")
    assert engine.call_problem(bad) == calls.call_problem(bad) is not None
    assert engine.timestamp(1.25) == calls.timestamp(1.25)
