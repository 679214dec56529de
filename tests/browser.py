"""A real headless Chromium for the web console's tests (Debian's
``chromium`` and ``chromium-driver``, installed by scripts/bootstrap), driven
through selenium.

``start_browser()`` launches it with a fresh profile; ``wait_until()`` polls
the page with a generous bound (the machine may be busy); ``Screenshots``
writes each page's picture under the test's directory, and also to
``$HAREG_CONSOLE_SCREENSHOTS`` when set (``HAREG_CONSOLE_SCREENSHOTS=docs/console``
refreshes the pictures docs/console.md shows); ``dump_dom()`` runs
``chromium --headless --dump-dom`` on a URL.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Flags that work in a container without a display, a GPU or network access
# beyond the registry under test.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
MAX_SHOT_HEIGHT = 3000  # pixels
WAIT = 60.0  # seconds: a page that has not rendered by then has failed
T = TypeVar("T")


def require_chromium() -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are needed (scripts/bootstrap installs them)")
    pytest.importorskip("selenium")


def start_browser(profile: Path, *, width: int = 1280, height: int = 900) -> Any:
    """A Chromium under chromedriver with a fresh ``--user-data-dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    return driver


def wait_until(driver: Any, predicate: Callable[[Any], T], what: str, timeout: float = WAIT) -> T:
    """``predicate(driver)``'s first truthy value; fails after ``timeout`` with
    what the page showed and what the browser logged."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(
            driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(predicate)
    except TimeoutException:
        main = driver.execute_script("return document.querySelector('main')?.innerText || ''")
        logs = driver.get_log("browser")
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; page: {main[:2000]!r}; log: {logs}"
        ) from None


def text_of(driver: Any, css: str) -> str:
    return str(driver.execute_script("return document.querySelector(arguments[0])?.innerText || ''", css))


def severe_logs(driver: Any) -> list[dict[str, Any]]:
    """Errors the page logged: script errors and failed loads (refused API
    requests a test provokes on purpose are the caller's to filter)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# Every element with text of its own, visible, whose colour against its
# background (the nearest opaque one above it) is below WCAG 2's AA ratio:
# 4.5, or 3 for large text (24px, or 18.66px bold).
_CONTRAST = """
const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
const lum = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
const parse = (s) => { const p = s.match(/rgba?\\(([^)]+)\\)/)[1].split(",").map(Number);
                       return { rgb: p.slice(0, 3), a: p.length > 3 ? p[3] : 1 }; };
const background = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = parse(getComputedStyle(e).backgroundColor);
    if (c.a > 0.5) return c.rgb;
  }
  return [255, 255, 255];
};
const bad = [];
for (const el of document.querySelectorAll("body *")) {
  if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
  const st = getComputedStyle(el);
  if (st.visibility === "hidden" || !el.getClientRects().length || el.closest("dialog:not([open])")) continue;
  const a = lum(parse(st.color).rgb), b = lum(background(el));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight, 10) >= 700;
  if (ratio < ((size >= 24 || (size >= 18.66 && bold)) ? 3 : 4.5)) {
    bad.push(`${el.tagName.toLowerCase()}.${el.className} ${JSON.stringify(el.textContent.trim().slice(0, 40))}: ${ratio.toFixed(2)}`);
  }
}
return bad;
"""


def low_contrast(driver: Any) -> list[str]:
    """The page's text whose contrast is below WCAG AA (none, for a pass)."""
    return list(driver.execute_script(_CONTRAST))


class Screenshots:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        extra = os.environ.get("HAREG_CONSOLE_SCREENSHOTS")
        self.copy_to = Path(extra) if extra else None

    def take(self, driver: Any, name: str) -> Path:
        """The whole page, beyond the window's height (at most ``MAX_SHOT_HEIGHT``)."""
        path = self.directory / f"{name}.png"
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        content = metrics.get("cssContentSize") or metrics["contentSize"]
        viewport = metrics.get("cssLayoutViewport") or metrics["layoutViewport"]
        clip = {
            "x": 0,
            "y": 0,
            "width": viewport["clientWidth"],
            "height": min(max(content["height"], viewport["clientHeight"]), MAX_SHOT_HEIGHT),
            "scale": 1,
        }
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.stat().st_size > 1000, f"the screenshot of {name} is empty"
        if self.copy_to is not None:
            self.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.copy_to / path.name)
        return path


def dump_dom(url: str, profile: Path, *, budget_ms: int = 20000, timeout: float = 120.0) -> str:
    """``chromium --headless --dump-dom URL``: the DOM once the page's scripts
    ran (``--virtual-time-budget`` lets its requests finish first)."""
    command = [
        str(CHROMIUM),
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout
