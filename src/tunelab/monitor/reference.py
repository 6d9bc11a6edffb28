"""The reference production traffic is compared with: the run's own training data, seen as the server sees it.

Inputs are the text a request log holds for them (one input column: its value; several: `column: value`
lines, as the server logs them; a conversation: its last user turn), with PII redacted as the server
redacts logged text. Lengths are prompt tokens counted as the server counts them (the run's renderer).
For label-set runs the expected label distribution of the model's answers is the training label mix
pushed through the model's confusion matrix on its test set (predictions.jsonl): a model that confuses
two intents answers the wrong one at the same rate in production, which is not drift.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import numpy as np

from tunelab.config import Config
from tunelab.config.monitor import MonitorConfig
from tunelab.core.rundir import RunDir, atomic_write_json, read_json
from tunelab.data.clean import redact_pii
from tunelab.monitor import stats
from tunelab.tasks import TASKS

log = logging.getLogger(__name__)
VOCAB_SHARE = 0.8   # of the training inputs build the vocabulary; the rest measure the natural OOV rate


def input_text(rec: dict) -> str:
    """The text a request log holds for a record's input."""
    if rec.get("messages"):
        users = [t["content"] for t in rec["messages"] if t["role"] == "user"]
        return users[-1] if users else ""
    if rec.get("text") is not None and not rec.get("input"):
        return rec["text"]
    inputs = rec.get("input") or {}
    if len(inputs) == 1:
        return str(next(iter(inputs.values())) or "")
    return "\n".join(f"{k}: {v}" for k, v in inputs.items())


@dataclass
class Reference:
    """Training inputs, their lengths, vocabulary and label mix, ready for the window checks."""

    texts: list[str]                       # seeded sample of `reference_size` inputs for the embedding tests
    lengths: np.ndarray                    # prompt tokens per training example
    vocabulary: set[str]
    oov: np.ndarray                        # per held-out input, its share of out-of-vocabulary words
    oov_rate: float                        # word-level OOV rate of the held-out inputs
    labels: list[str] | None = None        # the closed label set
    expected: np.ndarray | None = None     # expected counts of the model's answers over `labels` (see `build`)
    train_labels: np.ndarray | None = None  # the training label mix itself (for the report)
    confidence: np.ndarray | None = None   # the model's top-label probabilities on validation inputs
    test_score: dict = field(default_factory=dict)   # metric -> value, ci, n (metrics.json test)
    embeddings: np.ndarray | None = None   # of `texts`, filled by the first window that needs them


def build(texts: list[str], lengths: list[int], cfg: MonitorConfig, labels: list[str] | None = None,
          train_labels: list[str] | None = None, confusion: np.ndarray | None = None) -> Reference:
    """A reference from training inputs (and, for label sets, their labels and the model's confusion matrix).

    Args:
        texts: the training inputs as a request log would hold them.
        lengths: prompt tokens per training example.
        confusion: rows = true label, columns = answered label (counts), over `labels`; None = a perfect model.

    The expected answer counts are the training label counts (a perfect model), or the training label mix
    pushed through the confusion matrix.
    """
    rng = random.Random(cfg.seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    cut = max(1, int(len(order) * VOCAB_SHARE))
    vocabulary = {w for i in order[:cut] for w in stats.words(texts[i])}
    held = [texts[i] for i in order[cut:]] or [texts[order[0]]]
    oov, unknown, total = stats.oov_fractions(held, vocabulary)
    sample = [texts[i] for i in order[: cfg.reference_size]]
    ref = Reference(sample, np.asarray(lengths, float), vocabulary, oov, unknown / max(total, 1))
    if labels and train_labels:
        index = {l: i for i, l in enumerate(labels)}
        counts = np.bincount([index[l] for l in train_labels if l in index], minlength=len(labels)).astype(float)
        prior = counts / counts.sum()
        ref.labels, ref.train_labels = list(labels), prior
        if confusion is None:
            ref.expected = counts
        else:
            # The expected answer mix is only as certain as both samples it comes from: weight it like a
            # sample of the harmonic size of the training set and the test set behind the confusion matrix.
            size = 1.0 / (1.0 / counts.sum() + 1.0 / max(float(np.sum(confusion)), 1.0))
            ref.expected = size * (prior @ _row_normalised(confusion))
    return ref


def _row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each true label's answer distribution; a label the test set never holds answers itself."""
    c = np.asarray(confusion, float).copy()
    empty = c.sum(1) == 0
    c[empty, :] = np.eye(len(c))[empty]
    return c / c.sum(1, keepdims=True)


def confusion_from_predictions(rows: list[dict], labels: list[str]) -> np.ndarray | None:
    """The fine-tuned model's confusion counts on its test set (predictions.jsonl), or None without rows."""
    index = {l: i for i, l in enumerate(labels)}
    c = np.zeros((len(labels), len(labels)))
    for r in rows:
        ref = r.get("reference")
        ref = ref[0] if isinstance(ref, list) else ref
        if r.get("system") in ("finetuned", "finetuned_full_test") and ref in index and r.get("prediction") in index:
            c[index[ref], index[r["prediction"]]] += 1
    return c if c.sum() else None


def prompt_lengths(cfg: Config, records: list[dict], tokenizer) -> list[int]:
    """Prompt tokens per record, counted as `tunelab serve` counts them (serve/served.py `count_tokens`):
    the classification head's templated user text (truncated at data.max_length), else the chat prompt."""
    from tunelab.train.render import Renderer

    renderer = Renderer(tokenizer, cfg)
    if TASKS[cfg.task].serving == "classify":
        texts = [renderer.user_text(r) for r in records]
        enc = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
        return [len(ids) for ids in enc]
    return [len(renderer.prompt_ids(renderer.prompt_messages(r))) for r in records]


def test_score(rd: RunDir) -> dict:
    """The fine-tuned model's test metrics on the full test set (metrics.json `test`)."""
    test = rd.metrics().get("test") or {}
    return test.get("finetuned_full_test") or test.get("finetuned") or {}


def from_run(rd: RunDir, cfg: MonitorConfig, max_lengths: int = 5000) -> Reference:
    """The reference of a trained run: its prepared training split, labels and test results."""
    from tunelab.models import load_tokenizer

    run_cfg = rd.config()
    train = rd.data.splits()["train"]
    if not train:
        raise_missing(rd)
    texts = [redact_pii(input_text(r)) for r in train]
    sample = train if len(train) <= max_lengths else random.Random(cfg.seed).sample(train, max_lengths)
    lengths = prompt_lengths(run_cfg, sample, load_tokenizer(run_cfg.model))
    labels = rd.data.manifest().get("labels")
    confusion = confusion_from_predictions(rd.predictions(), labels) if labels else None
    ref = build(texts, lengths, cfg, labels, [r["output"] for r in train] if labels else None, confusion)
    ref.test_score = test_score(rd)
    log.info(f"reference: {len(train)} training inputs of {rd.name} ({len(ref.texts)} sampled for the embedding "
             f"tests), {len(ref.vocabulary)} words of vocabulary"
             + (f", {len(labels)} labels" + (" through the test confusion matrix" if confusion is not None else "")
                if labels else ""))
    return ref


def model_confidence(rd: RunDir, records: list[dict]) -> np.ndarray | None:
    """The run's top-label probability for each record, computed as `tunelab serve` computes the
    `label_probability` it logs (serve/served.py): the classification head's softmax, or for a label-set
    run the constrained label probabilities of the decoder. None for runs that answer free text."""
    from tunelab.predictor import Predictor

    p = Predictor(rd.path)
    if p.task.serving == "classify":
        from tunelab.evaluate.classifier import head_probabilities

        probs = head_probabilities(p.model, p.tokenizer, [p.user_text(r) for r in records], p.precision,
                                   p.cfg.eval.batch_size, p.cfg.data.max_length)
        return probs.max(-1).values.numpy() if len(records) else np.zeros(0)
    if p.trie is None:
        return None
    from tunelab.evaluate.decoding import Decoder

    decoder = Decoder(p.model, p.precision, p.tokenizer.pad_token_id, p.renderer.end_ids)
    return np.asarray([max(decoder.label_scores(p.prompt_ids(r), p.trie)[1]) for r in records])


def attach_confidence(ref: Reference, rd: RunDir, cfg: MonitorConfig, limit: int = 300) -> None:
    """The reference confidence: the model's top-label probabilities on (a seeded sample of at most
    `limit` of) its validation inputs, held out from training like production traffic. Cached in
    monitor/reference.json until the run's model changes."""
    stamp = rd.model_stamp()
    cached = read_json(rd.monitor_reference)
    if cached.get("model") == stamp and cached.get("limit") == limit and cached.get("confidence") is not None:
        ref.confidence = np.asarray(cached["confidence"], float)
        return
    records = rd.data.splits()["validation"] or rd.data.splits()["test"]
    records = records if len(records) <= limit else random.Random(cfg.seed).sample(records, limit)
    values = model_confidence(rd, records)
    if values is None:
        return
    ref.confidence = values
    atomic_write_json(rd.monitor_reference, {"model": stamp, "limit": limit, "confidence": values.round(6).tolist()})
    log.info(f"reference confidence: mean top-label probability {values.mean():.3f} on {len(values)} validation inputs")


def raise_missing(rd: RunDir) -> None:
    from tunelab.core.errors import RunDirError

    raise RunDirError(f"{rd.path} has no prepared training data ({rd.data.split_path('train')}): the monitor compares "
                      "production traffic with it; run `tunelab prepare` or `tunelab run` for this run first")
