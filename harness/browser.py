"""The Prefect UI as a person sees it: Debian's Chromium, driven by Playwright, headless.

Playwright downloads no browser here: it drives the system's ``chromium``
(``make test`` and ``make screenshots`` install Debian's package). The UI signs in
with the API's basic-auth string, as its sign-in page stores it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sandbox.screenshots import browser_path, signed_in_page

VIEWPORT = {"width": 1600, "height": 1000}


@contextmanager
def ui_page(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A signed-in page of the Prefect UI of PREFECT_API_URL's server; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path(), headless=True, args=["--no-sandbox"])
        try:
            yield signed_in_page(browser, viewport or VIEWPORT)
        finally:
            browser.close()


def ui_url() -> str:
    return os.environ["PREFECT_API_URL"].removesuffix("/api")


def in_first_viewport(page: Any, text: str, timeout_ms: int = 30_000) -> bool:
    """Whether TEXT is shown without scrolling: visible, and its box inside the viewport."""
    found = page.get_by_text(text, exact=False).first
    found.wait_for(state="visible", timeout=timeout_ms)
    box = found.bounding_box()
    size = page.viewport_size
    return bool(box and size and box["y"] >= 0 and box["y"] + box["height"] <= size["height"]
                and box["x"] >= 0 and box["x"] < size["width"])
