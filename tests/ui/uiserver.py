"""`tunelab ui` as a real subprocess for the dashboard tests (and a client signed in to it)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from apps import AppServer, create_key, free_port


class Dashboard(AppServer):
    """A `tunelab ui RUNS` subprocess on a free loopback port, ready (`stop()` ends it; the fixture does)."""

    def __init__(self, runs: Path, keys_file: Path, log: Path, *extra: str):
        super().__init__("ui", [str(runs), "--keys-file", str(keys_file), *extra], free_port(), log)
        self.runs = runs
        self.wait_ready()

    def session(self, key: str) -> httpx.Client:
        """An HTTP client signed in with `key` (the sign-in form, its CSRF cookie and field)."""
        c = httpx.Client(base_url=self.url, timeout=60)
        form = c.get("/ui/login")
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        r = c.post("/ui/login", data={"api_key": key, "csrf_token": token})
        assert r.status_code == 303, r.text
        return c


@contextmanager
def running(runs: Path, root: Path, *extra: str) -> Iterator[Dashboard]:
    """A `tunelab ui RUNS` subprocess with a new API key (`.key`, `.keys_file`, kept in `root`), stopped on exit."""
    keys_file = root / "keys.json"
    key = create_key(keys_file)
    dash = Dashboard(runs, keys_file, root / "ui.log", *extra)
    dash.key, dash.keys_file = key, keys_file
    try:
        yield dash
    finally:
        dash.stop()
