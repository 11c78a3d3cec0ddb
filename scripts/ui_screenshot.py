"""Regenerate docs/dashboard.png, the README's picture of the dashboard with a disabled pair.

Starts two fake upstreams and a real gateway (subprocesses), fails one upstream until its pair is
auto-disabled, sends some traffic for the sparklines, logs in to /ui/ in headless Chromium (Debian's
`chromium` and `chromium-driver`) and saves the page. Run from the repository root:

    .venv/bin/python scripts/ui_screenshot.py [--out docs/dashboard.png] [--width 1280]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.test_dashboard_browser import Stack, chromium, log_in, state_of, wait  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/dashboard.png")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        driver = chromium(log_browser=False)
        try:
            for _ in range(6):
                stack.chat()
                stack.chat("other")
            stack.bad.fail(status=503, body={"error": {"message": "upstream overloaded, try later", "type": "server_error"}})
            for _ in range(2):
                stack.chat()
            driver.set_window_size(args.width, 900)
            log_in(driver, stack.base)
            wait(driver, lambda: state_of(driver, "bad", "m") == "disabled")
            wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '#events li[data-kind="disabled"]'))
            wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#pairs .spark rect"))
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(args.width, min(max(height + 40, 600), 1600))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
            print(f"wrote {args.out}")
        finally:
            driver.quit()
            stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
