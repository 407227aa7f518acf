"""Headless Chromium for browser tests: the Debian package driven by playwright.

playwright's own browser download cannot work offline, so this launches the
system ``chromium``. Without it the test is skipped, or fails when CI=true.

    with chromium_page() as (page, errors):
        page.goto(path.as_uri())
        wait_for_plotly(page)
        assert errors == []
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

import pytest

CHROMIUM_ARGS = (
    "--no-sandbox",  # we run as root in containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)


def chromium_or_skip() -> str:
    """Path of the system chromium; skip the test without it (fail on CI)."""
    path = shutil.which("chromium")
    if path:
        return path
    reason = "chromium not found on PATH (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def chromium_page(*, width: int = 1400, height: int = 900) -> Iterator[tuple[object, list[str]]]:
    """A fresh page and the list its console errors and page errors are appended to."""
    executable = chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(BROWSER_TIMEOUT_MS)  # goto and every wait, not only wait_for_plotly
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            yield page, errors
        finally:
            browser.close()


BROWSER_TIMEOUT_MS = 300_000  # a guard against a hang: a busy machine draws slowly

PLOTS_READY_JS = """() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  return divs.length > 0 && divs.every(d => d.querySelector('svg.main-svg'));
}"""


def wait_for_plotly(page, *, timeout_ms: int = BROWSER_TIMEOUT_MS) -> int:
    """Wait until every plotly container holds a drawn svg; return the number of containers."""
    page.wait_for_function(PLOTS_READY_JS, timeout=timeout_ms)
    return page.locator(".plotly-graph-div").count()
