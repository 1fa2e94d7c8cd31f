"""The dashboard in real browsers: Debian's headless Chromium driven through its
WebDriver (Selenium), and Debian's headless Firefox ESR through Marionette
(``firefox_browser.py``), each against a `dispatchlet scheduler` process with an API key
and a real endpoint served by `dispatchlet serve`. Each test leaves a screenshot of what
it saw in test-artifacts/dashboard/ at the repository's root (Firefox's in its folder
``firefox``)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dispatchlet.core import values
from dispatchlet.proto.dispatch.sdk.v1 import call_pb2, dispatch_pb2
from firefox_browser import FIREFOX, Firefox
from test_workflow_processes import API_KEY, Stack, app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60.0
# The page's own script would set these if the payload ran.
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'

FUNCTIONS = """
@endpoint.function
def echo(value):
    return value


@endpoint.function
def flaky(name: str) -> str:
    # Fails its first attempt with a retryable error, then works.
    marker = LOG.parent / f"flaky-{name}"
    if not marker.exists():
        marker.touch()
        raise TimeoutError("the first attempt times out")
    return f"worked: {name}"


@endpoint.function
async def pipeline(order: str) -> list:
    charged = await double(21)
    shipped = await ship(order)
    await sleep(3600)
    return [charged, shipped]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("dashboard"))
    try:
        # Retries wait ten minutes: only "Retry now" makes one start sooner.
        running.start_scheduler("--backoff", "600", "--backoff-cap", "600")
        running.start_endpoint(app(FUNCTIONS))
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module", params=["chromium", "firefox"])
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if request.param == "firefox":
        if not Path(FIREFOX).exists():
            pytest.fail(f"{FIREFOX} is missing: apt-get install firefox-esr")
        (ARTIFACTS / "firefox").mkdir(exist_ok=True)
        firefox = Firefox(1280, 1000, log=str(ARTIFACTS / "firefox" / "gecko.log"))
        firefox.set_page_load_timeout(WAIT)
        try:
            yield firefox
        finally:
            firefox.quit()
        return
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _between_pages() -> tuple[type[Exception], ...]:
    """What a browser raises when a page is asked about while another replaces it."""
    from marionette_driver import errors as firefox
    from selenium.common import exceptions as chromium

    return (
        chromium.StaleElementReferenceException,
        chromium.NoSuchElementException,
        firefox.StaleElementException,
        firefox.NoSuchElementException,
    )


def until(what: str, condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    """``condition()``'s first true value, checked until ``timeout``; fails naming
    ``what``. A page that is being replaced (a click's navigation) is asked again."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = condition()
        except _between_pages() as exc:
            last, found = exc, None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout:g} s: {what} (last: {last!r})")


def dispatch(stack: Stack, function: str, value: Any) -> str:
    call = call_pb2.Call(function=function, endpoint=stack.url, input=values.to_any(value))
    answer = stack.rpc(
        "/dispatch.sdk.v1.DispatchService/Dispatch",
        dispatch_pb2.DispatchRequest(calls=[call]),
        dispatch_pb2.DispatchResponse,
    )
    return str(answer.dispatch_ids[0])


def shot(browser: Any, name: str, height: int | None = None) -> None:
    """A screenshot of the page, as tall as its content (up to ``height``)."""
    width = browser.get_window_size()["width"]
    for _ in range(2):  # the window's height is more than its page's: measured again
        tall = browser.execute_script("return document.documentElement.scrollHeight")
        inner = browser.execute_script("return window.innerHeight")
        outer = browser.get_window_size()["height"]
        browser.set_window_size(width, min(max(tall + outer - inner, 700), height or 2400))
    folder = ARTIFACTS / "firefox" if isinstance(browser, Firefox) else ARTIFACTS
    browser.save_screenshot(str(folder / f"{name}.png"))


def text(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.TAG_NAME, "body").text)


def log_in(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    browser.get(stack.api + "/login")
    browser.delete_all_cookies()  # a session of an earlier test ended
    browser.get(stack.api + "/")
    until("the login form", lambda: "/login" in browser.current_url)
    field = browser.find_element(By.ID, "key")
    assert field.get_attribute("type") == "password"
    field.send_keys(API_KEY)
    field.submit()
    until("the calls page", lambda: browser.find_elements(By.CSS_SELECTOR, "table.calls, .empty"))


def test_logging_in_with_the_api_key(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(stack.api + "/overview")
    until("the login form", lambda: "/login" in browser.current_url)
    shot(browser, "login", 800)
    field = browser.find_element(By.ID, "key")
    field.send_keys("not the key")
    field.submit()
    until("the refusal", lambda: "none of the scheduler's API keys" in text(browser))
    field = browser.find_element(By.ID, "key")
    field.send_keys(API_KEY)
    field.submit()
    # Back where the viewer was going, with the session's cookie (not readable by script).
    until("the overview", lambda: browser.current_url.endswith("/overview"))
    assert "Calls by state" in text(browser)
    assert "Queue now" in text(browser)
    shot(browser, "overview")
    assert browser.execute_script("return document.cookie") == ""


def test_a_failed_call_in_the_failed_filter_and_its_error(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, stack)
    failed = dispatch(stack, "fail", "permanent")
    worked = dispatch(stack, "double", 4)
    stack.wait(failed)
    stack.wait(worked)
    browser.get(stack.api + "/")
    browser.find_element(By.CSS_SELECTOR, "#status option[value=failed]").click()
    browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    until("the failed filter", lambda: "status=failed" in browser.current_url)
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.calls a.id")]
    assert failed in links
    assert worked not in links
    browser.set_window_size(1280, 1000)
    shot(browser, "calls-failed")
    browser.find_element(By.LINK_TEXT, failed).click()
    until("the call's page", lambda: browser.current_url.endswith(f"/calls/{failed}"))
    assert browser.find_element(By.CSS_SELECTOR, ".error-message").text == "card declined"
    assert "PERMANENT_ERROR" in browser.find_element(By.TAG_NAME, "h1").text
    assert (
        browser.find_element(By.CSS_SELECTOR, "pre.value[aria-label=Input]").text == '"permanent"'
    )
    browser.set_window_size(1280, 1000)
    shot(browser, "call-failed")


def test_a_workflows_steps_and_cancelling_it_from_its_page(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, stack)
    workflow = dispatch(stack, "pipeline", "order-7")

    def sleeping() -> bool:
        browser.get(f"{stack.api}/calls/{workflow}")
        return "sleeping" in text(browser)

    until("the workflow asleep on its third step", sleeping)
    steps = browser.find_elements(By.CSS_SELECTOR, "ol.timeline > li")
    assert [s.find_element(By.CSS_SELECTOR, ".fn").text for s in steps] == ["double", "ship", ""]
    assert "42" in steps[0].text
    assert "order-7" in steps[1].text
    # Each call step links to the child call that ran it.
    child = steps[0].find_element(By.CSS_SELECTOR, ".child a.id")
    assert child.get_attribute("href").startswith(f"{stack.api}/calls/")
    tree = browser.find_elements(By.CSS_SELECTOR, "ul.tree li")
    assert len(tree) == 3
    browser.set_window_size(1280, 1000)
    shot(browser, "workflow")

    browser.find_element(By.CSS_SELECTOR, ".call-actions button.danger").click()
    until("the confirmation", lambda: _alert(browser)).accept()
    until("the cancelled call", lambda: "Cancelled, with its" in text(browser))
    assert "PERMANENT_ERROR" in browser.find_element(By.TAG_NAME, "h1").text
    assert "the call was cancelled" in text(browser)
    labels = [b.text for b in browser.find_elements(By.CSS_SELECTOR, ".call-actions button")]
    assert labels == ["Re-run"], labels
    assert stack.get(workflow).done

    # Re-run: a new call of the same function and input, on its own page, linked back.
    browser.find_element(By.CSS_SELECTOR, ".call-actions button").click()
    until(
        "the re-run's page",
        lambda: "/calls/" in browser.current_url and workflow not in browser.current_url,
    )
    rerun = browser.current_url.rsplit("/", 1)[1].split("?")[0]
    assert stack.get(rerun).function == "pipeline"
    assert workflow in text(browser)


def test_retry_now_from_a_calls_page_runs_its_next_attempt(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, stack)
    # A name of its own: its first attempt fails once per name, in each browser's run.
    name = f"once-{uuid.uuid4().hex[:8]}"
    flaky = dispatch(stack, "flaky", name)

    def backing_off() -> bool:
        browser.get(f"{stack.api}/calls/{flaky}")
        labels = [b.text for b in browser.find_elements(By.CSS_SELECTOR, ".call-actions button")]
        return "Retry now" in labels

    until("the call waiting ten minutes for its retry", backing_off)
    assert "TIMEOUT" in text(browser)
    retry = [
        b
        for b in browser.find_elements(By.CSS_SELECTOR, ".call-actions button")
        if b.text == "Retry now"
    ]
    retry[0].click()
    until("the retry's word", lambda: "Its next attempt starts now." in text(browser))
    info = stack.wait(flaky)
    assert values.from_any(info.output) == f"worked: {name}"

    def shows_ok() -> bool:
        browser.get(f"{stack.api}/calls/{flaky}")
        return "OK" in browser.find_element(By.TAG_NAME, "h1").text

    until("the call done OK on its page", shows_ok)
    assert f"worked: {name}" in text(browser)


def _alert(browser: Any) -> Any:
    from marionette_driver.errors import NoAlertPresentException as NoAlertInFirefox
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return browser.switch_to.alert
    except (NoAlertPresentException, NoAlertInFirefox):
        return None


def test_an_input_and_output_with_markup_stay_text(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, stack)
    echoed = dispatch(stack, "echo", XSS)
    stack.wait(echoed)
    browser.get(f"{stack.api}/calls/{echoed}")
    shown = browser.find_elements(By.CSS_SELECTOR, "pre.value")
    # The input and the output: the JSON string, every character of it as text.
    assert [value.text for value in shown] == [json.dumps(XSS)] * 2
    assert not browser.find_elements(By.CSS_SELECTOR, "main script, main img")
    assert browser.execute_script("return window.__xss === undefined")
    shot(browser, "call-escaped")


def test_live_refresh_keyboard_and_phone_width(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    log_in(browser, stack)
    browser.set_window_size(1280, 1000)
    browser.get(stack.api + "/")
    browser.execute_script("window.__sameDocument = true")
    fresh = dispatch(stack, "double", 5)
    # The table is fetched again without reloading the page.
    until("the new call in the live table", lambda: fresh in text(browser))
    assert browser.execute_script("return window.__sameDocument === true")

    # From the top of the page, the keyboard reaches a call's link and opens it.
    browser.get(stack.api + "/")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    for _ in range(60):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        if "id" in (browser.switch_to.active_element.get_attribute("class") or ""):
            break
    focused = browser.switch_to.active_element
    assert "id" in (focused.get_attribute("class") or ""), focused.text
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    opened = focused.text
    focused.send_keys(Keys.ENTER)
    until("the call opened by keyboard", lambda: browser.current_url.endswith(f"/calls/{opened}"))

    # A phone: nothing wider than the screen, each call a card (Firefox: 500 px, its
    # narrowest window).
    browser.set_window_size(390, 844)
    browser.get(stack.api + "/")
    wide = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert wide <= 0
    display = browser.execute_script(
        "return getComputedStyle(document.querySelector('table.calls tr')).display"
    )
    assert display == "block"
    shot(browser, "calls-phone", 1800)
    browser.get(f"{stack.api}/calls/{fresh}")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    shot(browser, "call-phone", 1800)
    browser.set_window_size(1280, 1000)


def test_logging_out_ends_the_session(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, ".logout button").click()
    until("the login form", lambda: "/login" in browser.current_url)
    browser.get(stack.api + "/")
    until("the login form again", lambda: "/login" in browser.current_url)
    assert browser.find_elements(By.ID, "key")


_CHART_COUNTS = """
const counts = {};
for (const part of document.querySelectorAll('svg.bars rect[data-status]')) {
  counts[part.dataset.status] = (counts[part.dataset.status] || 0) + Number(part.dataset.count);
}
return counts;
"""


def test_the_overview_charts_calls_per_minute(browser: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, stack)
    browser.set_window_size(1280, 1000)
    browser.get(stack.api + "/overview")
    before = browser.execute_script(_CHART_COUNTS)
    calls = [dispatch(stack, "double", n) for n in range(4)]
    calls += [dispatch(stack, "fail", "permanent") for _ in range(2)]
    for dispatch_id in calls:
        stack.wait(dispatch_id)

    def counted() -> Any:
        # The overview reads the last hour again every few seconds: reload until it has.
        browser.get(stack.api + "/overview")
        counts = browser.execute_script(_CHART_COUNTS)
        ok = counts.get("OK", 0) >= before.get("OK", 0) + 4
        failed = counts.get("PERMANENT_ERROR", 0) >= before.get("PERMANENT_ERROR", 0) + 2
        return counts if ok and failed else None

    until("the chart counting the new calls", counted)
    chart = browser.find_element(By.CSS_SELECTOR, "svg.bars")
    assert chart.size["width"] > 600
    assert chart.size["height"] > 100
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.bars g.bar")
    assert 60 <= len(bars) <= 61
    drawn = browser.find_elements(By.CSS_SELECTOR, "svg.bars rect[data-status]")
    assert all(part.size["height"] > 0 for part in drawn)
    legend = [
        " ".join(item.text.split()) for item in browser.find_elements(By.CSS_SELECTOR, ".legend li")
    ]
    assert any(item.startswith("OK ") for item in legend), legend
    assert any(item.startswith("PERMANENT_ERROR ") for item in legend), legend
    # The figures as a table, for those who cannot see the chart.
    browser.find_element(By.CSS_SELECTOR, ".chart details summary").click()
    table = browser.find_element(By.CSS_SELECTOR, "table.chart-figures")
    until("the table of figures", table.is_displayed)
    shot(browser, "overview-chart")
    # A phone: the chart fits the screen.
    browser.set_window_size(390, 844)
    browser.get(stack.api + "/overview")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    assert browser.find_element(By.CSS_SELECTOR, "svg.bars").size["width"] > 250
    shot(browser, "overview-chart-phone", 2400)
    browser.set_window_size(1280, 1000)


def test_a_schedule_created_from_the_form_and_what_each_call_carries(
    browser: Any, stack: Stack
) -> None:
    from dispatchlet.proto.dispatchlet.scheduler.v1 import calls_pb2
    from selenium.webdriver.common.by import By

    # One stack for both browsers: names of their own.
    limited, typed = (f"{kind}-{uuid.uuid4().hex[:6]}" for kind in ("digest", "typed"))
    spec = calls_pb2.ScheduleSpec(
        name=limited, cron="0 9 * * 1-5", timezone="Europe/Paris", function="echo"
    )
    spec.endpoint = stack.url
    spec.options.max_attempts = 3
    spec.options.concurrency = 2
    spec.options.rate_limit.count = 5
    spec.options.rate_limit.period.FromSeconds(60)
    spec.expiration.FromSeconds(600)
    stack.rpc(
        "/dispatchlet.scheduler.v1.CallService/CreateSchedule",
        calls_pb2.CreateScheduleRequest(schedule=spec),
        calls_pb2.CreateScheduleResponse,
    )
    log_in(browser, stack)
    browser.set_window_size(1280, 1000)
    browser.get(stack.api + "/schedules")
    until("the schedule", lambda: limited in text(browser))
    row = browser.find_element(By.XPATH, f"//tr[td[normalize-space()='{limited}']]")
    assert "Each call: at most 3 attempts" in row.text
    assert "at most 2 of its function in flight; at most 5 starts per 60 s" in row.text
    assert "given 10m00s to run" in row.text
    # The form, as a viewer fills it in.
    if not browser.find_element(By.NAME, "name").is_displayed():  # the form is folded
        browser.find_element(By.CSS_SELECTOR, "details.create-schedule summary").click()
        until("the form", browser.find_element(By.NAME, "name").is_displayed)
    fields = {"name": typed, "cron": "*/30 * * * *", "function": "echo", "endpoint": stack.url}
    for name, value in fields.items():
        browser.find_element(By.NAME, name).send_keys(value)
    browser.find_element(By.NAME, "input").send_keys('{"team": "ops"}')
    browser.find_element(By.CSS_SELECTOR, "details.create-schedule button[type=submit]").click()
    until("the new schedule", lambda: "done=create" in browser.current_url)
    created = browser.find_element(By.XPATH, f"//tr[td[normalize-space()='{typed}']]")
    assert "*/30 * * * *" in created.text
    assert "active" in created.text
    assert "Each call" not in created.text  # the scheduler's defaults
    shot(browser, "schedules")
