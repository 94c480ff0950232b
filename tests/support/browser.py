"""Headless Chromium driven through Selenium, for the console's browser test.

Debian's `chromium` and its `chromium-driver` (scripts/install-deps installs both), driven by the `selenium` of the
test extra: nothing downloads a browser build. Where CI=true, a missing browser, driver or selenium fails the test
instead of skipping it (`support.integration.missing`).

The browser's own console log is read after each page: any entry about the Content Security Policy (a script, a
style or a load the policy refused) fails the test, so the policy is checked by the browser that enforces it. The
performance log gives each response as the browser received it, so the headers of every page it opened can be
checked too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from support.integration import missing

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # the test extra is not installed: `missing` says so when a test asks for the browser
    webdriver = None

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 900)
# What Chromium's console says when the page's policy refused something.
CSP_WORDS = ("Content Security Policy", "Refused to")
LOAD_SECONDS = 15


def chromium_options() -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # Chromium's sandbox refuses to run as root, and the integration tests run as root
        "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",  # no request anywhere but to the pages the test opens
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return options


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium through its chromedriver, quit at the end (its own processes only), on failure too."""
    if webdriver is None:
        missing("selenium is not installed (scripts/install-deps installs the test extra)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            missing(f"{path} is missing (apt-get install {package}; scripts/install-deps installs it)")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=chromium_options())
    try:
        yield driver
    finally:
        driver.quit()


@dataclass(frozen=True)
class Answer:
    """A response the browser received: its address, status and headers (names in lower case)."""

    url: str
    status: int
    headers: dict[str, str]
    kind: str  # Document, Stylesheet ...


def is_gone(element: Any) -> bool:
    """Whether `element` no longer belongs to the page shown. Chromium answers a question about a node of the page
    being replaced either as stale or, in a short window of the swap, with an inspector error saying the node does
    not belong to the document; both mean the old page is gone."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error.msg):
            return True
        raise
    return False


@dataclass
class Browser:
    """A driver on one site: opens its paths, reads what its pages say, saves screenshots, and fails on any
    policy violation the browser reported."""

    driver: Any
    base: str
    shots: Path
    answers: list[Answer] = field(default_factory=list)
    console: list[dict[str, Any]] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.navigate(lambda: self.driver.get(self.base + path))

    def navigate(self, action: Callable[[], Any]) -> None:
        """Run `action` (a get, a click, a submit), wait for the page it leads to and for that page's response in
        the performance log (one a navigation: a redirect's answer comes with the request it leads to), then
        check the logs."""
        documents = len(self.documents())
        page = self.driver.find_element(By.TAG_NAME, "html") if self.driver.current_url.startswith("http") else None
        action()
        wait = WebDriverWait(self.driver, LOAD_SECONDS, poll_frequency=0.05)
        if page is not None:
            wait.until(lambda driver: is_gone(page))
        wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")
        deadline = time.monotonic() + LOAD_SECONDS
        while True:
            self.check()
            if len(self.documents()) > documents:
                return
            assert time.monotonic() < deadline, f"no response was logged for {self.path()}"
            time.sleep(0.05)

    def path(self) -> str:
        """The current page's path and query, as the browser's address bar has it."""
        parts = urlsplit(self.driver.current_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def check(self) -> None:
        """Read the browser's logs so far; fail on any entry about the Content Security Policy."""
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        refused = [e for e in entries if any(word in e.get("message", "") for word in CSP_WORDS)]
        assert not refused, f"the browser reported a policy violation on {self.path()}: {refused}"
        self.answers.extend(responses(self.driver.get_log("performance")))

    def documents(self, path_prefix: str = "") -> list[Answer]:
        """The pages (not style sheets) the browser received, whose path starts with `path_prefix`."""
        return [a for a in self.answers if a.kind == "Document" and urlsplit(a.url).path.startswith(path_prefix)]

    def last_document(self) -> Answer:
        """The response of the page the browser shows."""
        return self.documents()[-1]

    def text(self, selector: str = "main") -> str:
        return self.driver.find_element(By.CSS_SELECTOR, selector).text

    def rows(self, selector: str = "table") -> list[list[str]]:
        """The cells of each body row of the first table matching `selector`, as the browser renders them (read
        through the driver in one call: the page itself runs no script)."""
        return self.driver.execute_script(
            "return Array.from(document.querySelector(arguments[0]).querySelectorAll('tbody tr'),"
            " row => Array.from(row.querySelectorAll('td'), cell => cell.innerText.trim()))",
            selector,
        )

    def links(self, selector: str = "main a") -> dict[str, str]:
        """Link text -> path and query of the links matching `selector`."""
        found = {}
        for link in self.driver.find_elements(By.CSS_SELECTOR, selector):
            parts = urlsplit(link.get_attribute("href"))
            found[link.text] = parts.path + (f"?{parts.query}" if parts.query else "")
        return found

    def click(self, text: str) -> None:
        """Follow the link whose text is `text`."""
        link = self.driver.find_element(By.LINK_TEXT, text)
        self.navigate(link.click)

    def fill(self, form: str, values: dict[str, str], submit: str = "button[type=submit]") -> None:
        """Type `values` into the named inputs of the form matching `form` and submit it with its button."""
        element = self.driver.find_element(By.CSS_SELECTOR, form)
        for name, value in values.items():
            box = element.find_element(By.NAME, name)
            box.clear()
            box.send_keys(value)
        self.navigate(element.find_element(By.CSS_SELECTOR, submit).click)

    def inline_scripts(self) -> int:
        """How many script elements, event handler attributes or javascript: links the page holds."""
        html = self.driver.page_source.lower()
        return (
            len(self.driver.find_elements(By.CSS_SELECTOR, "script"))
            + len(self.driver.find_elements(By.XPATH, "//*[@*[starts-with(name(), 'on')]]"))
            + html.count("javascript:")
        )

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot of {self.path()}"
        return path


def responses(performance: list[dict[str, Any]]) -> list[Answer]:
    """The responses in Chromium's performance log (Network.responseReceived), in order."""
    found = []
    for entry in performance:
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.responseReceived":
            continue
        params = message["params"]
        response = params["response"]
        found.append(
            Answer(
                url=response["url"],
                status=int(response["status"]),
                headers={str(k).lower(): str(v) for k, v in response.get("headers", {}).items()},
                kind=params.get("type", ""),
            )
        )
    return found


def reports_violations(driver: Any) -> bool:
    """Whether this browser's console log reports a refused inline script: the check above has teeth here."""
    driver.get(
        "data:text/html,<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
        "<script>document.title='ran'</script>"
    )
    entries = driver.get_log("browser")
    driver.get_log("performance")
    return driver.title != "ran" and any(any(word in e.get("message", "") for word in CSP_WORDS) for e in entries)
