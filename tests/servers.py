"""A real `tunelab serve` subprocess on a free loopback port, and API keys made by `tunelab keys create`:
what the serve and monitor tests start servers with."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(keys_file: Path, name: str = "tests", scope: str = "api") -> str:
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "keys", "create", name, "--scope", scope,
                          "--keys-file", str(keys_file)], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


class Server:
    """A `tunelab serve` subprocess; `stop()` ends it (and the fixture does at the end)."""

    def __init__(self, args: list[str], port: int, log: Path, env: dict | None = None):
        self.url, self.log = f"http://127.0.0.1:{port}", log
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", *args, "--port", str(port)],
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
        raise AssertionError(f"server not ready in {STARTUP_S}s:\n{self.log.read_text()}")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
