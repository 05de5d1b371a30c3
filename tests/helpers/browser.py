"""Headless Chromium from Debian's packages, driven by Selenium through Debian's chromedriver.

Never a downloaded browser or driver: ``CHROMIUM`` and ``CHROMEDRIVER`` are the paths
the ``chromium`` and ``chromium-driver`` packages install (``.ci/run`` installs them).
Each browser gets a fresh profile in a temporary directory and is quit, with its
driver, on every exit path. Selenium blocks, so every call goes through a thread
(``asyncio.to_thread``): the executor under test serves its pages from the same event
loop as the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

CHROMIUM: Final = Path(os.environ.get("CBEXEC_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER: Final = Path(os.environ.get("CBEXEC_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--window-size=1360,900",
)
T = TypeVar("T")


def missing() -> str | None:
    """Why no browser test can run here, or None when one can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: install Debian's {package} package (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


class Browser:
    """One Chromium window; every method runs Selenium in a thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call)

    async def open(self, url: str) -> None:
        await self._run(lambda: self.driver.get(url))

    async def script(self, source: str, *args: object) -> Any:
        return await self._run(lambda: self.driver.execute_script(source, *args))

    async def text(self, css: str) -> str:
        """The text of the first element matching ``css`` (read again if the page re-rendered it)."""
        return await self.wait_for(css)

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        await self._run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def type(self, css: str, text: str) -> None:
        from selenium.webdriver.common.by import By

        await self._run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).send_keys(text))

    async def wait_for(
        self, css: str, *, containing: str = "", lacking: str = "", timeout_s: float = 15.0
    ) -> str:
        """Wait until an element matching ``css`` shows; its text.

        Its text must hold ``containing`` (and not ``lacking``).
        """
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def found(driver: Any) -> str | bool:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                text = str(element.text)
                if containing in text and not (lacking and lacking in text):
                    return text or True
            return False

        result = await self._run(
            # The live pages re-render: an element found may be replaced before its text is
            # read; the next poll finds its successor.
            lambda: WebDriverWait(
                self.driver,
                timeout_s,
                poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(found)
        )
        return result if isinstance(result, str) else ""

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(lambda: self.driver.save_screenshot(str(path)))

    @property
    def url(self) -> str:
        return str(self.driver.current_url)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium with a fresh profile; quit (with its driver) on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cbexec-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    try:
        driver = await asyncio.to_thread(
            webdriver.Chrome, service=Service(str(CHROMEDRIVER)), options=options
        )
        try:
            yield Browser(driver)
        finally:
            await asyncio.to_thread(driver.quit)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
