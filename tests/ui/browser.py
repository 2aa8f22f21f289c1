"""Headless Debian Chromium driven by Selenium through Debian's chromedriver (never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

REQUIRE_ENV = "STREAMFIT_REQUIRE_SYSTEM_DEPS"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
)


def _missing(message: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1 makes a missing system dependency a failure)")
    pytest.skip(message)


def system_binary(names: tuple[str, ...], apt_package: str) -> str:
    """Path of the first of `names` on PATH; skip without it (fail if STREAMFIT_REQUIRE_SYSTEM_DEPS=1)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    _missing(f"needs {' or '.join(names)}: apt-get install -y {apt_package}")
    raise AssertionError("unreachable")


def browser_requirements() -> tuple[str, str]:
    """(chromium, chromedriver) paths, after checking Selenium imports; skip or fail like system_binary."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("needs the selenium package: pip install -e '.[dev]'")
    return system_binary(("chromium",), "chromium"), system_binary(("chromedriver",), "chromium-driver")


class Browser:
    """One Chromium with a fresh profile; polls page text instead of sleeping."""

    def __init__(self, base_url: str, profile_dir: Path, screenshot_dir: Path) -> None:
        chromium, chromedriver = browser_requirements()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a driver/browser
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        self.driver.set_page_load_timeout(60)
        self.base_url = base_url.rstrip("/")
        self.screenshot_dir = screenshot_dir
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        self.screenshots: list[Path] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def text(self) -> str:
        from selenium.common.exceptions import WebDriverException

        try:
            return self.driver.find_element("tag name", "body").text
        except WebDriverException:  # the page is being replaced
            return ""

    def dismiss_popups(self) -> None:
        """Dagster's first-visit 'Join the Dagster community' dialog covers the page: skip it."""
        from selenium.common.exceptions import WebDriverException

        for button in self.driver.find_elements("xpath", "//button[normalize-space()='Skip']"):
            try:
                button.click()
            except WebDriverException:
                pass

    def wait_for(self, what: str, condition: Callable[[str], bool], timeout_s: float = 30.0) -> str:
        """Poll until `condition(page text)` holds; on timeout save a screenshot and fail with the page text."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.dismiss_popups()
            text = self.text()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                shot = self.screenshot(f"FAILED-{what}")
                raise AssertionError(f"UI: timed out after {timeout_s}s waiting for {what} (see {shot}); page:\n{text}")
            time.sleep(0.25)

    def wait_for_texts(self, what: str, texts: Iterable[str], timeout_s: float = 30.0) -> str:
        wanted = list(texts)
        return self.wait_for(what, lambda page: all(t in page for t in wanted), timeout_s)

    def click_text(self, text: str) -> None:
        self.driver.find_element("xpath", f"//*[self::button or self::a][normalize-space()='{text}']").click()

    def checked_switches(self) -> int:
        return sum(1 for box in self.driver.find_elements("css selector", "input[type=checkbox]") if box.is_selected())

    def screenshot(self, name: str) -> Path:
        self.dismiss_popups()
        path = self.screenshot_dir / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.screenshots.append(path)
        return path

    def close(self) -> None:
        self.driver.quit()
