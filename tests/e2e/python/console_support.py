"""Driving the web console (`/ui/`) in headless Chromium with Selenium.

The browser and its driver are Debian's (`chromium`, `chromium-driver`; scripts/e2e.sh installs
them), given by path so Selenium Manager never runs (it would download a browser). Every page
load gets a small listener (injected over CDP, so the page's CSP does not apply to it) that
records uncaught errors, unhandled promise rejections and CSP violations; together with the
browser's console log they fail the test at the end (`Console.assert_clean`).

Waits are conditions polled by `WebDriverWait`, never fixed sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (
    JavascriptException,
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = os.environ.get("IMAGEGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMAGEGATE_CHROMEDRIVER", "/usr/bin/chromedriver")
# How long one UI step may take (a page, a view, an admin call; the simulator runs fast).
STEP_TIMEOUT_S = 20.0
# How long a generation may take from the playground's submit to the rendered image.
GENERATION_TIMEOUT_S = 60.0

ADMIN_VIEWS = ["keys", "teams", "spend", "usage", "models"]
MEMBER_VIEWS = ["playground", "me"]
ALL_VIEWS = ADMIN_VIEWS + MEMBER_VIEWS

# Records what the browser's console log may not show reliably: uncaught errors, unhandled
# rejections and CSP violations, in the page's own world, from before the first script runs.
_PROBE = """
(() => {
  const problems = [];
  Object.defineProperty(window, '__imagegateProblems', {value: problems});
  window.addEventListener('error', (e) => {
    problems.push('uncaught error: ' + (e.message || e.type) +
      (e.filename ? ' at ' + e.filename + ':' + e.lineno + ':' + e.colno : ''));
  });
  window.addEventListener('unhandledrejection', (e) => {
    const r = e.reason;
    problems.push('unhandled rejection: ' + (r && (r.stack || r.message) || String(r)));
  });
  document.addEventListener('securitypolicyviolation', (e) => {
    problems.push('CSP violation: ' + e.violatedDirective + ' blocked ' +
      (e.blockedURI || '(inline)') + ' in ' + e.sourceFile + ':' + e.lineNumber +
      (e.sample ? ' sample ' + JSON.stringify(e.sample) : ''));
  });
})();
"""


def gateway_origin(gateway_url: str) -> str:
    """`http://host:port` from a gateway URL ending in `/v1`."""
    url = gateway_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def http_get(url: str, timeout: float = STEP_TIMEOUT_S) -> tuple[int, dict[str, str], bytes]:
    """A plain GET (no key): status, headers (lower-case names) and body; errors are answers too."""
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def csp_directives(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as `{directive: [sources…]}`."""
    out: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def new_driver(width: int = 1280, height: int = 900, *, phone: bool = False) -> webdriver.Chrome:
    """Headless Chromium at a fixed size; `phone` also emulates a mobile viewport (touch,
    device scale 2, the page's `<meta name=viewport>` honoured)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise AssertionError(
                f"{path} not found: install Debian's chromium and chromium-driver "
                "(scripts/e2e.sh does when they are missing)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        "--lang=en-US",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(STEP_TIMEOUT_S)
        driver.set_script_timeout(STEP_TIMEOUT_S)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _PROBE})
        if phone:
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True},
            )
            driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    except Exception:
        driver.quit()
        raise
    return driver


@dataclass
class Console:
    """One browser on the console of the gateway at `origin` (`http://host:port`)."""

    driver: webdriver.Chrome
    origin: str
    # Everything the browser reported, in order: console log entries and probe findings.
    log: list[str] = field(default_factory=list, repr=False)
    problems: list[str] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        return self.origin + "/ui/"

    # ---------------------------------------------------------------------------------------------
    # Elements and waits.
    # ---------------------------------------------------------------------------------------------

    def wait(self, condition, message, timeout: float = STEP_TIMEOUT_S):
        """Waits for `condition(driver)` to return something truthy and returns it; on a timeout
        fails with `message` (a string or a callable making one), the current view and the
        browser's problems so far."""
        try:
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.05,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
            ).until(condition)
        except TimeoutException:
            self.collect()
            text = message() if callable(message) else message
            raise AssertionError(
                f"{text} (after {timeout:.0f}s)\n{self.describe()}"
            ) from None

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def exists(self, css: str) -> bool:
        return bool(self.find_all(css))

    def displayed(self, css: str) -> bool:
        """Whether an element matching `css` exists and is displayed."""
        return any(e.is_displayed() for e in self.find_all(css))

    def wait_visible(self, css: str, timeout: float = STEP_TIMEOUT_S) -> WebElement:
        def visible(_):
            for e in self.find_all(css):
                if e.is_displayed():
                    return e
            return None

        return self.wait(visible, f"`{css}` is not visible", timeout)

    def wait_text(self, css: str, predicate=bool, what: str = "text",
                  timeout: float = STEP_TIMEOUT_S) -> str:
        """Waits until `css` is displayed and `predicate(its text)` holds; returns the text."""
        seen: list[str] = []

        def ok(_):
            e = self.find(css)
            if not e.is_displayed():
                return None
            text = e.text.strip()
            seen[:] = [text]
            return text if predicate(text) else None

        return self.wait(ok, lambda: f"`{css}` never showed {what}; last text: {seen[-1:]!r}", timeout)

    def text(self, css: str) -> str:
        return self.find(css).text.strip()

    def fill(self, css: str, value: str) -> None:
        e = self.wait_visible(css)
        e.clear()
        if value:
            e.send_keys(value)

    def select(self, css: str, value: str) -> None:
        """Chooses the option whose value (or else visible text) is `value`, once it is there."""
        element = self.wait_visible(css)

        def option_there(_):
            values = [o.get_attribute("value") for o in Select(element).options]
            texts = [o.text.strip() for o in Select(element).options]
            return value in values or value in texts

        self.wait(
            option_there,
            lambda: f"`{css}` has no option {value!r}: "
            f"{[o.get_attribute('value') for o in Select(element).options]}",
        )
        s = Select(element)
        if value in [o.get_attribute("value") for o in s.options]:
            s.select_by_value(value)
        else:
            s.select_by_visible_text(value)

    def click(self, css_or_element) -> None:
        e = self.wait_visible(css_or_element) if isinstance(css_or_element, str) else css_or_element
        self.wait(lambda _: e.is_enabled(), "the element never became enabled")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", e)
        e.click()

    def accept_alert_if_any(self) -> bool:
        """Accepts a `confirm()` the console opened (for destructive actions), if one is open."""
        try:
            self.driver.switch_to.alert.accept()
            return True
        except NoAlertPresentException:
            return False

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    # ---------------------------------------------------------------------------------------------
    # The console's flows.
    # ---------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Loads `/ui/` and waits for the sign-in form (or the nav of a session still open)."""
        status, headers, body = http_get(self.url)
        assert status == 200, (
            f"GET {self.url} answered {status} {headers.get('content-type', '')}: {body[:300]!r}"
        )
        self.driver.get(self.url)
        self.wait(
            lambda _: self.displayed("#signin-key") or self.displayed("#nav"),
            "neither the sign-in form (#signin-key) nor the nav (#nav) appeared",
        )

    def sign_in(self, key: str) -> None:
        """Signs in with `key` and waits for the nav."""
        self.try_sign_in(key)
        self.wait(
            lambda _: self.displayed("#nav") or self._signin_error(),
            "signing in showed neither the nav (#nav) nor #signin-error",
        )
        error = self._signin_error()
        assert not error, f"signing in was refused: #signin-error {error!r}\n{self.describe()}"
        self.wait(lambda _: not self.displayed("#signin-key"), "the sign-in form stayed visible")

    def try_sign_in(self, key: str) -> None:
        """Types `key` into the sign-in form and submits it; no wait for the outcome."""
        self.wait_visible("#signin-key")
        self.fill("#signin-key", key)
        self.click("#signin-submit")

    def _signin_error(self) -> str:
        for e in self.find_all("#signin-error"):
            if e.is_displayed() and e.text.strip():
                return e.text.strip()
        return ""

    def wait_signin_error(self) -> str:
        return self.wait(lambda _: self._signin_error(), "#signin-error never showed a message")

    def sign_out(self) -> None:
        self.click("#signout")
        self.wait_visible("#signin-key")
        self.wait(lambda _: not self.displayed("#nav"), "the nav (#nav) stayed visible after #signout")

    def nav_views(self) -> list[str]:
        """The `data-view` names of the nav's visible entries."""
        return [
            e.get_attribute("data-view")
            for e in self.find_all("#nav [data-view]")
            if e.is_displayed()
        ]

    def show(self, view: str) -> WebElement:
        """Opens `view` from the nav; waits until `section#view-<view>` is the only view shown."""
        self.click(f'#nav [data-view="{view}"]')
        return self.wait_view(view)

    def wait_view(self, view: str) -> WebElement:
        def only_this(_):
            shown = [
                s.get_attribute("id")
                for s in self.find_all('section[id^="view-"]')
                if s.is_displayed()
            ]
            return shown == [f"view-{view}"]

        self.wait(
            only_this,
            lambda: f"section#view-{view} is not the only view shown: "
            f"{[s.get_attribute('id') for s in self.find_all('section[id^=view-]') if s.is_displayed()]}",
        )
        return self.find(f"section#view-{view}")

    def first_image_loaded(self, css: str = "#pg-results img") -> dict | None:
        """The first `img` under `css` once it has decoded (naturalWidth > 0): src prefix, sizes."""
        return self.js(
            """
            const img = document.querySelector(arguments[0]);
            if (!img || !img.complete || img.naturalWidth === 0) return null;
            return {src: img.currentSrc.slice(0, 40), naturalWidth: img.naturalWidth,
                    naturalHeight: img.naturalHeight, shownWidth: img.getBoundingClientRect().width};
            """,
            css,
        )

    def wait_image(self, timeout: float = GENERATION_TIMEOUT_S) -> dict:
        """Waits for a decoded image in `#pg-results`; fails at once if `#pg-error` shows."""

        def arrived(_):
            error = [e.text for e in self.find_all("#pg-error") if e.is_displayed() and e.text.strip()]
            if error:
                raise AssertionError(f"the playground showed #pg-error: {error[0]!r}\n{self.describe()}")
            return self.first_image_loaded()

        return self.wait(arrived, "no decoded image (naturalWidth > 0) in #pg-results", timeout)

    def grant_clipboard(self) -> None:
        self.driver.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": self.origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )

    def read_clipboard(self) -> str | None:
        """The clipboard's text through `navigator.clipboard.readText()`, or None if the browser
        does not allow reading it here."""
        try:
            result = self.driver.execute_async_script(
                """
                const done = arguments[arguments.length - 1];
                if (!navigator.clipboard || !navigator.clipboard.readText) { done({error: 'no API'}); return; }
                navigator.clipboard.readText().then((t) => done({text: t}), (e) => done({error: String(e)}));
                """
            )
        except JavascriptException:
            return None
        return result.get("text") if isinstance(result, dict) else None

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole page, beyond the viewport, with `full_page`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
            )
            path.write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        return path

    # ---------------------------------------------------------------------------------------------
    # What the browser reported.
    # ---------------------------------------------------------------------------------------------

    def collect(self) -> None:
        """Moves the browser's new console log entries and probe findings into `log`/`problems`."""
        try:
            entries = self.driver.get_log("browser")
        except Exception as e:  # the session may be gone after a crash
            self.problems.append(f"could not read the browser log: {e}")
            return
        for entry in entries:
            line = f"[{entry.get('level')}] {entry.get('source')}: {entry.get('message')}"
            self.log.append(line)
            if is_problem(entry, self.origin):
                self.problems.append(line)
        try:
            found = self.js(
                "const p = window.__imagegateProblems; return p ? p.splice(0, p.length) : [];"
            )
        except Exception:
            found = []
        self.problems.extend(f"[page] {p}" for p in found or [])

    def assert_clean(self) -> None:
        """Fails if the browser reported a CSP violation, a JavaScript error or a console asset
        that did not load."""
        self.collect()
        assert not self.problems, (
            "the browser reported problems:\n  " + "\n  ".join(self.problems)
            + "\n--- browser console log ---\n  " + "\n  ".join(self.log[-40:])
        )

    def describe(self) -> str:
        """The state to print on a failure: URL, visible views, errors shown, the log's tail."""
        try:
            state = self.js(
                """
                const shown = (sel) => [...document.querySelectorAll(sel)]
                  .filter((e) => e.offsetParent !== null || e.getClientRects().length)
                  .map((e) => '#' + e.id + ': ' + (e.textContent || '').trim().slice(0, 300));
                return {
                  url: location.href,
                  views: shown('section[id^="view-"]').map((s) => s.split(':')[0]),
                  errors: shown('[id$="-error"]'),
                  status: shown('#pg-status'),
                };
                """
            )
        except Exception as e:
            state = f"<no page state: {e}>"
        log = "\n  ".join(self.log[-15:]) or "<empty>"
        problems = "\n  ".join(self.problems) or "<none>"
        return f"page: {json.dumps(state)}\nbrowser problems:\n  {problems}\nbrowser log (tail):\n  {log}"


_CSP = re.compile(r"content security policy", re.I)


def is_problem(entry: dict, origin: str) -> bool:
    """Whether a console log entry is a failure: a CSP violation, a JavaScript error, or a console
    asset (`/ui/…`) that failed to load. Failed API calls (401 for a wrong key, 403 for a
    disabled one) are expected answers, not problems."""
    message = str(entry.get("message", ""))
    level = entry.get("level")
    source = entry.get("source")
    if _CSP.search(message):
        return True
    if level != "SEVERE":
        return False
    if source == "javascript" or "Uncaught" in message:
        return True
    if source == "network":
        url = message.split(" ", 1)[0]
        return url.startswith(origin + "/ui/") or url == origin + "/ui"
    return False
