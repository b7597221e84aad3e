"""A real headless Chromium for page tests, with every request off 127.0.0.1 blocked.

Uses the Debian chromium package through Playwright (``executable_path``), never a browser
that Playwright downloads. Screenshots go to ``test-artifacts/`` at the repository root, or to
the directory named by MAILBLAST_TEST_ARTIFACTS.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Error, Page, Route, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALLOWED_HOST = "127.0.0.1"
DEFAULT_ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARTIFACTS = Path(os.environ.get("MAILBLAST_TEST_ARTIFACTS", DEFAULT_ARTIFACTS))


@dataclass
class Browser:
    """A page in a fresh browser profile, with the requests it was refused and its errors."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        """Save a full-page PNG under the artifacts directory and print its path."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Yield a page in headless Chromium; fail the test if the page reached any other host or
    raised a script error (a Content-Security-Policy violation is one)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: install the Debian packages chromium, chromium-driver"
        # CI sets MAILBLAST_REQUIRE_BROWSER after installing Chromium, so there a missing browser
        # fails; elsewhere the browser tests are skipped with the reason.
        if os.environ.get("MAILBLAST_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=LAUNCH_ARGS,
        )
        page = context.new_page()
        opened = Browser(page)
        context.route("**/*", lambda route: _only_loopback(route, opened.blocked))
        page.on("pageerror", lambda error: opened.errors.append(str(error)))
        page.on("console", lambda message: _record_console_error(message, opened.errors))
        try:
            yield opened
        finally:
            context.close()
    assert not opened.blocked, f"the page tried to reach other hosts: {opened.blocked}"
    assert not opened.errors, f"the page reported errors: {opened.errors}"


def _only_loopback(route: Route, blocked: list[str]) -> None:
    url = route.request.url
    if urlsplit(url).hostname == ALLOWED_HOST:
        route.continue_()
        return
    blocked.append(url)
    with contextlib.suppress(Error):  # the page may have gone away while the request waited
        route.abort("blockedbyclient")


def _record_console_error(message: ConsoleMessage, errors: list[str]) -> None:
    # Chromium logs every HTTP error response; a page that shows a 403 to the user is not broken.
    if message.type == "error" and "the server responded with a status of" not in message.text:
        errors.append(message.text)
