"""The web app as a real subprocess for tests (`tunelab serve` or `tunelab ui` on a free loopback port), API keys,
and Debian's chromium for the browser tests (located, a skip without it, a failure under CI=true)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

STARTUP_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(keys_file: Path, name: str = "tests", scope: str = "api") -> str:
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "keys", "create", name, "--scope", scope,
                          "--keys-file", str(keys_file)], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


class AppServer:
    """`tunelab VERB ARGS --port PORT` as a subprocess; `wait_ready()` polls /health, `stop()` ends it."""

    def __init__(self, verb: str, args: list[str], port: int, log: Path, env: dict | None = None):
        self.url, self.log, self.port = f"http://127.0.0.1:{port}", log, port
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", verb, *args, "--port", str(port)],
                                     stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "TUNELAB_PROGRESS": "0", **(env or {})})

    def wait_ready(self) -> None:
        deadline = time.time() + STARTUP_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"server not ready in {STARTUP_S}s:\n{self.log.read_text()}")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def chromium() -> str:
    """Debian's chromium (installed by `make setup`); a skip without it, a failure under CI=true."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("Debian's chromium is missing: `apt-get install -y chromium` (make setup does it as root)")
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
