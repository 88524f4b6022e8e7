"""A real Chromium driven by Playwright against `escrow serve`, for the browser tests.

The browser is Debian's ``chromium`` (Playwright's own download can't reach the network here): its path comes from
``ESCROW_CHROMIUM`` or the ``chromium`` command. Where neither is present the tests are skipped with the reason;
``.ci/run`` installs it, so they always run there.
"""

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}  # a common phone's CSS viewport


def chromium_path() -> str | None:
    return os.environ.get("ESCROW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (apt-get install chromium, or set ESCROW_CHROMIUM); .ci/run installs it",
)


@asynccontextmanager
async def phone_browser(
    base_url: str, *, lang: str = "zh-CN", viewport: dict[str, int] | None = None
) -> AsyncIterator[Any]:
    """A phone-sized page (or ``viewport``: a desk's screen) in a fresh browser context (its own cookies), Chinese
    and Shanghai time by default."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = await browser.new_context(
                base_url=base_url,
                viewport=viewport or PHONE,
                device_scale_factor=2 if viewport is None else 1,
                is_mobile=viewport is None,
                has_touch=viewport is None,
                locale=lang,
                timezone_id="Asia/Shanghai",
            )
            page = await context.new_page()
            yield page
            await context.close()
        finally:
            await browser.close()


async def screenshot(page: Any, name: str) -> None:
    """A screenshot of the page for the docs (docs/screenshots/NAME.png)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
