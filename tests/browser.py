"""Real headless Chromium for the dashboard tests: Debian's ``chromium`` driven by its ``chromedriver``.

``chromium()`` yields a selenium WebDriver (headless, no sandbox since the tests may run as root); the
tests skip, saying why, only when the browser or its driver is not installed (``make setup`` installs
both). ``wait_for(driver, condition, what)`` is a bounded WebDriverWait that says what it waited for.
``page_errors(driver)`` lists the console's script errors and CSP refusals. ``screenshot(driver, name)``
saves a PNG under build/screenshots/ and prints where.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

__all__ = ["SCREENSHOTS", "WAIT_SECONDS", "chromium", "page_errors", "screenshot", "wait_for"]

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "build" / "screenshots"
WAIT_SECONDS = 30.0
BROWSER = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    for path, package in ((BROWSER, "chromium"), (DRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} is not installed (Debian package {package}; `make setup` installs it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the `test` extra; `make setup` installs it)"
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium of the given window size; quit on leaving."""
    missing = _missing()
    if missing is not None:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], T], what: str, timeout: float = WAIT_SECONDS) -> T:
    """``condition(driver)`` once it is truthy, within ``timeout``; fails naming ``what`` otherwise."""
    from selenium.webdriver.support.ui import WebDriverWait

    result: T = WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, f"waited for {what}")
    return result


def page_errors(driver: Any) -> list[str]:
    """Script errors and Content-Security-Policy refusals the console logged since the last call."""
    entries = driver.get_log("browser")
    return [e["message"] for e in entries
            if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]]


def screenshot(driver: Any, name: str, *, full_page: bool = False) -> Path:
    """The page (all of it with ``full_page``) as a PNG in build/screenshots/, a test artifact; prints where."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    size = driver.get_window_size()
    if full_page:
        chrome = size["height"] - driver.execute_script("return window.innerHeight")
        driver.set_window_size(size["width"], driver.execute_script("return document.body.scrollHeight") + chrome)
    try:
        driver.save_screenshot(str(path))
    finally:
        if full_page:
            driver.set_window_size(size["width"], size["height"])
    print(f"screenshot: {path}")
    return path
