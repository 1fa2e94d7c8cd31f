"""The Python surface of call options: ``Function.options(...)`` per call and
``@endpoint.function(...)`` defaults, checked where they are given and carried on the
Calls that Python dispatches and workflows make."""

from __future__ import annotations

import datetime
import math
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from dispatchlet import Backoff, Endpoint, Status
from dispatchlet.core.call_options import call_options
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from dispatchlet.testing import run_workflow

UTC = datetime.timezone.utc


class Recorder:
    """A dispatcher that keeps the calls it is given."""

    def __init__(self) -> None:
        self.calls: list[call_pb2.Call] = []

    def dispatch(self, calls: Sequence[call_pb2.Call]) -> list[str]:
        self.calls.extend(calls)
        return [f"id-{len(self.calls) - len(calls) + n}" for n in range(len(calls))]


@pytest.fixture
def endpoint() -> Endpoint:
    endpoint = Endpoint(insecure=True, endpoint_url="https://functions.example.com")
    endpoint.client = Recorder()
    return endpoint


def sent(endpoint: Endpoint) -> list[call_pb2.Call]:
    recorder = endpoint.client
    assert isinstance(recorder, Recorder)
    return recorder.calls


def test_every_option_travels_in_the_calls_options(endpoint: Endpoint) -> None:
    @endpoint.function
    def charge(order: str) -> str:
        return order

    paris = datetime.timezone(datetime.timedelta(hours=2))
    at = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=paris)
    charge.options(
        key="o-17",
        delay=datetime.timedelta(minutes=10),
        at=at,
        max_attempts=3,
        timeout=2.5,
        backoff=Backoff(1, maximum=datetime.timedelta(minutes=1), multiplier=3),
        expiration=600,
        concurrency_key="customer-3",
    ).dispatch("o-17")
    (call,) = sent(endpoint)
    options = call_options(call)
    assert options.key == "o-17"
    assert options.delay.ToSeconds() == 600
    assert options.start_at.ToDatetime(tzinfo=UTC) == at
    assert options.max_attempts == 3
    assert options.attempt_timeout.ToMilliseconds() == 2500
    assert (options.backoff.initial.ToSeconds(), options.backoff.maximum.ToSeconds()) == (1, 60)
    assert options.backoff.multiplier == 3
    assert options.concurrency_key == "customer-3"
    assert call.expiration.ToSeconds() == 600
    # Seconds or a timedelta for a backoff's initial wait, doubled by default.
    built = charge.options(backoff=datetime.timedelta(seconds=4)).build_call("o-1")
    assert call_options(built).backoff.initial.ToSeconds() == 4
    assert call_options(built).backoff.multiplier == 2


def test_a_call_without_options_carries_none(endpoint: Endpoint) -> None:
    @endpoint.function
    def plain(n: int) -> int:
        return n

    plain.dispatch(1)
    plain.options().dispatch(2)
    for call in sent(endpoint):
        assert (
            call.SerializeToString()
            == call_pb2.Call(
                function="plain", endpoint=call.endpoint, input=call.input
            ).SerializeToString()
        )


def test_decorator_defaults_apply_to_dispatch_and_options_override_them(
    endpoint: Endpoint,
) -> None:
    @endpoint.function(
        max_attempts=5,
        timeout=30,
        backoff=2,
        expiration=datetime.timedelta(hours=1),
        concurrency=10,
        concurrency_per_key=2,
        rate_limit=(100, datetime.timedelta(minutes=1)),
        schedule="0 9 * * *",
    )
    def charge(order: str) -> str:
        return order

    assert charge.schedule == "0 9 * * *"
    assert charge.defaults.max_attempts == 5
    charge.dispatch("a")
    charge.options(max_attempts=2, key="b", expiration=5).dispatch("b")
    first, second = (call_options(c) for c in sent(endpoint))
    assert (first.max_attempts, first.attempt_timeout.ToSeconds()) == (5, 30)
    assert first.backoff.initial.ToSeconds() == 2
    assert (first.concurrency, first.concurrency_per_key) == (10, 2)
    assert (first.rate_limit.count, first.rate_limit.period.ToSeconds()) == (100, 60)
    assert sent(endpoint)[0].expiration.ToSeconds() == 3600
    assert (second.max_attempts, second.attempt_timeout.ToSeconds(), second.key) == (2, 30, "b")
    assert second.concurrency == 10
    assert sent(endpoint)[1].expiration.ToSeconds() == 5
    # A bare decorator and one with only a name stay as they were.

    @endpoint.function(name="renamed")
    def other() -> None:
        return None

    assert other.name == "renamed"
    assert not other.defaults
    assert other.schedule is None


def test_batches_carry_options_and_keys(endpoint: Endpoint) -> None:
    @endpoint.function(max_attempts=4)
    def charge(order: str) -> str:
        return order

    with endpoint.batch() as batch:
        batch.add(charge.options(key="b1", delay=5), "o-1")
        batch.add(charge, "o-2")
    assert batch.dispatch_ids == ["id-0", "id-1"]
    first, second = (call_options(c) for c in sent(endpoint))
    assert (first.key, first.delay.ToSeconds(), first.max_attempts) == ("b1", 5, 4)
    assert (second.key, second.max_attempts) == ("", 4)


@pytest.mark.parametrize(
    ("given", "error", "message"),
    [
        ({"key": 17}, TypeError, "charge.options(): key must be a str, got int"),
        ({"key": ""}, ValueError, "an empty idempotency key"),
        ({"key": "k" * 257}, ValueError, "longer than 256 characters"),
        ({"key": "a\x00b"}, ValueError, "with a control character"),
        ({"expiration": "soon"}, TypeError, "expiration must be a timedelta or seconds"),
        ({"expiration": 0}, ValueError, "expiration must be positive"),
        ({"delay": -1}, ValueError, "delay must be zero or more"),
        ({"delay": math.nan}, ValueError, "delay must be a finite duration"),
        ({"delay": datetime.timedelta(seconds=-5)}, ValueError, "delay must be zero or more"),
        ({"delay": "10m"}, TypeError, "delay must be a timedelta or seconds, got str"),
        ({"at": "2030-01-01"}, TypeError, "at must be a datetime, got str"),
        ({"at": datetime.datetime(2030, 1, 1)}, ValueError, "at must be an aware datetime"),
        ({"max_attempts": 0}, ValueError, "max_attempts must be at least 1"),
        ({"max_attempts": 2.0}, TypeError, "max_attempts must be an int, got float"),
        ({"max_attempts": True}, TypeError, "max_attempts must be an int, got bool"),
        ({"timeout": 0}, ValueError, "timeout must be positive"),
        ({"timeout": math.inf}, ValueError, "timeout must be a finite duration"),
        ({"backoff": "fast"}, TypeError, "backoff must be a Backoff, a timedelta or seconds"),
        ({"backoff": -1}, ValueError, "Backoff initial must be positive"),
        ({"concurrency_key": 3}, TypeError, "concurrency_key must be a str"),
        ({"concurrency_key": "x" * 300}, ValueError, "a concurrency key longer than 256"),
        ({"colour": "red"}, TypeError, "unexpected keyword argument 'colour'"),
    ],
)
def test_options_refuse_bad_values_with_a_clear_error(
    endpoint: Endpoint, given: dict[str, Any], error: type[Exception], message: str
) -> None:
    @endpoint.function
    def charge(order: str) -> str:
        return order

    options: Any = charge.options
    with pytest.raises(error) as refused:
        options(**given)
    assert message in str(refused.value)
    assert not sent(endpoint)


@pytest.mark.parametrize(
    ("given", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, "@function charge: max_attempts must be at least 1"),
        ({"timeout": -3}, ValueError, "timeout must be positive"),
        ({"concurrency": 0}, ValueError, "concurrency must be at least 1"),
        ({"concurrency_per_key": "2"}, TypeError, "concurrency_per_key must be an int"),
        ({"rate_limit": 5}, TypeError, "rate_limit must be a pair (count, period)"),
        ({"rate_limit": (0, 1)}, ValueError, "rate_limit count must be at least 1"),
        ({"rate_limit": (5, 0)}, ValueError, "rate_limit period must be positive"),
        ({"schedule": 5}, TypeError, "schedule must be a cron expression"),
        ({"schedule": " "}, TypeError, "schedule must be a cron expression"),
    ],
)
def test_decorator_refuses_bad_defaults(
    endpoint: Endpoint, given: dict[str, Any], error: type[Exception], message: str
) -> None:
    decorate: Any = endpoint.function
    with pytest.raises(error) as refused:

        @decorate(**given)
        def charge(order: str) -> str:
            return order

    assert message in str(refused.value)
    assert "charge" not in endpoint.functions


def test_backoff_refuses_what_is_no_backoff() -> None:
    with pytest.raises(ValueError, match=r"maximum .* is below its initial wait"):
        Backoff(10, maximum=5)
    with pytest.raises(ValueError, match="multiplier must be at least 1"):
        Backoff(1, multiplier=0.5)
    with pytest.raises(TypeError, match="multiplier must be a number"):
        Backoff(1, multiplier="2")  # type: ignore[arg-type]
    assert Backoff(datetime.timedelta(milliseconds=500)).initial == 0.5


def test_workflow_children_carry_options_and_the_functions_defaults() -> None:
    endpoint = Endpoint(insecure=True)

    @endpoint.function(max_attempts=7, timeout=9)
    def charge(order: str) -> str:
        return f"charged {order}"

    @endpoint.function
    async def checkout(order: str) -> list[str]:
        return [
            await charge.options(key=f"charge-{order}", max_attempts=2)(order),
            await charge.options(delay=datetime.timedelta(seconds=30)).step(order),
            await charge(order),
        ]

    run = run_workflow(endpoint, checkout, "o-1")
    assert run.status is Status.OK
    assert run.output == ["charged o-1"] * 3
    first, second, third = (call_options(c) for c in run.calls)
    assert (first.key, first.max_attempts, first.attempt_timeout.ToSeconds()) == (
        "charge-o-1",
        2,
        9,
    )
    assert (second.delay.ToSeconds(), second.max_attempts) == (30, 7)
    assert (third.key, third.max_attempts) == ("", 7)


def test_options_are_called_only_in_workflows(endpoint: Endpoint) -> None:
    @endpoint.function
    def child(n: int) -> int:
        return n

    with pytest.raises(TypeError, match=r"child\.options\(\.\.\.\) is called only in a workflow"):
        child.options(key="k")(1)
    with pytest.raises(RuntimeError, match=r"options\(\.\.\.\)\.step\(\) is a durable call"):
        child.options(key="k").step(1)


def test_registering_functions_with_defaults_imports_no_options_proto() -> None:
    """An endpoint's cold start: the options' messages are for code that starts calls."""
    code = (
        "import sys\n"
        "from dispatchlet import Endpoint\n"
        "endpoint = Endpoint(insecure=True)\n"
        "@endpoint.function(max_attempts=3, timeout=5, concurrency=2, schedule='* * * * *')\n"
        "def f() -> None: ...\n"
        "@endpoint.function(schedule='CRON_TZ=Europe/Paris 0 9 * * *')\n"
        "def g() -> None: ...\n"
        "loaded = [m for m in sys.modules if 'options_pb2' in m or m in ('croniter', 'zoneinfo')]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delay=-5m"], "a delay cannot be negative"),
        (["--delay", "soon"], "invalid duration 'soon'"),
        (["--at", "tomorrow"], "'tomorrow' is not a time"),
        (["--at", "2030-01-01T09:00:00"], "has no timezone: add Z (UTC) or its offset"),
        (["--max-attempts", "0"], "0 is not in 1.."),
        (["--timeout", "0"], "an attempt's timeout must be positive"),
        (["--key", "k" * 300], "longer than 256 characters"),
    ],
)
def test_the_cli_refuses_bad_options_before_dispatching(args: list[str], message: str) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "dispatchlet", "dispatch", "f", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "", "DISPATCH_API_URL": "http://127.0.0.1:9"},
    )
    assert refused.returncode == 2, refused.stderr
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr


def test_run_workflow_honours_delays_policies_and_keys_without_waiting() -> None:
    from dispatchlet import TemporaryError, sleep
    from dispatchlet.proto.dispatchlet.workflow.v1 import journal_pb2

    endpoint = Endpoint(insecure=True)
    charged: list[str] = []

    @endpoint.function
    def charge(order: str) -> str:
        charged.append(order)
        return f"charged {order}"

    @endpoint.function(max_attempts=2, backoff=Backoff(60))
    def flaky() -> None:
        raise TemporaryError("not yet")

    @endpoint.function
    async def checkout(order: str) -> list[Any]:
        first = await charge.options(key=f"charge-{order}", delay=datetime.timedelta(hours=2))(
            order
        )
        again = await charge.options(key=f"charge-{order}")(order)
        await sleep(1)  # its timer, in the journal, tells where the clock stood
        try:
            await flaky()
        except TemporaryError:
            gave_up = True
        return [first, again, gave_up]

    started = datetime.datetime.now(datetime.timezone.utc)
    run = run_workflow(endpoint, checkout, "o-1")
    assert run.status is Status.OK, run.error
    assert run.output == ["charged o-1", "charged o-1", True]
    assert charged == ["o-1"]
    assert run.child_attempts == {1: 1, 2: 0, 4: 2}
    journal = journal_pb2.Journal.FromString(run.journals[2])
    wake = journal.steps[2].wake_at.ToDatetime(tzinfo=datetime.timezone.utc)
    assert wake >= started + datetime.timedelta(hours=2)


def test_run_workflow_retries_the_workflow_itself_by_its_own_max_attempts() -> None:
    from dispatchlet import TemporaryError

    endpoint = Endpoint(insecure=True)

    @endpoint.function(max_attempts=3)
    async def stubborn() -> None:
        raise TemporaryError("no")

    run = run_workflow(endpoint, stubborn)
    assert run.status is Status.TEMPORARY_ERROR
    assert run.attempts == 3
