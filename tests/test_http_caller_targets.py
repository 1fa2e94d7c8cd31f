"""The HTTP caller parses each endpoint's URL once and keeps it (a bounded number of
them): every request still goes to its own endpoint's Run path, and an invalid URL is
refused each time it is called."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from dispatchlet.scheduler import http_caller
from dispatchlet.scheduler.http_caller import HttpCaller

RUN = "/dispatch.sdk.v1.FunctionService/Run"


@pytest.mark.parametrize("kept", [1, http_caller.MAX_TARGETS])
def test_each_request_goes_to_its_own_endpoint(monkeypatch: pytest.MonkeyPatch, kept: int) -> None:
    monkeypatch.setattr(http_caller, "MAX_TARGETS", kept)

    async def scenario() -> list[str]:
        paths: list[str] = []

        async def answer(request: web.Request) -> web.Response:
            paths.append(request.path)
            return web.Response(status=404, text="no such function")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with HttpCaller(Ed25519PrivateKey.generate()) as caller:
                request = function_pb2.RunRequest(function="f", dispatch_id="d")
                for prefix in ("/a", "/b", "/a", "", "/b/c/", "/a"):
                    endpoint = f"http://127.0.0.1:{port}{prefix}"
                    outcome = await asyncio.wait_for(caller.run(endpoint, request, timeout=60), 60)
                    assert outcome.status is Status.NOT_FOUND
                for _ in range(2):
                    outcome = await caller.run("ftp://127.0.0.1/x", request, timeout=60)
                    assert outcome.status is Status.INVALID_ARGUMENT
                    assert "invalid endpoint URL 'ftp://127.0.0.1/x'" in outcome.message
        finally:
            await runner.cleanup()
        return paths

    assert asyncio.run(scenario()) == [
        f"/a{RUN}",
        f"/b{RUN}",
        f"/a{RUN}",
        RUN,
        f"/b/c{RUN}",
        f"/a{RUN}",
    ]
