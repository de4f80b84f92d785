"""Debian's Chromium (``/usr/bin/chromium``, installed by ``make setup``) driven by Playwright.

    with chromium() as browser:
        page = browser.new_page()

Its absence fails the test. Headless, no sandbox (CI runs as root), no GPU (WebGL falls back to
SwiftShader), and none of Chromium's own background requests (component updates, sync, QUIC).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; fails the test when it is not installed."""
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: run `make setup` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
