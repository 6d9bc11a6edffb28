"""Debian's chromium driven by Playwright for the dashboard tests: located (installed by `make setup`), a skip
without it, a failure under CI=true."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots" / "ui"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("Debian's chromium is missing: `apt-get install -y chromium` (make setup does it as root)")
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")


class Console:
    """Console errors and uncaught exceptions of a page (a page that renders cleanly has none)."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))


def sign_in(page, url: str, key: str) -> None:
    page.goto(url + "/ui/login")
    page.fill("#api_key", key)
    page.click("#signin")
    page.wait_for_url("**/ui/runs")


def shot(page, name: str, full: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)
