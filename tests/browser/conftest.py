"""A real headless Chromium (Debian's chromium + chromium-driver), driven by Selenium.

Pages under test are opened from ``file://`` or from loopback servers; screenshots go to
``test-artifacts/screenshots`` so a person can look at what the tests saw. Without the two
Debian packages the tests skip, except under CI=true, where ``.ci/run`` installs them first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> Iterator[webdriver.Chrome]:
    """One headless browser for the session; each test navigates it where it needs."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        reason = (
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.add_argument("--allow-file-access-from-files")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def screenshot(chromium: webdriver.Chrome, request: pytest.FixtureRequest):
    """Saves what the browser shows as test-artifacts/screenshots/<test name>[-<label>].png."""

    def take(label: str = "") -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name + (f"-{label}" if label else "")
        path = SCREENSHOTS / f"{name}.png"
        chromium.save_screenshot(str(path))
        return path

    return take
