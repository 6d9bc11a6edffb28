"""Every shipped example config validates against the schema and runs end to end (`tunelab run`) at tiny scale.

Tiny scale = the example's own YAML with the model swapped for a tiny random one from `tiny.py`, a few
rows of its own data (copied, so prepare does not de-duplicate 10,000 rows), two optimizer steps and
a handful of test examples. What is checked is the plumbing of each task/method/data combination the
examples promise, down to the run folder a user would open.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiny import tiny_bert_classifier, tiny_llama
from tunelab.cli import app
from tunelab.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ACCELERATE = EXAMPLES / "accelerate"   # accelerate launch configs, tested in test_distributed.py
CONFIGS = sorted(p for p in EXAMPLES.rglob("*.yaml") if ACCELERATE not in p.parents)
CLASSES = 4  # Banking77 intents kept in the tiny copies


def _name(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def test_the_promised_examples_exist():
    names = {_name(p) for p in CONFIGS}
    assert {"banking77/minilm_head.yaml", "banking77/minilm_full.yaml", "banking77/dora.yaml",
            "banking77/adapter.yaml", "pretrain_docs/config.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.resolve(cfg.data.train).exists(), f"{path}: data.train {cfg.data.train} does not exist"
    if cfg.data.test:
        assert cfg.resolve(cfg.data.test).exists()


def _banking_copy(out: Path) -> dict[str, str]:
    """The first rows of CLASSES intents: 8 train and 3 test rows each (test rows: train labels only)."""
    def rows(name: str, per_class: int) -> list[dict]:
        with (EXAMPLES / "banking77" / name).open(encoding="utf-8", newline="") as f:
            all_rows = list(csv.DictReader(f))
        keep = sorted({r["category"] for r in all_rows})[:CLASSES]
        return [r for lab in keep for r in [x for x in all_rows if x["category"] == lab][:per_class]]

    paths = {}
    for split, name, n in (("train", "train.csv", 8), ("test", "test.csv", 3)):
        paths[split] = str(out / name)
        with open(paths[split], "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "category"])
            w.writeheader()
            w.writerows(rows(name, n))
    return paths


def _dialogsum_copy(out: Path) -> dict[str, str]:
    paths = {}
    for split, name, n in (("train", "dialogsum.dev.jsonl", 12), ("test", "dialogsum.test.jsonl", 3)):
        lines = (EXAMPLES / "dialogsum" / name).read_text(encoding="utf-8").splitlines()[:n]
        paths[split] = str(out / name)
        Path(paths[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def _hwu64_copy(out: Path) -> dict[str, str]:
    """CLASSES intent files of each split, cut to their first rows, bytes as published (semicolons)."""
    paths = {}
    for split, n in (("train", 8), ("test", 3)):
        folder = out / f"hwu64-{split}"
        folder.mkdir()
        for f in sorted((EXAMPLES / "hwu64" / split).glob("*.csv"))[:CLASSES]:
            (folder / f.name).write_bytes(b"\n".join(f.read_bytes().split(b"\n")[:n + 1]) + b"\n")
        paths[split] = str(folder)
    return paths


def _snips_copy(out: Path) -> dict[str, str]:
    """CLASSES intent files of each split with their first records, in the published nested shape."""
    paths = {}
    for split, name, n in (("train", "train", 8), ("test", "validate", 3)):
        folder = out / f"snips-{split}"
        folder.mkdir()
        for f in sorted((EXAMPLES / "snips" / name).glob("*.json"))[:CLASSES]:
            doc = json.loads(f.read_bytes().decode("utf-8", errors="replace"))
            (folder / f.name).write_text(json.dumps({k: v[:n] for k, v in doc.items()}, indent=2), encoding="utf-8")
        paths[split] = str(folder)
    return paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    return {"llama": tiny_llama(root / "llama"), "bert": tiny_bert_classifier(root / "bert", num_labels=CLASSES),
            "llama-cls": tiny_llama(root / "llama-cls", num_labels=CLASSES, layers=3),
            "banking77": _banking_copy(root), "dialogsum": _dialogsum_copy(root),
            "hwu64": _hwu64_copy(root), "snips": _snips_copy(root)}


def _overrides(path: Path, tiny: dict, runs: Path) -> list[str]:
    cfg = load_config(path)
    model = tiny["bert"] if cfg.task == "classification" else tiny["llama"]
    cut = []
    if cfg.model.layers:   # a decoder classifier cut to its first layers: the tiny decoder, cut the same way
        model, cut = tiny["llama-cls"], ["model.layers=2", "method.freeze_below=1"]
    out = [*cut, f"model.name={model}", f"runs_dir={runs}", "data.train_limit=24",
           "train.max_steps=2", "train.batch_size=4", "train.eval_every=1", "eval.max_test=8",
           "eval.baseline_per_class=1", "eval.forgetting_tokens=64", "eval.few_shot_k=2",
           "eval.bootstrap_samples=100", "eval.max_new_tokens=8", "eval.batch_size=8"]
    data = tiny.get(path.parent.name)
    if data:
        out += [f"data.train={data['train']}", f"data.test={data['test']}"]
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_example_runs_end_to_end(path, tiny, tmp_path):
    result = CliRunner().invoke(app, ["run", str(path), *_overrides(path, tiny, tmp_path / "runs")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    cfg = load_config(path)
    run = tmp_path / "runs" / cfg.name
    for item in ("config.yaml", "metrics.json", "report.md", "best", "last"):
        assert (run / item).exists(), f"{item} missing from {run}"
    test = json.loads((run / "metrics.json").read_text())["test"]
    systems = {"finetuned", "zero_shot"} | ({"few_shot"} if cfg.task != "pretrain" else set())
    assert systems <= set(test)
    headline = next(m for m in ("accuracy", "rougeL", "perplexity") if m in test["finetuned"])
    for name in systems:
        assert test[name]["n"] > 0
        assert test[name][headline] == test[name][headline], f"{name} {headline} is NaN"
