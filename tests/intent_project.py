"""A tiny intent-classification project on disk for tests that run tunelab as a user would (the CLI,
subprocesses): the CSVs of test_pipeline.py, a config with the given model, method and train sections."""

from __future__ import annotations

from pathlib import Path

import yaml

from test_pipeline import write_data


def intent_project(root: Path, name: str, model: Path, method: dict, train: dict) -> Path:
    """Write train.csv, test.csv and cfg.yaml (runs under `root/runs`) into `root`; return `root`."""
    write_data(root)
    cfg = {"name": name, "runs_dir": str(root / "runs"),
           "data": {"train": "train.csv", "test": "test.csv", "input_columns": ["text"], "output_column": "category",
                    "template": "Intent of: {text}", "max_length": 64, "val_fraction": 0.2, "dedup": {"near": False}},
           "model": {"name": str(model)}, "method": method, "train": train}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root
