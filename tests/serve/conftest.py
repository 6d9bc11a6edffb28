"""Fixtures of the serve tests: real complete runs trained here on tiny models, one real `tunelab serve`
subprocess on a free loopback port shared by every module of this folder, and an API key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from servers import Server, create_key, free_port  # noqa: F401  (the serve tests import them from here)
from tiny import INTENTS, tiny_bert_classifier, tiny_llama


def write_data(folder: Path) -> None:
    import csv

    rows = [(t, label) for label, texts in INTENTS.items() for t in texts]
    for name, items in (("train.csv", [(f"{t} ({i})", l) for i, (t, l) in enumerate(rows)]),
                        ("test.csv", [(f"question {i}: {t.upper()} today?", l) for i, (t, l) in enumerate(rows[::2])])):
        with (folder / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            w.writerows(items)


def run_config(root: Path, name: str, model: Path, task: str = "sft", method: str = "lora") -> Path:
    cfg = {"name": name, "task": task, "runs_dir": str(root / "runs"),
           "data": {"train": "train.csv", "test": "test.csv", "input_columns": ["text"], "output_column": "category",
                    "template": "Intent of: {text}", "system": "You label banking questions.", "max_length": 64,
                    "val_fraction": 0.2, "dedup": {"near": False}},
           "model": {"name": str(model)},
           "method": {"name": method, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]} if method == "lora"
           else {"name": method},
           "train": {"lr": 5e-3, "max_steps": 2, "batch_size": 4, "eval_every": 2, "log_every": 1,
                     "precision": "fp32", "threads": 1, "patience": None},
           "eval": {"baseline_per_class": 2, "few_shot_k": 2, "bootstrap_samples": 100, "forgetting": False}}
    if task == "classification":
        cfg["data"].pop("system")
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def served_runs(tmp_path_factory) -> dict[str, Path]:
    """Complete runs made by `tunelab run`: a label-set sft LoRA run and an encoder classification run."""
    import tunelab

    root = tmp_path_factory.mktemp("serve")
    write_data(root)
    llama, bert = tiny_llama(root / "tiny-llama"), tiny_bert_classifier(root / "tiny-bert")
    intents = tunelab.run(run_config(root, "intents", llama)).path
    encoder = tunelab.run(run_config(root, "encoder", bert, task="classification", method="full")).path
    return {"intents": intents, "encoder": encoder, "root": root}


@pytest.fixture(scope="session")
def keys(served_runs) -> dict:
    keys_file = served_runs["root"] / "keys.json"
    return {"file": keys_file, "api": create_key(keys_file), "metrics": create_key(keys_file, "prom", "metrics")}


@pytest.fixture(scope="session")
def server(served_runs, keys):
    """One server for the whole folder: both runs, the base model, prompt logging on, small bounds for the tests."""
    root = served_runs["root"]
    args = [str(served_runs["intents"]), str(served_runs["encoder"]), "--base", "--log-prompts",
            "--keys-file", str(keys["file"]), "-o", "max_tokens_limit=64", "-o", "max_body_bytes=100000",
            "-o", "max_prompt_tokens=200", "-o", f"request_log={root / 'requests.jsonl'}"]
    srv = Server(args, free_port(), root / "server.log")
    try:
        srv.wait_ready()
        srv.request_log = root / "requests.jsonl"
        srv.key = keys["api"]
        yield srv
    finally:
        srv.stop()
