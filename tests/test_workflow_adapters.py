"""One workflow through every adapter: the scheduler's engine (SQLite store, signed HTTP
calls or Lambda invocations) resumes it through the Lambda adapter, invoked directly
and as a Function URL, and through the real functions-framework server."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dispatchlet import Endpoint, Request, Status
from dispatchlet.adapters.aws_lambda import lambda_handler
from dispatchlet.core import values
from dispatchlet.core.keys import public_key_base64
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
from dispatchlet.scheduler.callers import Callers
from dispatchlet.scheduler.engine import Engine
from dispatchlet.scheduler.http_caller import HttpCaller
from dispatchlet.scheduler.retry import RetryPolicy
from dispatchlet.scheduler.store import Call, NewCall
from dispatchlet.scheduler.store.sqlite import SQLiteStore
from support import KEY, PUBLIC_KEY, EndpointServer
from test_aws_lambda import CONTEXT, as_response, function_url_event
from test_cloud_functions import serve
from test_lambda_caller import ARN, AdapterClient

WORKFLOW = """
from dispatchlet import gather, sleep


@endpoint.function
def double(x: int) -> int:
    return 2 * x


@endpoint.function
async def pipeline(x: int) -> list:
    first = await double(x)
    pair = await gather(double(first), double(first + 1))
    await sleep(1)
    return [first, *pair, await double(sum(pair))]
"""

EXPECTED = [6, 12, 14, 52]


def workflow_endpoint(**options: Any) -> Endpoint:
    endpoint = Endpoint(**options)
    exec(WORKFLOW, {"endpoint": endpoint})
    return endpoint


def run_on(
    tmp_path: Path, endpoint_url: str, callers: Callable[[], Callers]
) -> tuple[Call, list[Call]]:
    """Dispatch ``pipeline(3)`` to ``endpoint_url`` and run the engine until it ends."""

    async def scenario() -> tuple[Call, list[Call]]:
        store = await SQLiteStore.open(tmp_path / "s.db")
        running = callers()
        engine = Engine(store, running, policy=RetryPolicy(base=0.01, cap=0.05))
        task = asyncio.create_task(engine.run())
        try:
            now = engine.clock()
            call = NewCall("pipeline", endpoint_url, values.to_any(3).SerializeToString(), now + 60)
            (dispatch_id,) = await store.dispatch([call], now=now)
            engine.wake()
            for _ in range(1000):
                found = await store.get(dispatch_id)
                if found is not None and found.done:
                    return found, await store.list(root_id=dispatch_id)
                await asyncio.sleep(0.02)
            raise AssertionError(f"the workflow did not end: {await store.get(dispatch_id)}")
        finally:
            engine.stop()
            await task
            await running.close()
            await store.close()

    return asyncio.run(scenario())


def check(done: Call, tree: list[Call], endpoint_url: str) -> None:
    assert done.status == Status.OK.value, call_pb2.CallResult.FromString(done.result)
    assert values.from_any(call_pb2.CallResult.FromString(done.result).output) == EXPECTED
    children = [c for c in tree if c.dispatch_id != done.dispatch_id]
    assert [c.function for c in children] == ["double"] * 4
    # The children run where the workflow runs: its own endpoint.
    assert {c.endpoint for c in children} == {endpoint_url}
    # Its last run, resumed with the last result, succeeded at once.
    assert done.attempts == 1


def test_lambda_direct_invocation(tmp_path: Path) -> None:
    client = AdapterClient(workflow_endpoint(insecure=True))
    done, tree = run_on(
        tmp_path,
        ARN,
        lambda: Callers(HttpCaller(None, insecure=True), lambda_client=lambda r, t: client),
    )
    check(done, tree, ARN)
    assert client.invocations == [ARN] * 9


class FunctionUrl(http.server.BaseHTTPRequestHandler):
    """What a Lambda Function URL does: each HTTP request becomes an event for the
    function's handler, and its answer the HTTP response."""

    handler: Callable[[dict[str, Any], Any], dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = Request("POST", self.path, self.headers["Host"], list(self.headers.items()), body)
        event = function_url_event(request)
        event["requestContext"]["domainName"] = "abcdefgh.lambda-url.eu-west-1.on.aws"
        event["requestContext"]["domainPrefix"] = "abcdefgh"
        answer = as_response(type(self).handler(event, CONTEXT))
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def function_url() -> Iterator[str]:
    server = EndpointServer(("127.0.0.1", 0), FunctionUrl)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    endpoint = workflow_endpoint(verification_key=PUBLIC_KEY, endpoint_url=url)
    FunctionUrl.handler = staticmethod(lambda_handler(endpoint))  # type: ignore[assignment]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.slow
def test_lambda_function_url(tmp_path: Path) -> None:
    with function_url() as url:
        done, tree = run_on(tmp_path, url, lambda: Callers(HttpCaller(KEY)))
    check(done, tree, url)


@pytest.mark.slow
def test_cloud_functions(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text(
        "from dispatchlet import Endpoint\n"
        "from dispatchlet.adapters.cloud_functions import cloud_function\n"
        "endpoint = Endpoint()\n" + WORKFLOW + "\nrun = cloud_function(endpoint)\n"
    )
    with serve(source, tmp_path, DISPATCH_VERIFICATION_KEY=public_key_base64(PUBLIC_KEY)) as server:
        url = f"http://{server.authority}"
        done, tree = run_on(tmp_path, url, lambda: Callers(HttpCaller(KEY)))
    check(done, tree, url)
