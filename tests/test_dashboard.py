"""The scheduler's web dashboard over HTTP: who may see its pages and act, what its
pages show (filters, paging, values escaped), its session tokens; in-process, on a
loopback port (the browser's view is in test_dashboard_browser.py)."""

from __future__ import annotations

import asyncio
import datetime
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.core.status import Status
from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
from dispatchlet.scheduler.dashboard import session
from dispatchlet.scheduler.dashboard.actions import ACTIONS, offered
from dispatchlet.scheduler.dashboard.chart import minute_chart
from dispatchlet.scheduler.dashboard.pages import local
from dispatchlet.scheduler.store import NewCall
from scheduler_harness import API_KEY, Harness, call, harness, raised, returned
from test_scheduler_processes import Process, environment

XSS = '<script>document.title = "pwned"</script><img src=x onerror="document.title=1">'


def answer(endpoint: str, request: Any) -> Any:
    if request.function == "fails":
        return raised("ValueError", "the <b>amount</b> is wrong", Status.PERMANENT_ERROR)
    return returned({"echo": XSS})


def scenario(tmp_path: Path, body: Callable[[Harness], Awaitable[None]], **options: Any) -> None:
    async def run() -> None:
        async with harness(tmp_path, answer, **options) as h:
            await body(h)

    asyncio.run(run())


async def get(
    h: Harness, path: str, *, key: str | None = None, cookie: str | None = None
) -> tuple[int, str, dict[str, str]]:
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if cookie is not None:
        headers["Cookie"] = f"{session.COOKIE}={cookie}"
    async with h.session.get(h.url + path, headers=headers, allow_redirects=False) as answer:
        return answer.status, await answer.text(), dict(answer.headers)


async def post(
    h: Harness,
    path: str,
    form: dict[str, str],
    *,
    origin: str | None = "same",
    cookie: str | None = None,
    key: str | None = None,
) -> tuple[int, str, list[str]]:
    headers = {}
    if origin is not None:
        headers["Origin"] = h.url if origin == "same" else origin
    if cookie is not None:
        headers["Cookie"] = f"{session.COOKIE}={cookie}"
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    h.session.cookie_jar.clear()
    async with h.session.post(
        h.url + path, data=form, headers=headers, allow_redirects=False
    ) as answer:
        return answer.status, await answer.text(), answer.headers.getall("Set-Cookie", [])


async def log_in(h: Harness) -> tuple[str, str]:
    """A session cookie for the API key, and the CSRF token its pages carry."""
    status, _, cookies = await post(h, "/login", {"key": API_KEY, "next": "/"})
    assert status == 303
    token = SimpleCookie(cookies[0])[session.COOKIE].value
    _, page, _ = await get(h, "/", cookie=token)
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None, page
    return token, csrf.group(1)


def test_without_a_key_the_pages_and_actions_are_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        (running,) = await h.dispatch(call("f"))
        for path in ("/", f"/calls/{running}", "/overview", "/?status=failed"):
            status, page, headers = await get(h, path)
            assert status == 303, path
            assert headers["Location"].startswith("/login?next="), headers
            assert running not in page
            # A wrong key is no key.
            assert (await get(h, path, key="wrong"))[0] == 303
            assert (await get(h, path, cookie="1.2.3"))[0] == 303
        assert (await get(h, "/fragments/calls"))[0] == 401
        status, _, _ = await post(h, f"/calls/{running}/cancel", {})
        assert status == 401
        found = await h.store.get(running)
        assert found is not None
        assert not found.done
        # The login form is there for anyone, and the key opens the pages.
        status, page, _ = await get(h, "/login")
        assert status == 200
        assert 'type="password"' in page
        assert (await get(h, "/", key=API_KEY))[0] == 200

    scenario(tmp_path, body, running=False)


def test_logging_in_sets_a_strict_http_only_session_cookie(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        status, page, cookies = await post(h, "/login", {"key": "wrong", "next": "/"})
        assert (status, cookies) == (401, [])
        assert "none of the scheduler&#39;s API keys" in page
        # A login form posted from another site (login CSRF) is refused.
        status, _, cookies = await post(h, "/login", {"key": API_KEY}, origin="http://evil.example")
        assert (status, cookies) == (403, [])
        status, _, cookies = await post(h, "/login", {"key": API_KEY, "next": "/overview"})
        assert status == 303
        (cookie,) = cookies
        attributes = cookie.lower()
        assert "httponly" in attributes
        assert "samesite=strict" in attributes
        assert "path=/" in attributes
        assert "secure" not in attributes
        token = SimpleCookie(cookie)[session.COOKIE].value
        assert API_KEY not in token
        assert (await get(h, "/overview", cookie=token))[0] == 200
        # Behind a proxy that terminates https, the cookie is sent over https only.
        h.session.cookie_jar.clear()
        async with h.session.post(
            h.url + "/login",
            data={"key": API_KEY},
            headers={"Origin": h.url, "X-Forwarded-Proto": "https"},
            allow_redirects=False,
        ) as answer:
            assert "secure" in answer.headers["Set-Cookie"].lower()

    scenario(tmp_path, body, running=False)


def test_an_action_needs_the_sessions_csrf_token_and_a_page_of_this_address(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        token, csrf = await log_in(h)
        (running,) = await h.dispatch(call("f"))
        path = f"/calls/{running}/cancel"
        assert (await post(h, path, {}, cookie=token))[0] == 403
        assert (await post(h, path, {"csrf": "0" * 64}, cookie=token))[0] == 403
        assert (await post(h, path, {"csrf": csrf}, cookie=token, origin=None))[0] == 403
        other = "http://evil.example"
        assert (await post(h, path, {"csrf": csrf}, cookie=token, origin=other))[0] == 403
        found = await h.store.get(running)
        assert found is not None
        assert not found.done
        status, _, _ = await post(h, path, {"csrf": csrf}, cookie=token)
        assert status == 303
        found = await h.store.get(running)
        assert found is not None
        assert found.done
        assert found.status == Status.PERMANENT_ERROR.value
        _, page, _ = await get(h, f"/calls/{running}", cookie=token)
        assert "Cancelled" in page
        assert "the call was cancelled" in page
        # A script with the key needs no form token: a browser never sends the header.
        (other_call,) = await h.dispatch(call("f"))
        status, _, _ = await post(h, f"/calls/{other_call}/cancel", {}, key=API_KEY, origin=None)
        assert status == 303
        # Logging out ends the session's pages for this browser.
        status, _, cookies = await post(h, "/logout", {"csrf": csrf}, cookie=token)
        assert status == 303
        assert 'dispatchlet_session=""' in cookies[0]

    scenario(tmp_path, body, running=False)


def test_session_tokens_are_signed_with_a_secret_derived_from_the_keys() -> None:
    now = 1_800_000_000.0
    token, issued = session.issue(b"key-a", now)
    # Another process with the same keys (rotation: more than one) accepts it.
    assert session.verify(token, [b"key-b", b"key-a"], now + 60) == issued
    assert session.verify(token, [b"key-b"], now) is None  # its key was removed
    assert session.verify(token, [b"key-a"], now + session.LIFETIME) is None  # expired
    expiry, nonce, mac = token.split(".")
    later = f"{int(expiry) + 3600}.{nonce}.{mac}"
    assert session.verify(later, [b"key-a"], now) is None  # its expiry changed
    assert session.verify("", [b"key-a"], now) is None
    assert session.verify("x.y", [b"key-a"], now) is None
    # Each session has its own CSRF token.
    assert session.issue(b"key-a", now)[1].csrf != issued.csrf


def test_the_calls_page_filters_pages_and_finds_an_id(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        (failed,) = await h.dispatch(call("fails", 1))
        ok = await h.dispatch(*[call("works", i) for i in range(27)])
        for dispatch_id in [failed, *ok]:
            await h.done(dispatch_id)

        async def page(query: str) -> str:
            status, text, _ = await get(h, "/" + query, key=API_KEY)
            assert status == 200, text
            return text

        shown = await page("?status=failed")
        assert f'href="/calls/{failed}"' in shown
        assert ok[0] not in shown
        assert "ValueError: the &lt;b&gt;amount&lt;/b&gt; is wrong" in shown
        assert failed not in await page("?status=OK")
        assert failed not in await page("?function=works")
        assert failed in await page("?function=fails")
        assert failed in await page(f"?root={failed}")
        assert ok[0] not in await page(f"?root={failed}")
        # Counts by state at the top.
        assert re.search(r'<span class="n">28</span> done', await page(""))
        # Newest first, 25 a page, the next page after the last one shown.
        first = await page("")
        assert first.index(ok[-1]) < first.index(ok[-2])
        following = re.search(r'href="/\?after=([0-9a-f]+)" rel="next"', first)
        assert following is not None
        assert following.group(1) == ok[2]
        rest = await page(f"?after={ok[2]}")
        assert ok[1] in rest
        assert ok[0] in rest
        assert failed in rest
        assert ok[3] not in rest
        # The live fragment is the same listing.
        status, fragment, _ = await get(h, "/fragments/calls?status=failed", key=API_KEY)
        assert status == 200
        assert failed in fragment
        assert "<html" not in fragment
        # A whole dispatch id opens its call; another says none has it.
        status, _, headers = await get(h, f"/?id={failed}", key=API_KEY)
        assert (status, headers["Location"]) == (303, f"/calls/{failed}")
        assert "No call has the dispatch id" in await page("?id=0123")
        # A bad filter is a clear 400, not a failed page.
        status, text, _ = await get(h, "/?status=sideways", key=API_KEY)
        assert status == 400
        assert "unknown status" in text
        assert (await get(h, "/calls/nope", key=API_KEY))[0] == 404

    scenario(tmp_path, body)


def test_values_are_shown_decoded_and_escaped(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        (echoed,) = await h.dispatch(call("echo", XSS))
        await h.done(echoed)
        status, page, headers = await get(h, f"/calls/{echoed}", key=API_KEY)
        assert status == 200
        assert "<script>document" not in page
        assert "<img src=x" not in page
        # Shown as the JSON string it is, its quotes escaped by JSON, its markup by HTML.
        assert "&lt;script&gt;document.title = \\&#34;pwned\\&#34;&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=" in page
        assert "&#34;echo&#34;:" in page  # the output, decoded as JSON
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]

    scenario(tmp_path, body)


def test_insecure_is_open_and_no_dashboard_serves_none(tmp_path: Path) -> None:
    async def open_body(h: Harness) -> None:
        assert (await get(h, "/"))[0] == 200
        (running,) = await h.dispatch(call("f"))
        # Even open, an action must come from a page of this address.
        status, _, _ = await post(h, f"/calls/{running}/cancel", {}, origin="http://evil.example")
        assert status == 403
        assert (await post(h, f"/calls/{running}/cancel", {}))[0] == 303

    async def none_body(h: Harness) -> None:
        assert (await get(h, "/", key=API_KEY))[0] == 404
        assert (await get(h, "/login"))[0] == 404

    scenario(tmp_path / "open", open_body, insecure=True, running=False)
    scenario(tmp_path / "none", none_body, dashboard=False, running=False)


def test_a_redirect_after_login_stays_on_this_address() -> None:
    assert local("/calls/abc?x=1") == "/calls/abc?x=1"
    for elsewhere in ("//evil.example/", "/\\evil.example", "https://evil.example", ""):
        assert local(elsewhere) == "/"


def test_retry_and_rerun_are_offered_once_the_api_has_their_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Plain:
        async def cancel(self, request: Any) -> Any:
            return calls_pb2.CancelResponse()

    class WithRetry(Plain):
        async def retry(self, request: Any) -> Any:
            return calls_pb2.CancelResponse()

    names = [a.name for a in offered(ACTIONS, Plain())]  # type: ignore[arg-type]
    assert "cancel" in names
    assert "retry" not in names
    assert "rerun" not in names
    monkeypatch.setattr(calls_pb2, "RetryRequest", calls_pb2.CancelRequest, raising=False)
    names = [a.name for a in offered(ACTIONS, WithRetry())]  # type: ignore[arg-type]
    assert "retry" in names
    assert "rerun" not in names


@pytest.mark.slow
def test_the_scheduler_command_prints_the_dashboard_unless_no_dashboard(tmp_path: Path) -> None:
    def started(*flags: str) -> Process:
        command = [sys.executable, "-m", "dispatchlet", "scheduler", "--insecure"]
        database = str(tmp_path / f"{len(flags)}.db")
        return Process([*command, "--port", "0", "--db", database, *flags], environment(), tmp_path)

    shown = started()
    try:
        url = shown.wait_for(r"dashboard: (http://\S+/)").group(1)
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200
            assert b"<h1>Calls</h1>" in answer.read()
    finally:
        shown.stop()
    hidden = started("--no-dashboard")
    try:
        api = hidden.wait_for(r"listening at (http://\S+)").group(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api + "/", timeout=30)
        assert refused.value.code == 404
        assert not any("dashboard:" in line for line in hidden.drained())
    finally:
        hidden.stop()


def test_with_no_key_configured_no_login_succeeds(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        status, page, cookies = await post(h, "/login", {"key": API_KEY})
        assert (status, cookies) == (401, [])
        assert "no API key configured" in page
        assert (await get(h, "/", key=API_KEY))[0] == 303

    scenario(tmp_path, body, running=False, api_keys=[])


def test_the_call_page_shows_attempts_when_the_data_has_them() -> None:
    from dispatchlet.scheduler.dashboard import Dashboard, views
    from dispatchlet.scheduler.store import Call, State

    stored = Call(
        dispatch_id="d1", function="f", endpoint="http://e", input=b"", version="",
        correlation_id=0, parent_id=None, root_id="d1", state=State.READY, status=None,
        result=b"", attempts=2, created_at=1.0, expires_at=2.0, ready_at=1.5,
        finished_at=None,
    )  # fmt: skip
    template = Dashboard(None).templates.get_template("call.html")  # type: ignore[arg-type]

    def shown(history: list[dict[str, str]]) -> str:
        page = views.CallPage(stored, None, views.Result(), [], False, None, [])
        page.attempts_history = history
        return template.render(viewer=None, count_cap=1, page=page, actions=[], done="")

    assert 'id="attempts"' not in shown([])
    rows = [{"Attempt": "1", "Status": "<TIMEOUT>"}, {"Attempt": "2", "Status": "OK"}]
    page = shown(rows)
    assert '<th scope="col">Attempt</th><th scope="col">Status</th>' in page
    assert "&lt;TIMEOUT&gt;" in page


class ChartReader(HTMLParser):
    """The overview's chart as the page draws it: each bar's minute and total, its
    segments' status, count and geometry, and the rows of the table of figures."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, Any]] = []
        self.rows: list[list[str]] = []
        self.header: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "g" and found.get("class") == "bar":
            self.bars.append(
                {
                    "minute": found["data-minute"],
                    "total": int(found["data-total"] or 0),
                    "parts": [],
                }
            )
        elif tag == "rect" and "data-status" in found:
            self.bars[-1]["parts"].append(
                {
                    "status": found["data-status"],
                    "count": int(found["data-count"] or 0),
                    "y": float(found["y"] or 0),
                    "height": float(found["height"] or 0),
                }
            )
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and self._row[0] == "Minute (UTC)":
                self.header = self._row
            elif self.header:
                self.rows.append(self._row)
            self._row = None


def test_the_overview_charts_the_calls_finished_per_minute_by_status(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        ids = await h.dispatch(*[call("works", i) for i in range(3)], call("fails"), call("fails"))
        finished = [await h.done(dispatch_id) for dispatch_id in ids]
        expected: dict[str, dict[str, int]] = {}
        for found in finished:
            assert found.finished_at is not None
            minute = datetime.datetime.fromtimestamp(found.finished_at, datetime.timezone.utc)
            by_status = expected.setdefault(minute.strftime("%H:%M"), {})
            name = Status(found.status or 0).name
            by_status[name] = by_status.get(name, 0) + 1
        status, page, headers = await get(h, "/overview", key=API_KEY)
        assert status == 200, page
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        reader = ChartReader()
        reader.feed(page)
        # A bar for every minute of the hour, the empty ones too, oldest first.
        assert 60 <= len(reader.bars) <= 61
        assert reader.bars[-1]["minute"] == max(expected)
        shown = {
            bar["minute"]: {part["status"]: part["count"] for part in bar["parts"]}
            for bar in reader.bars
            if bar["total"]
        }
        assert shown == expected
        # Stacked from the baseline up (OK at the bottom), heights in proportion to counts.
        scales = set()
        for bar in reader.bars:
            assert bar["total"] == sum(part["count"] for part in bar["parts"])
            base = 100.0
            for part in bar["parts"]:
                assert part["y"] + part["height"] == pytest.approx(base, abs=0.01)
                base = part["y"]
                scales.add(round(part["height"] / part["count"], 2))
            if bar["parts"]:
                assert bar["parts"][0]["status"] == "OK" or "OK" not in expected[bar["minute"]]
        assert len(scales) == 1
        # The same figures as a table, for those who cannot see the chart.
        assert reader.header == ["Minute (UTC)", "OK", "PERMANENT_ERROR", "All"]
        table = {
            row[0]: {
                name: int(cell)
                for name, cell in zip(reader.header[1:-1], row[1:-1], strict=True)
                if cell != "0"
            }
            for row in reader.rows
        }
        assert table == expected
        assert 'role="img"' in page
        assert "5 calls finished" in page

    scenario(tmp_path, body)


def test_the_chart_keeps_every_minute_of_the_window_and_names_unknown_statuses() -> None:
    answer = calls_pb2.OverviewResponse()
    answer.now.seconds = 1_800_000_030  # half a minute into a minute
    answer.window.seconds = 3600
    answer.finished.add(status=Status.PERMANENT_ERROR, count=7).minute.seconds = 1_800_000_000
    answer.finished.add(status=99, count=1).minute.seconds = 1_800_000_000
    answer.finished.add(status=Status.OK, count=12).minute.seconds = 1_800_000_000
    drawn = minute_chart(answer)
    assert len(drawn.bars) == 61  # the partial minutes at both ends of the hour
    assert drawn.top == 20
    assert [item.status for item in drawn.legend] == ["OK", "PERMANENT_ERROR", "99"]
    last = drawn.bars[-1]
    assert [(s.status, s.count, s.height) for s in last.segments] == [
        ("OK", 12, 60.0),
        ("PERMANENT_ERROR", 7, 35.0),
        ("99", 1, 5.0),
    ]
    assert last.segments[-1].y == 0.0
    assert drawn.busy == (last,)
    assert drawn.total == 20
    empty = minute_chart(calls_pb2.OverviewResponse(now=answer.now, window=answer.window))
    assert empty.total == 0
    assert empty.top == 1
    assert len(empty.bars) == 61


def test_the_calls_page_filters_by_creation_time_in_utc(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        def at(hour: int, minute: int = 0) -> float:
            moment = datetime.datetime(2026, 1, 2, hour, minute, tzinfo=datetime.timezone.utc)
            return moment.timestamp()

        made = {}
        for hour in (10, 11, 12):
            new = NewCall("f", "http://127.0.0.1:1", b"", expires_at=at(23))
            (made[hour],) = await h.store.dispatch([new], now=at(hour))

        async def shown(query: str) -> str:
            status, text, _ = await get(h, "/" + query, key=API_KEY)
            assert status == 200, text
            return text

        page = await shown("?created_from=2026-01-02T10:30&created_before=2026-01-02T12:00")
        assert made[11] in page
        assert made[10] not in page
        assert made[12] not in page
        # The form shows the range, and the live table and the pages keep it.
        assert 'type="datetime-local" value="2026-01-02T10:30"' in page
        assert "created_from=2026-01-02T10%3A30" in page
        assert "created_before=2026-01-02T12%3A00" in page
        later = await shown("?created_from=2026-01-02T11:00:00")
        assert made[11] in later
        assert made[12] in later
        assert made[10] not in later
        assert 'value="2026-01-02T11:00"' in later
        # A time with an offset is read in UTC.
        offset = await shown("?created_before=2026-01-02T11:30%2B01:00")
        assert made[10] in offset
        assert made[11] not in offset
        # Newest first, as without a range.
        first = await shown("?created_from=2026-01-02T09:00")
        assert first.index(made[12]) < first.index(made[11]) < first.index(made[10])
        status, text, _ = await get(h, "/?created_from=tomorrow", key=API_KEY)
        assert status == 400
        assert "created_from &#39;tomorrow&#39; is not a time" in text

    scenario(tmp_path, body, running=False)


def test_the_call_page_shows_receives_and_sends_a_message_with_its_form(tmp_path: Path) -> None:
    from datetime import timedelta

    from dispatchlet import Endpoint, receive
    from dispatchlet.core import values
    from dispatchlet.proto.dispatch.sdk.v1 import call_pb2
    from dispatchlet.scheduler.http_caller import Outcome

    workflows = Endpoint(insecure=True)

    @workflows.function
    async def review(order: str) -> list[object]:
        try:
            first = await receive("first", timeout=timedelta(seconds=1))
        except TimeoutError:
            first = "timed out"
        decision = await receive("approval")
        await receive("close")
        return [order, first, decision]

    def run(endpoint: str, request: Any) -> Outcome:
        return Outcome(Status.OK, workflows.run(request))

    async def waiting_on(h: Harness, parent: str, topic: str) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            for child in await h.store.list(parent_id=parent):
                if child.topic == topic and not child.done:
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{parent} never waited on {topic!r}")

    async def body(h: Harness) -> None:
        token, csrf = await log_in(h)
        (workflow,) = await h.dispatch(call("review", "o-17"))
        await waiting_on(h, workflow, "approval")
        _, page, _ = await get(h, f"/calls/{workflow}", cookie=token)
        steps = re.findall(r'<span class="kind">(\w+)</span> <span class="fn">(\w+)</span> '
                           r'<span class="badge step-[\w-]+">([\w ]+)</span>', page)  # fmt: skip
        assert steps == [("receive", "first", "timed out"), ("receive", "approval", "waiting")]
        assert f'action="/calls/{workflow}/send"' in page
        path = f"/calls/{workflow}/send"
        message = {"topic": "approval", "value": '{"ok": true}'}
        # A form of another site, or without the session's token, sends nothing.
        assert (await post(h, path, message, cookie=token))[0] == 403
        other = "http://evil.example"
        assert (await post(h, path, {**message, "csrf": csrf}, cookie=token, origin=other))[
            0
        ] == 403
        status, _, _ = await post(h, path, {**message, "csrf": csrf}, cookie=token)
        assert status == 303
        await waiting_on(h, workflow, "close")
        _, page, _ = await get(h, f"/calls/{workflow}?done=sent", cookie=token)
        assert "Message sent: a waiting receive got it." in page
        assert '<span class="fn">approval</span> <span class="badge step-received">' in page
        received = page.split('<span class="fn">approval</span>', 1)[1].split("</li>", 1)[0]
        assert "&#34;ok&#34;: true" in received, received
        # A bad topic is refused with the reason.
        status, page, _ = await post(h, path, {"topic": "", "csrf": csrf}, cookie=token)
        assert status == 400
        assert "invalid topic: an empty topic" in page
        status, _, _ = await post(h, path, {"topic": "close", "csrf": csrf}, cookie=token)
        assert status == 303
        done = await h.done(workflow)
        output = call_pb2.CallResult.FromString(done.result).output
        assert values.from_any(output) == ["o-17", "timed out", {"ok": True}]
        # A done call offers no form.
        _, page, _ = await get(h, f"/calls/{workflow}", cookie=token)
        assert "/send" not in page

    async def scenario_run() -> None:
        async with harness(tmp_path, run) as h:
            await body(h)

    asyncio.run(scenario_run())


def test_a_failed_workflow_offers_resume_which_runs_it_on_from_its_failed_step(
    tmp_path: Path,
) -> None:
    from test_resume import Workflows

    app = Workflows()

    async def body() -> None:
        async with harness(tmp_path, app.answer) as h:
            token, csrf = await log_in(h)
            failed, plain = await h.dispatch(call("four_steps", 1), call("plain", 1))
            for dispatch_id in (failed, plain):
                await h.done(dispatch_id)
            # Offered for the failed workflow, not for a call with no journal.
            _, page, _ = await get(h, f"/calls/{failed}", cookie=token)
            assert f'action="/calls/{failed}/resume"' in page
            assert ">Resume</button>" in page
            # Its kept journal is shown: the steps it had made when it failed.
            assert "Workflow steps" in page
            assert "As of its last suspension" in page
            assert page.count('class="step ') >= 2
            _, page, _ = await get(h, f"/calls/{plain}", cookie=token)
            assert "/resume" not in page
            # A form post needs the session's token, as every action.
            path = f"/calls/{failed}/resume"
            assert (await post(h, path, {}, cookie=token))[0] == 403
            assert await h.store.list(rerun_of=failed) == []

            app.broken = False
            h.session.cookie_jar.clear()
            async with h.session.post(
                h.url + path,
                data={"csrf": csrf},
                headers={"Origin": h.url, "Cookie": f"{session.COOKIE}={token}"},
                allow_redirects=False,
            ) as answer:
                assert answer.status == 303
                location = answer.headers["Location"]
            (resumed,) = await h.store.list(rerun_of=failed)
            assert location == f"/calls/{resumed.dispatch_id}?done=resume"
            done = await h.done(resumed.dispatch_id)
            assert done.status == Status.OK.value
            assert dict(app.runs) == {1: 1, 2: 1, 3: 2, 4: 1}
            _, page, _ = await get(h, location, cookie=token)
            assert "Resumed from where it failed." in page
            assert "/resume" not in page  # it ended OK: nothing to resume
            # A call that cannot be resumed is refused with a clear page.
            status, text, _ = await post(h, f"/calls/{plain}/resume", {"csrf": csrf}, cookie=token)
            assert status == 400
            assert "kept no workflow journal" in text

    asyncio.run(body())


def test_the_call_page_shows_when_a_delayed_call_starts_and_its_policy(tmp_path: Path) -> None:
    from dispatchlet.core.call_options import set_call_options
    from dispatchlet.proto.dispatchlet.scheduler.v1 import options_pb2

    async def body(h: Harness) -> None:
        delayed = call("f")
        options = options_pb2.CallOptions(max_attempts=3)
        options.delay.FromSeconds(600)
        options.attempt_timeout.FromSeconds(45)
        options.backoff.initial.FromSeconds(2)
        options.backoff.multiplier = 3
        set_call_options(delayed, options)
        (later, plain) = await h.dispatch(delayed, call("f"))
        stored = await h.store.get(later)
        assert stored is not None
        status, page, _ = await get(h, f"/calls/{later}", key=API_KEY)
        assert status == 200
        assert "<dt>Starts at</dt>" in page
        starts = datetime.datetime.fromtimestamp(stored.ready_at, datetime.timezone.utc)
        assert starts.strftime("%Y-%m-%d %H:%M:%SZ") in page
        assert (
            "<dt>Policy</dt><dd>at most 3 attempts; 45.0s per attempt; backoff from 2.0s, "
            "times 3 each retry (the scheduler&#39;s settings for the rest)</dd>"
        ) in page
        status, page, _ = await get(h, f"/calls/{plain}", key=API_KEY)
        assert status == 200
        assert "Starts at" not in page
        assert "<dt>Policy</dt>" not in page
        assert "<dt>Ready at</dt>" in page

    scenario(tmp_path, body, running=False)


def test_the_call_page_of_a_keyed_child_links_the_call_whose_outcome_it_takes(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        first, parent = (
            NewCall("charge", "http://127.0.0.1:1", b"", 2e9, key="order-17"),
            NewCall("checkout", "http://127.0.0.1:1", b"", 2e9),
        )
        (first_id,) = await h.store.dispatch([first], now=1e9)
        (parent_id,) = await h.store.dispatch([parent], now=1e9)
        claimed = await h.store.claim(owner="t", now=1e9, limit=2, lease_seconds=60)
        (lease,) = [c.lease for c in claimed if c.call.dispatch_id == parent_id]
        keyed = NewCall("charge", "http://127.0.0.1:1", b"", 2e9, correlation_id=1, key="order-17")
        ids = await h.store.suspend(
            lease, b"", [keyed], min_results=1, max_results=1, until=1.5e9, now=1e9
        )
        assert ids is not None
        status, page, _ = await get(h, f"/calls/{ids[0]}", key=API_KEY)
        assert status == 200
        assert "<dt>Outcome of</dt>" in page
        assert f'href="/calls/{first_id}"' in page
        status, page, _ = await get(h, f"/calls/{first_id}", key=API_KEY)
        assert "Outcome of" not in page

    scenario(tmp_path, body, running=False)


def test_the_call_page_marks_inline_steps_and_links_no_child_for_them(tmp_path: Path) -> None:
    from dispatchlet import Endpoint, receive
    from dispatchlet.scheduler.http_caller import Outcome

    workflows = Endpoint(insecure=True)

    @workflows.function(inline=True)
    def reserve(sku: str) -> str:
        return f"reserved {sku}"

    @workflows.function
    def notify(sku: str) -> str:
        return f"notified {sku}"

    @workflows.function
    async def checkout(sku: str) -> list[str]:
        reserved = await reserve(sku)
        notified = await notify(sku)
        return [reserved, notified, await receive("paid")]

    def run(endpoint: str, request: Any) -> Outcome:
        return Outcome(Status.OK, workflows.run(request))

    async def body(h: Harness) -> None:
        token, _ = await log_in(h)
        (workflow,) = await h.dispatch(call("checkout", "sku-9"))
        deadline = asyncio.get_running_loop().time() + 30
        while not any(c.topic == "paid" for c in await h.store.list(parent_id=workflow)):
            assert asyncio.get_running_loop().time() < deadline, "it never waited for paid"
            await asyncio.sleep(0.02)
        _, page, _ = await get(h, f"/calls/{workflow}", cookie=token)
        items = page.split('<li class="step ')[1:]
        assert len(items) == 3, page
        # The inline step: marked, done, with its output, and no child call to link.
        assert '<span class="fn">reserve</span> <span class="kind inline"' in items[0]
        assert "reserved sku-9" in items[0]
        assert "Child:" not in items[0]
        # The call made as a child: no mark, and its child linked.
        assert "inline" not in items[1]
        assert "Child:" in items[1]
        (child,) = [c for c in await h.store.list(parent_id=workflow) if c.function == "notify"]
        assert f"/calls/{child.dispatch_id}" in items[1]

    async def scenario_run() -> None:
        async with harness(tmp_path, run) as h:
            await body(h)

    asyncio.run(scenario_run())
