"""The dashboard in a real headless Chromium, against a real gateway process and real fake upstreams.

Debian's `chromium` and `chromium-driver` (`.ci/run` installs them when missing), driven with
selenium through /usr/bin/chromedriver: Selenium Manager is never asked to download anything.
Waits poll the page with a deadline (WebDriverWait); nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from cliproxy.web.ui import SECURITY_HEADERS
from tests.helpers import MGMT_KEY, vendor
from tests.processes import GatewayProcess, free_port

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def chromium(log_browser: bool = True) -> webdriver.Chrome:
    """A fresh headless Chromium with its own profile directory; the browser console is kept for the test."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tempfile.mkdtemp(prefix='cliproxy-chromium-')}",
    ):
        options.add_argument(flag)
    if log_browser:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


class FakeUpstreamProcess:
    """`python -m cliproxy.fake_upstream` on a free port; faults installed over its HTTP control API."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cliproxy.fake_upstream", "--port", str(self.port), "--name", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()  # "listening on ...": it is up
        assert "listening" in line, line

    def fail(self, **fault: Any) -> None:
        _post(f"http://127.0.0.1:{self.port}/_fake/faults", fault)

    def clear(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/_fake/faults", method="DELETE")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.bad = FakeUpstreamProcess("bad")
        self.good = FakeUpstreamProcess("good")
        config = {
            "remote-management": {"secret-key": MGMT_KEY},
            "auto-disable": {"failure-threshold": 2, "time-window-seconds": 60, "disable-duration-seconds": 120},
            "openai-compatibility": [
                vendor("bad", self.bad.url, ["m"], priority=1),
                vendor("good", self.good.url, ["m", "other"]),
            ],
        }
        self.gateway = GatewayProcess(tmp, config).start()
        self.base = f"http://127.0.0.1:{self.gateway.port}"

    def chat(self, model: str = "m") -> tuple[int, dict[str, str], bytes]:
        return _post(self.base + "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]})

    def stop(self) -> None:
        self.gateway.stop()
        self.bad.stop()
        self.good.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")  # an environment limit
    s = Stack(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    yield driver
    driver.quit()


def wait(driver: webdriver.Chrome, condition: Any, timeout: float = 5.0) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition())


def log_in(driver: webdriver.Chrome, base: str, key: str = MGMT_KEY) -> None:
    driver.get(base + "/ui/")
    field = wait(driver, lambda: driver.find_element(By.ID, "key"))
    field.send_keys(key)
    driver.find_element(By.ID, "login-button").click()


def row(driver: webdriver.Chrome, vendor_name: str, model: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#pairs tr[data-vendor="{vendor_name}"][data-model="{model}"]')


def state_of(driver: webdriver.Chrome, vendor_name: str, model: str) -> str:
    try:
        return row(driver, vendor_name, model).find_element(By.CSS_SELECTOR, ".state").text
    except Exception:
        return ""


def seconds_left(text: str) -> int:
    total = 0
    for part in text.split():
        unit = {"h": 3600, "m": 60, "s": 1}[part[-1]]
        total += int(part[:-1]) * unit
    return total


def severe_console_entries(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_operator_sees_a_pair_fail_and_brings_it_back(stack: Stack, browser: webdriver.Chrome):
    log_in(browser, stack.base)
    wait(browser, lambda: browser.find_element(By.ID, "dashboard").is_displayed())
    # every configured pair, grouped by its client-facing name
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#pairs tbody tr")) == 3)
    assert [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#pairs .group h3")] == ["m", "other"]
    assert state_of(browser, "bad", "m") == "enabled"
    assert "key" not in browser.current_url and MGMT_KEY not in browser.current_url
    browser.execute_script("window.__sameDocument = true")  # gone if the page reloads
    wait(browser, lambda: not browser.find_element(By.ID, "live").get_attribute("hidden"))  # the event stream is open

    stack.bad.fail(status=500, body={"error": {"message": XSS, "type": "server_error"}})
    for _ in range(2):
        status, headers, _ = stack.chat()
        assert status == 200 and headers["x-cliproxy-vendor"] == "good"
    started = time.monotonic()
    wait(browser, lambda: state_of(browser, "bad", "m") == "disabled", timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert browser.execute_script("return window.__sameDocument") is True  # no reload

    # the countdown ticks down on its own
    countdown = row(browser, "bad", "m").find_element(By.CSS_SELECTOR, ".countdown")
    first = seconds_left(wait(browser, lambda: countdown.text))
    assert 100 < first <= 120
    wait(browser, lambda: 0 < seconds_left(countdown.text) < first, timeout=3.0)
    # the disable is in the timeline
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '#events li[data-kind="disabled"]'))
    assert "bad / m" in browser.find_element(By.CSS_SELECTOR, '#events li[data-kind="disabled"]').text

    # the upstream's markup is text: shown literally, nothing ran, no element made from it
    error_text = row(browser, "bad", "m").find_element(By.CSS_SELECTOR, ".excerpt").text
    assert "<img src=x onerror=" in error_text and "<script>" in error_text
    assert browser.execute_script("return window.__xss") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#pairs img, #pairs script, #events img, #events script")

    # enable it, confirming; then the client API is answered by it again
    stack.bad.clear()
    row(browser, "bad", "m").find_element(By.CSS_SELECTOR, "button.enable").click()
    wait(browser, lambda: browser.find_element(By.ID, "confirm").is_displayed())
    assert "bad / m" in browser.find_element(By.ID, "confirm-text").text
    browser.find_element(By.ID, "confirm-ok").click()
    wait(browser, lambda: state_of(browser, "bad", "m") == "enabled")
    status, headers, _ = stack.chat()
    assert status == 200 and headers["x-cliproxy-vendor"] == "bad"
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '#events li[data-kind="enabled"]'))

    assert severe_console_entries(browser) == []  # no script errors, no CSP violations, no failed loads


def test_wrong_key_is_refused_with_a_message(stack: Stack, browser: webdriver.Chrome):
    log_in(browser, stack.base, key="not-the-key")
    wait(browser, lambda: browser.find_element(By.ID, "login-error").text)
    assert browser.find_element(By.ID, "login-error").text == "Wrong management key."
    assert not browser.find_element(By.ID, "dashboard").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0  # a wrong key is not kept


def test_page_carries_the_security_headers(stack: Stack):
    with urllib.request.urlopen(stack.base + "/ui/", timeout=10) as resp:
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers[name] == value, name


def test_phone_width_and_keyboard_only(stack: Stack, browser: webdriver.Chrome):
    """390 px wide, no mouse: log in with Enter, nothing scrolls sideways, a disable is opened,
    cancelled with Escape, opened again and confirmed with Tab and Enter."""
    browser.set_window_size(390, 844)
    browser.get(stack.base + "/ui/")
    wait(browser, lambda: browser.find_element(By.ID, "key")).send_keys(MGMT_KEY + Keys.ENTER)
    wait(browser, lambda: browser.find_element(By.ID, "dashboard").is_displayed())
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#pairs tbody tr")) == 3)
    width = browser.execute_script("return window.innerWidth")
    assert width <= 390
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scrolling
    disable = row(browser, "bad", "m").find_element(By.CSS_SELECTOR, "button.disable")
    assert disable.is_displayed() and disable.rect["x"] + disable.rect["width"] <= width

    keys = ActionChains(browser)
    browser.execute_script("arguments[0].focus()", disable)  # as if tabbed to
    keys.send_keys(Keys.ENTER).perform()
    wait(browser, lambda: browser.find_element(By.ID, "confirm").is_displayed())
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-cancel"  # the safe choice has focus
    keys.send_keys(Keys.ESCAPE).perform()
    wait(browser, lambda: not browser.find_element(By.ID, "confirm").is_displayed())
    assert state_of(browser, "bad", "m") == "enabled"  # Escape did nothing

    browser.execute_script("arguments[0].focus()", row(browser, "bad", "m").find_element(By.CSS_SELECTOR, "button.disable"))
    keys.send_keys(Keys.ENTER).perform()
    wait(browser, lambda: browser.find_element(By.ID, "confirm").is_displayed())
    keys.send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-ok"
    keys.send_keys(Keys.ENTER).perform()
    wait(browser, lambda: state_of(browser, "bad", "m") == "disabled")
    status, headers, _ = stack.chat()
    assert status == 200 and headers["x-cliproxy-vendor"] == "good"
    assert severe_console_entries(browser) == []


def test_a_rejected_config_reload_shows_a_banner(stack: Stack, browser: webdriver.Chrome):
    log_in(browser, stack.base)
    wait(browser, lambda: browser.find_element(By.ID, "dashboard").is_displayed())
    assert browser.find_element(By.ID, "banners").text == ""
    stack.gateway.config_path.write_text("port: not-a-port\n")  # the gateway keeps its config, says why
    banner = wait(browser, lambda: browser.find_element(By.ID, "banners").text, timeout=15.0)
    assert "The last config reload was rejected" in banner and "port" in banner
    status, headers, _ = stack.chat()
    assert status == 200  # still serving on the previous config
