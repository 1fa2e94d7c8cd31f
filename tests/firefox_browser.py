"""Firefox (Debian's firefox-esr) driven through its own Marionette protocol, behind the
few Selenium WebDriver calls the dashboard's browser tests make, so that the same tests
run in Chromium (Selenium and chromedriver) and in Firefox. geckodriver, Selenium's way to
Firefox, is not packaged by Debian; Marionette is the protocol geckodriver itself speaks,
and Mozilla's ``marionette_driver`` its client."""

from __future__ import annotations

import base64
import socket
from typing import Any

FIREFOX = "/usr/bin/firefox-esr"
# Scripts run in the page's own context (no sandbox): they see what its scripts set.
_PAGE = {"sandbox": None, "new_sandbox": False}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Element:
    """A page element, as Selenium's ``WebElement`` is used by the tests."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    @property
    def text(self) -> str:
        return str(self.wrapped.text)

    @property
    def size(self) -> dict[str, float]:
        rect = self.wrapped.rect
        return {"width": rect["width"], "height": rect["height"]}

    @property
    def tag_name(self) -> str:
        return str(self.wrapped.tag_name)

    def get_attribute(self, name: str) -> Any:
        # As Selenium's: the property when the element has one (a link's resolved href).
        found = self.wrapped.get_property(name)
        return self.wrapped.get_attribute(name) if found is None else found

    def is_displayed(self) -> bool:
        return bool(self.wrapped.is_displayed())

    def click(self) -> None:
        self.wrapped.click()

    def send_keys(self, *keys: str) -> None:
        self.wrapped.send_keys(*keys)

    def submit(self) -> None:
        self.wrapped.marionette.execute_script(
            "arguments[0].form.requestSubmit()", script_args=[self.wrapped], **_PAGE
        )

    def find_element(self, by: str, target: str) -> Element:
        return Element(self.wrapped.find_element(by, target))

    def find_elements(self, by: str, target: str) -> list[Element]:
        return [Element(found) for found in self.wrapped.find_elements(by, target)]


class _SwitchTo:
    def __init__(self, browser: Firefox) -> None:
        self._browser = browser

    @property
    def active_element(self) -> Element:
        return Element(self._browser.client.get_active_element())

    @property
    def alert(self) -> Any:
        from marionette_driver.marionette import Alert

        alert = Alert(self._browser.client)
        alert.text  # noqa: B018 - raises NoAlertPresentException when there is none
        return alert


class Firefox:
    """A headless Firefox, as Selenium's ``WebDriver`` is used by the tests."""

    def __init__(self, width: int, height: int, log: str) -> None:
        """``log``: the file Firefox's own output goes to."""
        from marionette_driver.marionette import Marionette

        self.client = Marionette(
            bin=FIREFOX, headless=True, port=_free_port(), startup_timeout=120, gecko_log=log
        )
        self.client.start_session()
        self.switch_to = _SwitchTo(self)
        self.set_window_size(width, height)

    def get(self, url: str) -> None:
        self.client.navigate(url)

    @property
    def current_url(self) -> str:
        return str(self.client.get_url())

    def delete_all_cookies(self) -> None:
        self.client.delete_all_cookies()

    def execute_script(self, script: str, *args: Any) -> Any:
        return self.client.execute_script(script, script_args=list(args), **_PAGE)

    def find_element(self, by: str, target: str) -> Element:
        return Element(self.client.find_element(by, target))

    def find_elements(self, by: str, target: str) -> list[Element]:
        return [Element(found) for found in self.client.find_elements(by, target)]

    def get_window_size(self) -> dict[str, int]:
        rect = self.client.window_rect
        return {"width": rect["width"], "height": rect["height"]}

    def set_window_size(self, width: int, height: int) -> None:
        # Firefox keeps its window at least 500 CSS pixels wide: a phone's 390 is 500 here.
        self.client.set_window_rect(width=width, height=height)

    def save_screenshot(self, path: str) -> None:
        with open(path, "wb") as image:
            image.write(base64.b64decode(self.client.screenshot(full=False)))

    def set_page_load_timeout(self, seconds: float) -> None:
        self.client.timeout.page_load = seconds

    def quit(self) -> None:
        instance = self.client.instance
        self.client.cleanup()
        if instance is not None:
            # Now, not from its finalizer at the interpreter's exit (where it fails).
            instance.profile.cleanup()
