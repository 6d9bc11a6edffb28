"""A real `tunelab serve` subprocess on a free loopback port, and API keys made by `tunelab keys create`:
what the serve and monitor tests start servers with (the process handling is `apps.AppServer`'s)."""

from __future__ import annotations

from pathlib import Path

from apps import AppServer, create_key, free_port  # noqa: F401  (the tests import them from here)


class Server(AppServer):
    """A `tunelab serve` subprocess; `stop()` ends it (and the fixture does at the end)."""

    def __init__(self, args: list[str], port: int, log: Path, env: dict | None = None):
        super().__init__("serve", args, port, log, env)
