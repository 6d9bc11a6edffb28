"""Fixtures of the monitor tests: templated intent data (two intents a model is trained on, a third it never
saw), a complete classification run of a tiny random BERT trained here, and its config."""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

import pytest
import yaml

from tiny import tiny_bert_classifier

PHRASES = {
    "card_arrival": ["my card has not arrived", "where is my new card", "card delivery is late",
                     "I am still waiting on my card", "track my card please", "the new card never came",
                     "when will my card arrive", "my card is lost in the post"],
    "transfer_pending": ["my transfer has not arrived", "why is my transfer pending", "the transfer failed",
                         "money sent to a friend is missing", "cancel my bank transfer", "the transfer fee is wrong",
                         "how long does a transfer take", "my payment to the landlord did not go through"],
    "pin_blocked": ["I forgot my pin", "my pin is blocked", "change my pin at the atm", "the pin is not working",
                    "reset the pin of my card", "wrong pin three times", "where do I see my pin", "unblock my pin"],
}
SEEN, UNSEEN = ("card_arrival", "transfer_pending"), "pin_blocked"
PREFIXES = ["", "hi, ", "hello, ", "please help: ", "urgent: ", "quick question, "]
SUFFIXES = ["", " today", " again", " please", " right now", " since monday"]


def utterances(label: str) -> list[str]:
    """Every templated way of saying one intent (8 phrases x 6 prefixes x 6 suffixes), in a fixed shuffled order."""
    out = [f"{p}{t}{s}" for t, p, s in itertools.product(PHRASES[label], PREFIXES, SUFFIXES)]
    random.Random(label).shuffle(out)
    return out


def write_csv(path: Path, rows: list[tuple[str, str]], extra: dict[str, list] | None = None) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"] + list(extra or {}))
        for i, (t, l) in enumerate(rows):
            w.writerow([t, l] + [v[i] for v in (extra or {}).values()])
    return path


def run_config(root: Path, name: str, model: Path, train: str = "train.csv", steps: int = 60) -> Path:
    cfg = {"name": name, "task": "classification", "runs_dir": str(root / "runs"),
           "data": {"train": train, "test": "test.csv", "input_columns": ["text"], "output_column": "category",
                    "max_length": 32, "val_fraction": 0.1, "dedup": {"near": False}},
           "model": {"name": str(model)}, "method": {"name": "full"},
           "train": {"lr": 5e-3, "max_steps": steps, "batch_size": 16, "eval_every": 30, "log_every": 10,
                     "precision": "fp32", "threads": 1, "patience": None, "warmup_ratio": 0.0},
           "eval": {"baselines": [], "bootstrap_samples": 200, "forgetting": False},
           # Tests use a tiny random BERT as the drift encoder (what the checks compute does not depend
           # on the encoder's quality) and small windows.
           "monitor": {"encoder": str(model), "window": 60, "step": 30, "reference_size": 200,
                       "permutations": 200, "feedback_window": 40, "min_feedback": 20}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def intents_project(tmp_path_factory) -> dict:
    """Data and a tiny BERT: train.csv/test.csv hold the two seen intents; the rest of the utterances
    (and every pin_blocked one) are left for production traffic."""
    root = tmp_path_factory.mktemp("monitor")
    pools = {label: utterances(label) for label in PHRASES}
    train = [(t, l) for l in SEEN for t in pools[l][:80]]
    test = [(t, l) for l in SEEN for t in pools[l][80:120]]
    write_csv(root / "train.csv", train)
    write_csv(root / "test.csv", test)
    fresh = {l: pools[l][120:] for l in SEEN} | {UNSEEN: pools[UNSEEN]}
    return {"root": root, "model": tiny_bert_classifier(root / "tiny-bert", num_labels=2), "fresh": fresh}


def train_champion(project: dict, name: str, **monitor) -> Path:
    """A complete classification run on the seen intents (tunelab run), with `monitor` settings on top."""
    import tunelab

    path = run_config(project["root"], name, project["model"])
    if monitor:
        cfg = yaml.safe_load(path.read_text())
        cfg["monitor"].update(monitor)
        path.write_text(yaml.safe_dump(cfg))
    return tunelab.run(path).path


@pytest.fixture(scope="session")
def champion(intents_project) -> Path:
    return train_champion(intents_project, "bank")
