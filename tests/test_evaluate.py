"""The evaluate stage on run folders trained here (tiny Llama, tiny data): labels, ROUGE with several
references, the time budget, similar-shot selection and the forgetting gate."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from transformers import logging as hf_logging

from capture import captured
from tiny import SENTENCES, tiny_llama
from tunelab.evaluate import metrics as M
from tunelab.config import config_from_dict
from tunelab.data.stage import prepare
from tunelab.evaluate.common import EvaluationFailed, seeded_sample
from tunelab.evaluate.stage import run as evaluate
from tunelab.models import load_tokenizer
from tunelab.evaluate.prompts import ShotPicker
from tunelab.core.rundir import RunDir
from tunelab.train.stage import run as train

hf_logging.set_verbosity_error()
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
LABELS = ["card", "transfer", "other"]
# Three spellings of one answer: more distinct outputs than eval.max_labels=2, so generation is free.
ANSWERS = ["my card", "my card.", "my card!"]


def text(i: int, tag: str) -> str:
    return f"{SENTENCES[i % 12]} {tag} {WORDS[i % 16]} {WORDS[(i * 7) % 16]} {i}"


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path.name


def trained_run(root, name: str, rows: list[dict], tests: list[dict], data: dict, method: dict, train_cfg: dict,
                eval_cfg: dict):
    """Prepare and train a run on the tiny Llama; returns (cfg, RunDir, prepared, tokenizer)."""
    cfg = config_from_dict({
        "name": name, "runs_dir": str(root / "runs"), "base_dir": str(root),
        "data": {"train": write_jsonl(root / f"{name}-train.jsonl", rows),
                 "test": write_jsonl(root / f"{name}-test.jsonl", tests), "input_columns": ["text"],
                 "template": "Answer: {text}", "max_length": 64, "dedup": {"near": False}, **data},
        "model": {"name": str(root / "llama")}, "method": method,
        "train": {"batch_size": 8, "eval_every": 10, "log_every": 5, "patience": None, "threads": 1, **train_cfg},
        "eval": {"bootstrap_samples": 100, "batch_size": 8, "forgetting": False, **eval_cfg}})
    rd = RunDir.create(cfg)
    tok = load_tokenizer(cfg.model)
    prepared = prepare(cfg, rd.data, tok)
    train(cfg, rd, prepared, tok)
    return cfg, rd, prepared, tok


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tiny_llama(root / "llama")
    return root


@pytest.fixture(scope="module")
def labelled(root):
    """A closed label set (3 labels); two training steps are enough: decoding is constrained anyway."""
    rows = [{"text": text(i, "ref"), "label": LABELS[i % 3]} for i in range(24)]
    tests = [{"text": text(i, "query"), "label": LABELS[i % 3]} for i in range(12)]
    return trained_run(root, "labels", rows, tests, {"output_column": "label"}, {"name": "lora", "r": 4},
                       {"lr": 1e-3, "max_steps": 2}, {"baseline_per_class": 2, "few_shot_k": 2})


@pytest.fixture(scope="module")
def summaries(root):
    """Open-ended outputs and two references per test example; LoRA on the output head learns "my card"."""
    rows = [{"text": text(i, "ref"), "summary": ANSWERS[i % 3]} for i in range(40)]
    tests = [{"text": text(i, "query"), "summary1": f"oscar papa kilo {i}", "summary2": "my card"} for i in range(12)]
    method = {"name": "lora", "r": 16, "alpha": 128, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]}
    return trained_run(root, "summaries", rows, tests, {"output_column": "summary"}, method,
                       {"lr": 1e-2, "max_steps": 20},
                       {"references": ["summary1", "summary2"], "max_labels": 2, "max_new_tokens": 8})


def fresh(run, tmp_path, **eval_updates):
    """A copy of a trained run folder and its config with `eval` fields changed, so tests stay independent."""
    cfg, rd, prepared, tok = run
    copy = RunDir(shutil.copytree(rd.path, tmp_path / rd.path.name))
    copy.metrics_json.unlink(missing_ok=True)
    cfg = cfg.model_copy(deep=True)
    for key, value in eval_updates.items():
        setattr(cfg.eval, key, value)
    return cfg, copy, prepared, tok


def predictions(rd: RunDir) -> list[dict]:
    return [json.loads(line) for line in (rd.path / "predictions.jsonl").read_text().splitlines()]


def test_closed_label_set_predictions_are_labels_with_intervals_and_p_values(labelled, tmp_path):
    cfg, rd, prepared, tok = fresh(labelled, tmp_path)
    evaluate(cfg, rd, prepared, tok)
    preds = predictions(rd)
    assert {p["system"] for p in preds} == {"finetuned", "zero_shot", "few_shot"}
    assert all(p["prediction"] in LABELS for p in preds)
    test = rd.metrics()["test"]
    for system in ("zero_shot", "few_shot", "finetuned"):
        entry = test[system]
        assert entry["n"] == 6   # baseline_per_class=2 x 3 labels: the like-for-like subset
        lo, hi = entry["ci"]["accuracy"]
        assert lo <= entry["accuracy"] <= hi
    assert set(test["finetuned"]["p_value_vs"]) == {"zero_shot", "few_shot"}
    assert all(0 < p <= 1 for p in test["finetuned"]["p_value_vs"].values())
    assert test["finetuned_full_test"]["n"] == 12


def test_free_generation_scores_rouge_against_every_reference(summaries, tmp_path):
    cfg, rd, prepared, tok = fresh(summaries, tmp_path)
    evaluate(cfg, rd, prepared, tok)
    test = rd.metrics()["test"]
    assert "accuracy" not in test["finetuned"] and {"rouge1", "rouge2", "rougeL"} <= set(test["finetuned"])
    mine = [p for p in predictions(rd) if p["system"] == "finetuned"]
    assert len(mine) == 12 and all(len(p["reference"]) == 2 for p in mine)
    preds, refs = [p["prediction"] for p in mine], [p["reference"] for p in mine]
    every = M.compute_metrics(["rouge1", "rougeL"], preds, refs)
    first_only = M.compute_metrics(["rouge1"], preds, [r[0] for r in refs])
    assert test["finetuned"]["rouge1"] == pytest.approx(every["rouge1"])
    assert test["finetuned"]["rougeL"] == pytest.approx(every["rougeL"])
    # The model learned "my card", the second reference: only scoring against all of them sees it.
    assert every["rouge1"] > 0.5 and first_only["rouge1"] < every["rouge1"] - 0.4


def test_time_budget_evaluates_a_seeded_subset_and_says_so(labelled, tmp_path):
    cfg, rd, prepared, tok = fresh(labelled, tmp_path, time_budget_s=1e-4)
    with captured() as lines:
        evaluate(cfg, rd, prepared, tok)
    said = [l for l in lines if l.startswith("time budget")]
    assert len(said) == 1, lines
    k, n = map(int, re.search(r"subset of (\d+) of (\d+) test examples", said[0]).groups())
    assert n == 12 and 1 <= k < n
    expected = {prepared.splits["test"][i]["id"] for i in seeded_sample(n, k, cfg.train.seed)}
    assert {p["id"] for p in predictions(rd) if p["system"] == "finetuned"} == expected
    assert max(entry["n"] for entry in rd.metrics()["test"].values()) == k


def test_similar_selection_picks_the_closest_training_example():
    pool = [{"id": str(i), "input": {"text": t}, "output": lab} for i, (t, lab) in enumerate([
        ("my card has not arrived in the post", "card"), ("the exchange rate on my payment looks wrong", "other"),
        ("how long does a bank transfer take", "transfer"), ("please block my lost card", "card")])]
    query = {"id": "q", "input": {"text": "how long will my bank transfer take to arrive"}, "output": None}
    similar = ShotPicker(pool, 2, seed=0, labels=None, selection="similar")
    shots = similar.for_record(query)
    assert [s["id"] for s in shots][-1] == "2"   # the most similar sits last, next to the question
    assert len(shots) == 2 and shots[0]["id"] != "2"
    fixed = ShotPicker(pool, 2, seed=0, labels=None, selection="fixed")
    assert fixed.for_record(query) == fixed.for_record({"input": {"text": "exchange rate"}})


def test_forgetting_gate_fails_the_run_after_writing_the_figures(summaries, tmp_path):
    cfg, rd, prepared, tok = fresh(summaries, tmp_path, forgetting=True, forgetting_max=0.0, forgetting_tokens=64)
    with pytest.raises(EvaluationFailed, match=r"forgetting: perplexity on the general-English probe rose"):
        evaluate(cfg, rd, prepared, tok)
    m = rd.metrics()
    f = m["forgetting"]
    assert f["perplexity_change"] > 0 and f["kl_mean"] > 0
    assert f["perplexity"] == pytest.approx(f["perplexity_base"] * (1 + f["perplexity_change"]))
    assert "finetuned" in m["test"]   # the test figures are kept even though the run failed


def test_every_system_shows_a_progress_bar_with_an_eta(labelled, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNELAB_PROGRESS", "1")
    cfg, rd, prepared, tok = fresh(labelled, tmp_path, forgetting=True, forgetting_tokens=64, time_budget_s=1e6)
    evaluate(cfg, rd, prepared, tok)
    err = capsys.readouterr().err
    for name in ("calibrating the time budget", "fine-tuned", "zero-shot", "few-shot", "forgetting probe"):
        bars = [line for line in re.split(r"[\r\n]", err) if line.startswith(name + ":")]
        assert bars, f"no progress bar for {name}:\n{err[-2000:]}"
        assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", bars[-1]), bars[-1]   # elapsed<remaining: the ETA


def test_baselines_see_the_whole_test_set_when_it_fits_the_budget(labelled, tmp_path):
    cfg, rd, prepared, tok = fresh(labelled, tmp_path, baseline_per_class=None)
    with captured() as lines:
        evaluate(cfg, rd, prepared, tok)
    sizing = rd.metrics()["baseline_sizing"]
    assert sizing["examples"] == sizing["test_examples"] == 12 and "fits the budget" in sizing["reason"]
    assert rd.metrics()["test"]["zero_shot"]["n"] == 12
    assert any(line.startswith("baselines on 12 of 12 test examples") for line in lines)


def test_slow_baselines_run_on_a_stratified_subset_cut_to_the_budget(labelled, tmp_path):
    cfg, rd, prepared, tok = fresh(labelled, tmp_path, baseline_per_class=None, baseline_budget_s=1e-6,
                                   baseline_ci_width=0.3)
    evaluate(cfg, rd, prepared, tok)
    sizing = rd.metrics()["baseline_sizing"]
    assert sizing["examples"] == 3 and "cut to 3" in sizing["reason"]   # one per label: the floor
    subset = [p for p in predictions(rd) if p["system"] == "zero_shot"]
    assert sorted(p["reference"] for p in subset) == sorted(LABELS)
