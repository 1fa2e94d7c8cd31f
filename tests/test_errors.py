"""One error family: every exception dispatchlet raises derives from
``dispatchlet.DispatchletError``, so users catch one thing, while each keeps the status
and the built-in base (``except ValueError``) it had."""

from __future__ import annotations

import importlib
import pkgutil

import dispatchlet
import pytest
from dispatchlet import AllFailed, CallFailed, ConfigurationError, DispatchletError, Status
from dispatchlet.client import ClientError
from dispatchlet.core.errors import (
    InvalidArgument,
    PermanentError,
    error_class,
    refuses,
    status_for,
    status_for_type,
    type_name,
)


def public_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class a module of dispatchlet defines under a public name."""
    found: dict[str, type[BaseException]] = {}
    # Each part is a folder of its own (pyproject's package-dir): walked one by one.
    names = ["dispatchlet"]
    for part in ("adapters", "cli", "client", "core", "scheduler", "serving"):
        package = importlib.import_module(f"dispatchlet.{part}")
        names.append(package.__name__)
    for package_name in list(names):
        package = importlib.import_module(package_name)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{package_name}.")]
    for name in sorted(set(names)):
        if name.startswith("dispatchlet.proto") or name.endswith("__main__"):
            continue  # generated code; the command line's entry point runs on import
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                not attr.startswith("_")
                and isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return found


def test_every_public_exception_is_a_dispatchlet_error() -> None:
    exceptions = public_exceptions()
    # The walk sees the scheduler, the client and the command line, not only the core.
    for name in (
        "dispatchlet.scheduler.store.StoreError",
        "dispatchlet.client.ClientError",
        "dispatchlet.cli.errors.CommandError",
        "dispatchlet.core.errors.CallFailed",
    ):
        assert name in exceptions
    outside = {name for name, cls in exceptions.items() if not issubclass(cls, DispatchletError)}
    assert outside == set()


def test_the_root_is_exported_where_users_import_from() -> None:
    assert "DispatchletError" in dispatchlet.__all__
    assert dispatchlet.DispatchletError is DispatchletError


class Refused(ClientError, ConnectionError):
    """A user's error that is both a client error and a lost connection."""


class Late(PermanentError, TimeoutError):
    """A user's permanent error that is also a timeout."""


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigurationError("bad setting"), Status.INVALID_ARGUMENT),  # a ValueError
        (ClientError("unavailable", "no scheduler"), Status.PERMANENT_ERROR),
        (AllFailed([]), Status.PERMANENT_ERROR),
        (CallFailed("f", "ValueError", "no", Status.INVALID_ARGUMENT), Status.INVALID_ARGUMENT),
        (CallFailed("f", "TimeoutError", "late", Status.TIMEOUT), Status.PERMANENT_ERROR),
        (DispatchletError("plain"), Status.PERMANENT_ERROR),
        # The root fixes no status: the built-in base after it still tells one.
        (Refused("unavailable", "reset"), Status.TCP_ERROR),
        # PermanentError fixes its own, before any built-in base.
        (Late("late"), Status.PERMANENT_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_joining_the_family_keeps_the_status_an_error_reports(
    error: BaseException, status: Status
) -> None:
    assert status_for(error) == status


def test_errors_that_were_built_in_errors_still_are() -> None:
    with pytest.raises(ValueError, match="bad setting"):
        raise ConfigurationError("bad setting")


def test_a_failed_call_is_told_by_its_type_name_the_status_its_error_reported() -> None:
    # A function that raised a ConfigurationError ended INVALID_ARGUMENT (a ValueError);
    # a workflow awaiting it reads the same from the error's type name, and can catch it
    # as the ValueError it was.
    name = type_name(ConfigurationError)
    assert status_for_type(name) == status_for(ConfigurationError("x"))
    assert error_class(name) is ConfigurationError
    for cls in (AllFailed, CallFailed):
        assert status_for_type(type_name(cls)) == Status.PERMANENT_ERROR


def test_store_and_command_errors_report_permanent_errors() -> None:
    from dispatchlet.cli.errors import CommandError
    from dispatchlet.scheduler.store import StoreError

    assert status_for(StoreError("closed")) == Status.PERMANENT_ERROR
    assert status_for(CommandError("usage")) == Status.PERMANENT_ERROR
    assert CommandError("usage", 3).exit_code == 3


def test_a_child_that_ended_with_a_relayed_failure_is_read_as_a_plain_call_failure() -> None:
    # CallFailed and AllFailed describe other calls' failures: a workflow awaiting a child
    # that ended with one gets a plain CallFailed, not one rebuilt from their names.
    for cls in (CallFailed, AllFailed):
        assert error_class(type_name(cls)) is None


class BrokenInside(DispatchletError):
    """An error of the family that sets no HTTP status: a failure, not a refusal."""


def test_a_family_error_that_is_no_refusal_is_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dispatchlet import Endpoint
    from dispatchlet.core.connect import RUN_PATH
    from dispatchlet.core.http import Request

    endpoint = Endpoint(insecure=True)

    def broken(request: Request) -> None:
        raise BrokenInside("a secret detail")

    endpoint._handle = broken  # type: ignore[method-assign, assignment]
    with caplog.at_level("ERROR", logger="dispatchlet"):
        answer = endpoint.handle(Request("POST", RUN_PATH, "example.com", [], b""))
    assert answer.status == 500
    assert b"a secret detail" not in answer.body
    assert b"internal error" in answer.body
    assert any(r.exc_info and r.exc_info[0] is BrokenInside for r in caplog.records)
    # A refusal keeps its own answer.
    assert refuses(InvalidArgument("bad"))
    assert not refuses(BrokenInside("x"))
    assert not refuses(ValueError("x"))
