"""The dashboard's login form takes a few wrong keys from one address, then answers 429
with ``Retry-After`` until the oldest failure is old enough; a right key is taken once the
address may try again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dispatchlet.scheduler.dashboard.login_limits import ALLOWED, WINDOW, FailedLogins
from scheduler_harness import API_KEY, Harness, harness
from test_dashboard import post


def test_an_address_waits_once_it_failed_too_often_in_the_window() -> None:
    logins = FailedLogins(allowed=3, window=60)
    for second in range(3):
        assert logins.wait("a", 100.0 + second) == 0
        logins.failed("a", 100.0 + second)
    assert logins.wait("a", 103.0) == 57.0
    # Another address is not held back.
    assert logins.wait("b", 103.0) == 0
    # Once the oldest failure leaves the window, one more try is allowed.
    assert logins.wait("a", 160.0) == 0
    logins.failed("a", 160.0)
    assert logins.wait("a", 160.5) == 0.5


def test_a_right_key_forgets_the_failures() -> None:
    logins = FailedLogins(allowed=2, window=60)
    logins.failed("a", 1.0)
    logins.succeeded("a")
    logins.failed("a", 2.0)
    assert logins.wait("a", 2.0) == 0


def test_the_addresses_remembered_are_bounded() -> None:
    logins = FailedLogins(allowed=1, window=60, tracked=2)
    for address in ("a", "b", "c"):
        logins.failed(address, 1.0)
    # The one that failed least recently is forgotten.
    assert logins.wait("a", 2.0) == 0
    assert logins.wait("b", 2.0) > 0
    assert logins.wait("c", 2.0) > 0


def test_the_login_form_answers_429_after_too_many_wrong_keys(tmp_path: Path) -> None:
    async def run() -> None:
        async with harness(tmp_path, running=False) as h:
            await _fail(h, ALLOWED)
            status, page, cookies = await post(h, "/login", {"key": API_KEY, "next": "/"})
            assert (status, cookies) == (429, []), page
            assert "Too many wrong keys" in page
            # The right key, too, waits: a guesser learns nothing from the answer.
            async with h.session.post(
                h.url + "/login",
                data={"key": API_KEY},
                headers={"Origin": h.url},
                allow_redirects=False,
            ) as answer:
                assert answer.status == 429
                assert 0 < int(answer.headers["Retry-After"]) <= WINDOW

    asyncio.run(run())


def test_a_few_wrong_keys_do_not_stop_a_right_one(tmp_path: Path) -> None:
    async def run() -> None:
        async with harness(tmp_path, running=False) as h:
            await _fail(h, ALLOWED - 1)
            status, _, cookies = await post(h, "/login", {"key": API_KEY, "next": "/"})
            assert status == 303
            assert cookies

    asyncio.run(run())


async def _fail(h: Harness, times: int) -> None:
    for _ in range(times):
        status, page, _ = await post(h, "/login", {"key": "wrong", "next": "/"})
        assert status == 401, page
