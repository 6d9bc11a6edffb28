"""Evaluate a `task: classification` run: the fine-tuned head vs baselines of the same untuned base model.

A decoder base (SmolLM2, Llama, ...) is its own baseline as users would use it: prompted zero-/few-shot
with the label list and decoded under the label-set constraint, exactly as `task: sft` runs compare
(`generative.prompted_baselines`; the whole base model, whatever `model.layers` kept under the head).
A prompt means nothing to an encoder, so for an encoder base the baselines are the two standard ways
of classifying with the untuned model's sentence embeddings (mean-pooled last hidden states, as
all-MiniLM-L6-v2 was trained to be used):

- zero-shot: the label whose *name* (`card_arrival` -> "card arrival") has the most similar embedding;
- few-shot: the nearest class centroid of `eval.few_shot_k` embedded training examples per class.

Test examples, subsets, metrics, intervals, paired tests and predictions.jsonl are those of
`common.py`, so the report reads the same for every task.
"""

from __future__ import annotations

import logging
import random
import time

import torch

from tunelab.config import Config
from tunelab.core.log import progress
from tunelab.core.records import prompt_text
from tunelab.core.rundir import RunDir
from tunelab.evaluate.common import Systems, baseline_subset, prediction_rows, score, test_records, write_results
from tunelab.methods import load_trained
from tunelab.evaluate.generative import prompted_baselines, prompted_cost, prompting
from tunelab.models import Precision, choose_precision, is_decoder, load_model, local_folder
from tunelab.train.collate import PAD_MULTIPLE
from tunelab.train.render import Renderer

log = logging.getLogger(__name__)

PROMPTED_NOTES = {
    "zero_shot": "untuned base model prompted with the label list, decoding constrained to the label names",
    "few_shot": "untuned base model prompted with the label list and few_shot_k solved training examples, "
                "decoding constrained to the label names",
}
BASELINE_NOTES = {
    "zero_shot": "base-model embedding of the text vs embeddings of the label names (cosine, mean pooling)",
    "few_shot": "nearest class centroid of base-model embeddings of few_shot_k training examples per class",
}


def label_phrase(label: str) -> str:
    """How a label name reads as text: `card_arrival` -> `card arrival`."""
    return label.replace("_", " ").replace("-", " ").strip()


def _batches(tokenizer, texts: list[str], batch_size: int, max_length: int, device: str, desc: str):
    for start in progress(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        enc = tokenizer(texts[start:start + batch_size], padding=True, pad_to_multiple_of=PAD_MULTIPLE, truncation=True,
                        max_length=max_length, return_tensors="pt")
        yield {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.inference_mode()
def head_probabilities(model, tokenizer, texts: list[str], prec: Precision, batch_size: int, max_length: int,
                       desc: str = "fine-tuned") -> torch.Tensor:
    """The classification head's softmax over the labels for each text, one row per text (batched, no grad)."""
    model.to(prec.device).eval()
    rows = []
    for batch in _batches(tokenizer, texts, batch_size, max_length, prec.device, desc):
        with prec.autocast():
            logits = model(**batch).logits
        rows.append(torch.softmax(logits.float(), -1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def head_predictions(model, tokenizer, texts: list[str], labels: list[str], prec: Precision,
                     batch_size: int, max_length: int) -> list[str]:
    """The label of the classification head's argmax for each text (batched, no grad)."""
    probs = head_probabilities(model, tokenizer, texts, prec, batch_size, max_length)
    return [labels[i] for i in probs.argmax(-1).tolist()] if len(texts) else []


@torch.inference_mode()
def embed(encoder, tokenizer, texts: list[str], prec: Precision, batch_size: int, max_length: int) -> torch.Tensor:
    """L2-normalised mean of the last hidden states over real (non-padding) tokens, one row per text."""
    encoder.to(prec.device).eval()
    rows = []
    for batch in _batches(tokenizer, texts, batch_size, max_length, prec.device, "base-model embeddings"):
        with prec.autocast():
            hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def nearest(queries: torch.Tensor, anchors: torch.Tensor, labels: list[str]) -> list[str]:
    """For each query row, the label of the anchor row with the highest cosine similarity."""
    anchors = torch.nn.functional.normalize(anchors, dim=-1)
    return [labels[i] for i in (queries @ anchors.T).argmax(-1).tolist()]


def shots_per_class(train: list[dict], labels: list[str], k: int, seed: int) -> dict[str, list[dict]]:
    """At most `k` training records per label, drawn with a fixed seed."""
    by_label: dict[str, list[dict]] = {l: [] for l in labels}
    for rec in train:
        by_label.setdefault(str(rec["output"]), []).append(rec)
    rng = random.Random(seed)
    return {l: (recs if len(recs) <= k else rng.sample(recs, k)) for l, recs in by_label.items() if recs}


class EmbeddingBaselines:
    """Zero-shot (label names) and few-shot (class centroids) classification with a frozen base model."""

    def __init__(self, encoder, tokenizer, prec: Precision, batch_size: int, max_length: int):
        self.encode = lambda texts: embed(encoder, tokenizer, texts, prec, batch_size, max_length)

    def zero_shot(self, queries: torch.Tensor, labels: list[str]) -> list[str]:
        return nearest(queries, self.encode([label_phrase(l) for l in labels]), labels)

    def few_shot(self, queries: torch.Tensor, shots: dict[str, list[dict]]) -> list[str]:
        names = list(shots)
        # One pass (one progress bar) over every shot, not one per label.
        rows = self.encode([prompt_text(r) for label in names for r in shots[label]])
        centroids = torch.stack([part.mean(0) for part in rows.split([len(shots[label]) for label in names])])
        return nearest(queries, centroids, names)


def base_encoder(cfg: Config):
    """The untuned base model without any head: its last hidden state is what gets pooled."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(local_folder(cfg.model), revision=cfg.model.revision,
                                     trust_remote_code=cfg.model.trust_remote_code, dtype=torch.float32)


def run_baselines(cfg: Config, systems: Systems, tokenizer, prec: Precision, train: list[dict],
                  labels: list[str], subset: list[int]) -> None:
    """Predict the `subset` of the test examples with each baseline in `eval.baselines`."""
    e, test = cfg.eval, systems.test
    baselines = EmbeddingBaselines(base_encoder(cfg), tokenizer, prec, e.batch_size, cfg.data.max_length)
    start = time.time()
    queries = baselines.encode([prompt_text(test[i]) for i in subset])
    systems.seconds["baseline_test_embeddings"] = round(time.time() - start, 2)   # shared by both baselines
    shots = shots_per_class(train, labels, e.few_shot_k, cfg.train.seed)
    run = {"zero_shot": lambda: baselines.zero_shot(queries, labels),
           "few_shot": lambda: baselines.few_shot(queries, shots)}
    for name in e.baselines:
        systems.record(name, subset, run[name])


def evaluate(cfg: Config, rd: RunDir, prepared, tokenizer) -> dict:
    """Score the fine-tuned head and the embedding baselines on the same test examples; write metrics.json
    `test`, `eval_seconds` and predictions.jsonl."""
    prec, labels, e = choose_precision(cfg.train), prepared.labels, cfg.eval
    test = test_records(cfg, prepared)
    renderer = Renderer(tokenizer, cfg)
    systems = Systems(test)
    everything = list(range(len(test)))

    model = load_trained(cfg.model, rd.best, cfg.task, labels, method=cfg.method)
    # The head sees exactly what training fed it: the templated user text, truncated the same way.
    systems.record("finetuned", everything, lambda: head_predictions(
        model, tokenizer, [renderer.user_text(r) for r in test], labels, prec, e.batch_size, cfg.data.max_length))
    model = None  # free the fine-tuned weights before the baselines load the base model

    notes = BASELINE_NOTES
    if e.baselines and is_decoder(cfg.model):
        notes = PROMPTED_NOTES
        gen, prompts = prompting(cfg, tokenizer, prepared, test, prec)
        # Under bf16 autocast every matmul already runs in bf16: weights loaded in bf16 take half the memory
        # and skip the per-forward casts (Banking77, 96 test queries, 2 cores without AMX: peak RSS 1.24
        # vs 1.76 GB, 1.7-2x the examples/s, the same label on 96/96 zero-shot and 94/96 few-shot prompts).
        base = load_model(cfg.model, "sft", dtype=prec.autocast_dtype)
        # Decoding a long prompt with the whole base model: its cost is measured, not inferred from the head's.
        subset = baseline_subset(cfg, test, True, prompted_cost(cfg, test, gen, prompts, base), rd)
        prompted_baselines(cfg, systems, gen, prompts, base, subset)
    elif e.baselines:
        # One base-model forward per test example (shared by both baselines), as costly as the head's.
        subset = baseline_subset(cfg, test, True, systems.seconds["finetuned"] / max(len(test), 1), rd)
        run_baselines(cfg, systems, tokenizer, prec, prepared.splits["train"], labels, subset)
    else:
        subset = baseline_subset(cfg, test, True, 0.0, rd)
    results = score(cfg, test, systems, subset, closed=True)
    for name, note in notes.items():
        if name in results:
            results[name]["note"] = note
    write_results(rd, results, systems.seconds, prediction_rows(test, systems, cfg.data.template))
    if e.forgetting:
        # The probe scores next-token predictions; a classification model has no language-model head.
        rd.set_metrics("forgetting", {"skipped": "task=classification: the model has no language-model head"})
        log.info("forgetting probe skipped: a classification model has no language-model head to score text with")
    return results
