"""Fixtures of the dashboard tests: real runs trained here on tiny models (`tunelab run`), one real
`tunelab ui` subprocess per module on a free loopback port, an API key to sign in with, and a signed-in
page of Debian's chromium (Playwright) per browser module."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from browser import chromium_page, sign_in
from tiny import INTENTS, tiny_llama
from uiserver import running


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
    """Two complete runs (different learning rate and rank) in one runs folder, made by `tunelab run`, and a
    finished tuning study beside them (`tunelab tune`)."""
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
    study = tune_study(runs, data, model)
    return {"root": root, "runs": runs, "data": data, "model": model, "made": made, "study": study}


def tune_study(runs: Path, data: dict[str, Path], model: Path) -> Path:
    """A finished `tunelab tune` study of two trials (two learning rates) in the runs folder."""
    from tunelab.config import config_from_dict
    from tunelab.tune import stage

    raw = run_config("intents", runs, data, model, max_steps=4, eval_every=2)
    raw["tune"] = {"n_trials": 2, "startup_trials": 2, "study_name": "intents-study", "eval_examples": 8,
                   "space": {"train.lr": [5e-3, 1e-3]}}
    return stage.run(config_from_dict(raw)).path


@pytest.fixture(scope="module")
def dashboard(lab, tmp_path_factory):
    """One dashboard per test module over a copy of the session's runs (modules never see each other's jobs)."""
    root = tmp_path_factory.mktemp("ui")
    runs = root / "runs"
    shutil.copytree(lab["runs"], runs)
    with running(runs, root) as dash:
        dash.lab = lab
        yield dash


@pytest.fixture(scope="module")
def page(dashboard):
    """A signed-in Chromium page on the module's dashboard; `page.console.errors` collects console errors."""
    with chromium_page() as pg:
        sign_in(pg, dashboard.url, dashboard.key)
        yield pg
