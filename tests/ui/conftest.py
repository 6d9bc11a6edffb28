"""Fixtures of the dashboard tests: real runs trained here on tiny models (`tunelab run`), one real
`tunelab ui` subprocess per module on a free loopback port, and an API key to sign in with."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tiny import tiny_llama

INTENTS = {
    "card_arrival": ["my card has not arrived", "where is my new card", "card delivery is late",
                     "I am still waiting on my card", "track my card please", "new card never came"],
    "transfer_pending": ["my transfer has not arrived", "why is my transfer pending", "the transfer failed",
                         "money sent to a friend is missing", "cancel my bank transfer", "transfer fee is wrong"],
    "pin_blocked": ["I forgot my pin", "my pin is blocked", "change my pin at the atm", "pin not working",
                    "reset the pin of my card", "wrong pin three times"],
}
STARTUP_S = 120


def write_data(folder: Path) -> dict[str, Path]:
    """A tiny intent data set: train.csv (with its own validation carved out) and test.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(t, label) for label, texts in INTENTS.items() for t in texts]
    files = {"train": folder / "train.csv", "test": folder / "test.csv"}
    for split, items in (("train", [(f"{t} ({i})", lab) for i, (t, lab) in enumerate(rows * 2)]),
                         ("test", [(f"question {i}: {t.upper()} today?", lab) for i, (t, lab) in enumerate(rows[::2])])):
        with files[split].open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            w.writerows(items)
    return files


def run_config(name: str, runs_dir: Path, data: dict[str, Path], model: Path, **train) -> dict:
    """A `tunelab run` config for the tiny model: LoRA, a few steps, every step logged."""
    return {"name": name, "task": "sft", "runs_dir": str(runs_dir),
            "data": {"train": str(data["train"]), "test": str(data["test"]), "input_columns": ["text"],
                     "output_column": "category", "template": "Intent of: {text}", "max_length": 64,
                     "val_fraction": 0.2, "dedup": {"near": False}},
            "model": {"name": str(model)},
            "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            "train": {"lr": 5e-3, "max_steps": 6, "batch_size": 4, "eval_every": 3, "log_every": 1,
                      "precision": "fp32", "threads": 1, "patience": None, **train},
            "eval": {"baseline_per_class": 2, "few_shot_k": 2, "bootstrap_samples": 100, "forgetting": False}}


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> dict:
    """Two complete runs (different learning rate and rank) in one runs folder, made by `tunelab run`."""
    import tunelab
    from tunelab.config import config_from_dict

    root = tmp_path_factory.mktemp("dashboard")
    data = write_data(root / "data")
    model = tiny_llama(root / "tiny-llama")
    runs = root / "runs"
    made = {}
    for name, extra in (("intents-a", {}), ("intents-b", {"lr": 1e-3})):
        raw = run_config(name, runs, data, model, **extra)
        if name == "intents-b":
            raw["method"]["r"] = 8
        made[name] = tunelab.run(config_from_dict(raw)).path
    return {"root": root, "runs": runs, "data": data, "model": model, "made": made}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(keys_file: Path, name: str = "tests") -> str:
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "keys", "create", name, "--keys-file", str(keys_file)],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


class Dashboard:
    """A `tunelab ui` subprocess on a free loopback port (`stop()` ends it; the fixture does)."""

    def __init__(self, runs: Path, keys_file: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url, self.log, self.runs = f"http://127.0.0.1:{self.port}", log, runs
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "ui", str(runs), "--port", str(self.port),
                                      "--keys-file", str(keys_file), *extra],
                                     stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "TUNELAB_PROGRESS": "0"})
        deadline = time.time() + STARTUP_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tunelab ui exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"tunelab ui not ready in {STARTUP_S}s:\n{log.read_text()}")

    def session(self, key: str) -> httpx.Client:
        """An HTTP client signed in with `key` (the sign-in form, its CSRF cookie and field)."""
        c = httpx.Client(base_url=self.url, timeout=60)
        form = c.get("/ui/login")
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        r = c.post("/ui/login", data={"api_key": key, "csrf_token": token})
        assert r.status_code == 303, r.text
        return c

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def dashboard(lab, tmp_path_factory):
    """One dashboard per test module over a copy of the session's runs (modules never see each other's jobs)."""
    root = tmp_path_factory.mktemp("ui")
    runs = root / "runs"
    shutil.copytree(lab["runs"], runs)
    keys_file = root / "keys.json"
    key = create_key(keys_file)
    dash = Dashboard(runs, keys_file, root / "ui.log")
    dash.key, dash.lab, dash.keys_file = key, lab, keys_file
    try:
        yield dash
    finally:
        dash.stop()
