"""Helpers of the dashboard's browser tests (Debian's chromium driven by Playwright; see apps.chromium)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from apps import chromium

# TUNELAB_SCREENSHOTS=DIR sends the browser tests' screenshots of every page there (for a closing note).
SHOTS = Path(os.environ.get("TUNELAB_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "build" / "screenshots" / "ui")


class Console:
    """Console errors and uncaught exceptions of a page (a page that renders cleanly has none)."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))


@contextmanager
def chromium_page():
    """A 1280x900 page of headless Debian chromium; `page.console.errors` collects its console errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            # Validate waits for a `tunelab validate` child process (it imports torch and the tokenizer): on a
            # loaded 2-core machine that took over Playwright's default 30 s (load 26, measured).
            pg.set_default_timeout(120_000)
            pg.console = Console(pg)
            yield pg
        finally:
            browser.close()


def sign_in(page, url: str, key: str) -> None:
    page.goto(url + "/ui/login")
    page.fill("#api_key", key)
    page.click("#signin")
    page.wait_for_url("**/ui/runs")


def shot(page, name: str, full: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)
