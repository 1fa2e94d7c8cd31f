"""An ``--insecure`` scheduler answers only requests for an IP address, localhost or a name
given with ``--allowed-host``: a page of another site whose name was rebound to the
scheduler's address (DNS rebinding) is refused; with API keys nothing is checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dispatchlet.scheduler.host_check import host_allowed, host_name
from scheduler_harness import API_KEY, harness

DISPATCH = "/dispatch.sdk.v1.DispatchService/Dispatch"
ONE_CALL = {"calls": [{"function": "f", "endpoint": "http://127.0.0.1:1"}]}


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:4450", "127.0.0.1"),
        ("[::1]:4450", "::1"),
        ("[::1]", "::1"),
        ("LocalHost:80", "localhost"),
        ("example.com.", "example.com"),
        ("example.com", "example.com"),
    ],
)
def test_the_name_of_a_host_header_leaves_out_its_port(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    "header",
    [
        "127.0.0.1:4450",
        "10.0.0.7",
        "[::1]:4450",
        "localhost:4450",
        "app.localhost",
        None,
    ],
)
def test_addresses_and_localhost_are_answered(header: str | None) -> None:
    assert host_allowed(header, ())


@pytest.mark.parametrize(
    "header", ["attacker.example:4450", "localhost.attacker.example", "127.0.0.1.nip.io"]
)
def test_other_names_are_refused(header: str) -> None:
    assert not host_allowed(header, ())


def test_allowed_hosts_are_answered_by_name_or_by_domain() -> None:
    assert host_allowed("scheduler:4450", ["scheduler"])
    assert host_allowed("a.internal.example:443", [".internal.example"])
    assert host_allowed("internal.example", [".internal.example"])
    assert not host_allowed("internal.example.evil", [".internal.example"])
    assert not host_allowed("other", ["scheduler"])


async def _status(url: str, path: str, host: str, *, post: bool = False) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as client:
        headers = {"Host": host}
        if post:
            answer = await client.post(url + path, json=ONE_CALL, headers=headers)
        else:
            answer = await client.get(url + path, headers=headers)
        async with answer:
            return answer.status, await answer.text()


def test_an_insecure_scheduler_refuses_a_rebound_name_on_the_api_and_the_dashboard(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        async with harness(tmp_path, insecure=True, api_keys=[]) as h:
            status, text = await _status(h.url, DISPATCH, "rebound.example:4450", post=True)
            assert status == 403
            assert "permission_denied" in text
            assert "--allowed-host rebound.example" in text
            status, _ = await _status(h.url, "/", "rebound.example")
            assert status == 403
            # A health check by any name is answered: it tells nothing.
            status, _ = await _status(h.url, "/healthz", "rebound.example")
            assert status == 200
            assert sum((await h.store.count_by_state()).values()) == 0
            # The same requests by address or by localhost are answered.
            status, _ = await _status(h.url, DISPATCH, h.url.split("//")[1], post=True)
            assert status == 200
            status, _ = await _status(h.url, "/", "localhost:4450")
            assert status == 200

    asyncio.run(run())


def test_an_allowed_host_is_answered_when_insecure(tmp_path: Path) -> None:
    async def run() -> None:
        async with harness(tmp_path, insecure=True, api_keys=[], allowed_hosts=["scheduler"]) as h:
            status, _ = await _status(h.url, DISPATCH, "scheduler:4450", post=True)
            assert status == 200

    asyncio.run(run())


def test_a_scheduler_with_keys_answers_any_host_name(tmp_path: Path) -> None:
    async def run() -> None:
        async with harness(tmp_path) as h:
            import aiohttp

            async with (
                aiohttp.ClientSession() as client,
                client.post(
                    h.url + DISPATCH,
                    json=ONE_CALL,
                    headers={"Host": "scheduler.internal", "Authorization": f"Bearer {API_KEY}"},
                ) as answer,
            ):
                assert answer.status == 200

    asyncio.run(run())
