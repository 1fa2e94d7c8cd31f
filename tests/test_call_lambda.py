"""`dispatchlet call --lambda HANDLER`: an app's Lambda handler invoked in this process
with the direct-invocation event the scheduler sends to an arn:aws:lambda: endpoint."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from dispatchlet import Endpoint
from dispatchlet.adapters.aws_lambda import lambda_handler
from dispatchlet.cli import call_lambda
from dispatchlet.cli.errors import CommandError
from dispatchlet.core import values
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def dispatchlet(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env_free_of_keys = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "dispatchlet", *args],
        cwd=cwd,
        env=env_free_of_keys,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_example_apps_handler_answers_a_direct_invocation() -> None:
    result = dispatchlet("call", "--lambda", "examples/lambda_app.py:handler", "greet", "World")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == "Hello, World!"


def test_lambdas_own_handler_setting_names_it_too() -> None:
    """template.yaml's Handler, run from the app's folder as Lambda imports it."""
    result = dispatchlet(
        "call", "--lambda", "lambda_app.handler", "add", '{"a": 1, "b": 2}', cwd=EXAMPLES
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 3


def test_a_failing_function_exits_1_with_its_status() -> None:
    result = dispatchlet("call", "--lambda", "examples/lambda_app.py", "divide", "[1, 0]")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT: ValueError: cannot divide by zero" in result.stderr


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("examples/hello.py:endpoint", "examples/hello.py:endpoint is of type Endpoint"),
        ("examples/lambda_app.py:nothing", "examples/lambda_app.py:nothing is missing"),
        ("nosuchmodule.handler", "no module named 'nosuchmodule'"),
        ("handler", "expected MODULE:ATTR"),
    ],
)
def test_what_is_not_a_handler_is_a_usage_error(handler: str, message: str) -> None:
    result = dispatchlet("call", "--lambda", handler, "greet", "World")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_event_is_the_json_string_of_a_base64_run_request() -> None:
    """As the scheduler's Invoke sends it and Lambda's runtime decodes it."""
    seen: list[Any] = []
    endpoint = Endpoint()

    @endpoint.function
    def echo(value: str) -> str:
        return value

    served = lambda_handler(endpoint)

    def handler(event: Any, context: Any) -> Any:
        seen.append((event, context.aws_request_id, context.get_remaining_time_in_millis()))
        return served(event, context)

    request = function_pb2.RunRequest(function="echo")
    request.input.CopyFrom(values.to_any("hi"))
    response = call_lambda.invoke(handler, request, timeout=30)
    assert values.from_any(response.exit.result.output) == "hi"
    ((event, request_id, remaining),) = seen
    assert isinstance(event, str)
    assert function_pb2.RunRequest.FromString(base64.b64decode(event)) == request
    assert request_id
    assert 0 < remaining <= 30_000


def test_an_answer_that_is_no_run_response_is_named() -> None:
    request = function_pb2.RunRequest(function="echo")
    with pytest.raises(CommandError, match="not the base64 of a RunResponse"):
        call_lambda.invoke(lambda event, context: {"statusCode": 200}, request, timeout=30)
    with pytest.raises(CommandError, match="the handler raised KeyError"):
        call_lambda.invoke(lambda event, context: {}["x"], request, timeout=30)


def test_an_invocation_past_its_timeout_gets_no_answer() -> None:
    request = function_pb2.RunRequest(function="echo")
    release = threading.Event()
    try:
        with pytest.raises(CommandError, match=r"no answer within 0\.2 s"):
            call_lambda.invoke(lambda event, context: release.wait(60), request, timeout=0.2)
    finally:
        release.set()
