"""The classification evaluation on a tiny random BERT: valid labels only, and honest embedding baselines.

A random encoder still maps a text made of one repeated word to roughly the same mean-pooled vector
whatever the repetition count, and texts of different words far apart; so on a dataset where each
class is one word the nearest-centroid (few-shot) baseline must be perfect. If pooling read padding,
dropped the mask or mixed up which centroid belongs to which label, it would not be.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tiny import tiny_bert_classifier
from tunelab.config import config_from_dict
from tunelab.data.stage import Prepared
from tunelab.evaluate.classifier import EmbeddingBaselines, base_encoder, label_phrase
from tunelab.evaluate.classifier import evaluate as evaluate_classifier
from tunelab.models import load_tokenizer
from tunelab.models.precision import Precision
from tunelab.core.rundir import RunDir

LABELS = ["card", "transfer", "other"]           # tiny_bert_classifier's head, in label-id order
WORD = {"card": "card", "transfer": "transfer", "other": "payment"}
FP32 = Precision("cpu", False, False, "fp32 (test)")


def _record(i: int, label: str, repeats: int, split: str) -> dict:
    return {"id": f"{split}.csv:{i}", "source": {"file": f"{split}.csv", "line": i, "page": None},
            "input": {"text": " ".join([WORD[label]] * repeats)}, "output": label,
            "messages": None, "text": None, "group": None}


def _split(split: str, repeats: list[int]) -> list[dict]:
    return [_record(i, lab, r, split) for i, (lab, r) in enumerate((l, r) for l in LABELS for r in repeats)]


@pytest.fixture
def setup(tmp_path):
    folder = tiny_bert_classifier(tmp_path / "bert", num_labels=len(LABELS))
    cfg = config_from_dict({"name": "cls", "task": "classification", "runs_dir": str(tmp_path / "runs"),
                            "data": {"train": "unused.csv"}, "model": {"name": str(folder)},
                            "train": {"precision": "fp32"},
                            "eval": {"few_shot_k": 3, "baseline_per_class": 2, "bootstrap_samples": 100}})
    rd = RunDir.create(cfg)
    shutil.copytree(folder, rd.best)            # the untrained head stands in for a fine-tuned one
    prepared = Prepared({"train": _split("train", [1, 2, 3]), "validation": [], "test": _split("test", [4, 5, 6])},
                        LABELS, {}, False)
    return cfg, rd, prepared, load_tokenizer(cfg.model)


def test_every_system_predicts_only_known_labels(setup):
    cfg, rd, prepared, tok = setup
    results = evaluate_classifier(cfg, rd, prepared, tok)
    rows = [json.loads(l) for l in (rd.path / "predictions.jsonl").read_text().splitlines()]
    by_system = {s: [r for r in rows if r["system"] == s] for s in ("finetuned", "zero_shot", "few_shot")}
    assert len(by_system["finetuned"]) == 9 and len(by_system["zero_shot"]) == len(by_system["few_shot"]) == 6
    assert {r["prediction"] for r in rows} <= set(LABELS)
    assert results["finetuned"]["n"] == 6 and results["finetuned_full_test"]["n"] == 9
    assert json.loads(rd.metrics_json.read_text())["test"].keys() == results.keys()


def test_few_shot_centroids_separate_a_separable_dataset(setup):
    cfg, rd, prepared, tok = setup
    results = evaluate_classifier(cfg, rd, prepared, tok)
    assert results["few_shot"]["accuracy"] == 1.0
    assert results["few_shot"]["f1_macro"] == 1.0


def test_zero_shot_picks_the_label_whose_name_embeds_closest(setup):
    cfg, _, _, tok = setup
    baselines = EmbeddingBaselines(base_encoder(cfg), tok, FP32, batch_size=4, max_length=32)
    # Query texts that *are* the label phrases must map to their own label.
    labels = ["card_arrival", "transfer", "payment"]
    queries = baselines.encode([label_phrase(l) for l in labels])
    assert baselines.zero_shot(queries, labels) == labels
    assert torch.allclose(queries.norm(dim=-1), torch.ones(3))


def test_decoder_base_is_prompted_not_embedded(tmp_path):
    """A decoder classifier's baselines are the base model prompted (constrained to the labels), as for sft runs."""
    from tiny import tiny_llama
    from tunelab.evaluate.generative import prompting
    from tunelab.models import load_model

    folder = tiny_llama(tmp_path / "llama", num_labels=len(LABELS), layers=3)
    cfg = config_from_dict({"name": "dec", "task": "classification", "runs_dir": str(tmp_path / "runs"),
                            "data": {"train": "unused.csv"}, "model": {"name": str(folder), "layers": 2},
                            "train": {"precision": "fp32"},
                            "eval": {"few_shot_k": 2, "baseline_per_class": 2, "bootstrap_samples": 100}})
    rd = RunDir.create(cfg)
    shutil.copytree(folder, rd.best)
    prepared = Prepared({"train": _split("train", [1, 2, 3]), "validation": [], "test": _split("test", [4, 5, 6])},
                        LABELS, {}, False)
    tok = load_tokenizer(cfg.model)
    results = evaluate_classifier(cfg, rd, prepared, tok)
    assert "prompted" in results["zero_shot"]["note"] and "prompted" in results["few_shot"]["note"]
    rows = [json.loads(l) for l in (rd.path / "predictions.jsonl").read_text().splitlines()]
    zero = {r["id"]: r["prediction"] for r in rows if r["system"] == "zero_shot"}
    assert len(zero) == 6 and set(zero.values()) <= set(LABELS)
    # the same decoding of the whole (3-layer) causal LM, run directly
    test = prepared.splits["test"]
    gen, prompts = prompting(cfg, tok, prepared, test, FP32)
    picked = [i for i, r in enumerate(test) if r["id"] in zero]
    expected = gen.predict(load_model(cfg.model, "sft"), [prompts.zero_shot(test[i]) for i in picked], desc="t")
    assert [zero[test[i]["id"]] for i in picked] == expected
