"""An endpoint's host falling silent, staged in network namespaces of its own (run in a
new network namespace, as root of it: ``unshare -n`` as root, ``unshare -rn`` otherwise).

The endpoint runs in a second network namespace joined to this one by a veth pair; its
address is taken away at a chosen moment, after which its host drops all that comes to
it without a word, as a host that crashed or was cut off behind a router. Two Run requests meet it:
one already being run when it falls silent (``held``), one sent on a kept-alive
connection just after (``sent``). Prints each one's outcome as a line of JSON.

``python silent_host.py endpoint`` is the endpoint itself: it answers ``f`` at once and
holds ``held`` unanswered, saying ``held`` on its standard output when one arrives."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import time

from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler import endpoint_connections
from dispatchlet.scheduler.http_caller import HttpCaller, Outcome
from support import EndpointServer

SILENT_SECONDS = 3.0
"""The silence after which a connection is given up, here (30 s by default)."""
ATTEMPT_TIMEOUT = 60.0
"""Each attempt's timeout: what a connection given up by silence ends well within."""
PORT = 8000
ENDPOINT = f"http://10.9.0.2:{PORT}"


class Endpoint(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections kept alive

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if function_pb2.RunRequest.FromString(body).function == "held":
            print("held", flush=True)
            time.sleep(3600)
        answer = function_pb2.RunResponse(status=Status.OK.value)
        answer.exit.SetInParent()
        data = answer.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def serve() -> None:
    server = EndpointServer(("0.0.0.0", PORT), Endpoint)
    print("listening", flush=True)
    server.serve_forever()


def ip(*args: str, namespace: int | None = None) -> None:
    prefix = [] if namespace is None else ["nsenter", "-t", str(namespace), "-n"]
    subprocess.run([*prefix, "ip", *args], check=True, timeout=30)


def outcome_line(name: str, outcome: Outcome) -> str:
    return json.dumps({"request": name, "status": outcome.status.name, "message": outcome.message})


async def stage(endpoint: subprocess.Popen[str]) -> None:
    assert endpoint.stdout is not None
    host = endpoint.pid
    ip("link", "set", "lo", "up")
    ip("link", "add", "dlc", "type", "veth", "peer", "name", "dls")
    ip("link", "set", "dls", "netns", str(host))
    ip("addr", "add", "10.9.0.1/24", "dev", "dlc")
    ip("link", "set", "dlc", "up")
    ip("link", "set", "lo", "up", namespace=host)
    ip("addr", "add", "10.9.0.2/24", "dev", "dls", namespace=host)
    ip("link", "set", "dls", "up", namespace=host)
    assert endpoint.stdout.readline().strip() == "listening"
    loop = asyncio.get_running_loop()
    async with HttpCaller(None, insecure=True) as caller:

        async def run(function: str) -> Outcome:
            request = function_pb2.RunRequest(function=function)
            return await caller.run(ENDPOINT, request, timeout=ATTEMPT_TIMEOUT)

        # Falls silent while a function runs: nothing is left to acknowledge, only the
        # keep-alive probes go unanswered.
        answered = await run("f")  # also waits out the link's coming up
        assert answered.status is Status.OK, answered
        held = asyncio.ensure_future(run("held"))
        assert await loop.run_in_executor(None, endpoint.stdout.readline) == "held\n"
        ip("addr", "del", "10.9.0.2/24", "dev", "dls", namespace=host)
        print(outcome_line("held", await held), flush=True)

        # Falls silent between two requests on one connection: the second is sent and
        # never acknowledged.
        ip("addr", "add", "10.9.0.2/24", "dev", "dls", namespace=host)
        answered = await run("f")
        assert answered.status is Status.OK, answered
        ip("addr", "del", "10.9.0.2/24", "dev", "dls", namespace=host)
        print(outcome_line("sent", await run("f")), flush=True)


def main() -> None:
    if sys.argv[1:] == ["endpoint"]:
        serve()
        return
    endpoint_connections.SILENT_SECONDS = SILENT_SECONDS
    command = ["unshare", "-n", sys.executable, __file__, "endpoint"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as endpoint:
        try:
            asyncio.run(stage(endpoint))
        finally:
            endpoint.kill()


if __name__ == "__main__":
    main()
