"""Task metrics: accuracy/precision/recall/F1, ROUGE, BLEU, chrF, exact match and perplexity.

Every scalar metric is defined by per-example sufficient statistics (an `(n, k)` array) and a function
from their column sums to the value. The point estimate is that function of the full sums, and a
bootstrap resample is that function of weighted sums (`significance.py`), so 1,000 resamples cost one
matrix product instead of 1,000 library calls (scikit-learn's f1_score alone takes ~2 ms per call).
The statistics come from the maintained libraries: ROUGE per example from rouge-score, BLEU and chrF
n-gram counts from sacrebleu's own `_extract_corpus_statistics` (the hook sacrebleu's paired
bootstrap uses); the classification counts are checked against scikit-learn in tests/test_metrics.py.

All bounded scores are fractions in [0, 1] (BLEU and chrF too, i.e. sacrebleu's score / 100) so they
share one axis in reports; perplexity is unbounded and lower is better.

Inputs: `predictions` is a list of strings; `references` is a list whose items are a string or a list
of strings (several references: ROUGE and exact match take the best one, BLEU and chrF use all of
them as sacrebleu does; classification uses the first). For perplexity, `predictions` holds each
example's summed negative log-likelihood (nats) and `references` its scored token count.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

TASK_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro",
                       "recall_macro", "f1_per_class", "confusion_matrix"],
    "generation": ["rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match"],
    "lm": ["perplexity"],
}

# Metrics that are not one number: computed on the whole set, never bootstrapped.
STRUCTURED = ("f1_per_class", "confusion_matrix")


@dataclass(frozen=True)
class Metric:
    """A scalar metric: which statistics family it reads and how sums of those become the value."""

    family: str
    score: Callable[[np.ndarray], float]
    higher_is_better: bool = True


# ------------------------------------------------------------------ references and normalisation


def _ref_list(ref: Any) -> list[str]:
    if isinstance(ref, str):
        return [ref]
    refs = [r for r in ref if r is not None]
    if not refs:
        raise ValueError("an example has no reference")
    return [str(r) for r in refs]


def normalize(text: str) -> str:
    """Exact-match normalisation: case-folded, surrounding/inner whitespace collapsed."""
    return re.sub(r"\s+", " ", str(text)).strip().casefold()


# ------------------------------------------------------------------ statistics families


def _classification_stats(predictions: Sequence[str], references: Sequence[Any]) -> np.ndarray:
    """Per example: one-hot of [true positive | predicted label | true label] over the label set."""
    y_true = [_ref_list(r)[0].strip() for r in references]
    y_pred = [str(p).strip() for p in predictions]
    labels = sorted(set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    n, k = len(y_true), len(labels)
    t = np.fromiter((index[y] for y in y_true), dtype=np.int64, count=n)
    p = np.fromiter((index[y] for y in y_pred), dtype=np.int64, count=n)
    stats = np.zeros((n, 3 * k))
    rows = np.arange(n)
    stats[rows[t == p], t[t == p]] = 1.0
    stats[rows, k + p] = 1.0
    stats[rows, 2 * k + t] = 1.0
    return stats


def _rouge_stats(predictions: Sequence[str], references: Sequence[Any]) -> np.ndarray:
    """Per example: best-reference ROUGE-1/2/L F1 (rouge-score, Porter stemming) and a count."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = np.ones((len(predictions), 4))
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        # score_multi keeps, per ROUGE type, the reference with the highest F-measure.
        scores = scorer.score_multi(_ref_list(ref), str(pred))
        out[i, :3] = [scores[t].fmeasure for t in ("rouge1", "rouge2", "rougeL")]
    return out


def _ref_streams(references: Sequence[Any]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference position; None fills where an example has fewer."""
    refs = [_ref_list(r) for r in references]
    width = max((len(r) for r in refs), default=1)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def _bleu():
    from sacrebleu.metrics import BLEU
    # Sentence-level statistics summed over a corpus: effective order is for single sentences only.
    return BLEU()


def _chrf():
    from sacrebleu.metrics import CHRF
    return CHRF()


def _sacrebleu_stats(metric, predictions: Sequence[str], references: Sequence[Any]) -> np.ndarray:
    stats = metric._extract_corpus_statistics([str(p) for p in predictions], _ref_streams(references))
    return np.asarray(stats, dtype=float).reshape(len(predictions), -1)


def _exact_match_stats(predictions: Sequence[str], references: Sequence[Any]) -> np.ndarray:
    hits = [float(normalize(p) in {normalize(r) for r in _ref_list(ref)})
            for p, ref in zip(predictions, references)]
    return np.column_stack([hits, np.ones(len(hits))]) if hits else np.zeros((0, 2))


def _perplexity_stats(predictions: Sequence[float], references: Sequence[int]) -> np.ndarray:
    return np.column_stack([np.asarray(predictions, float), np.asarray(references, float)])


FAMILIES: dict[str, Callable[[Sequence, Sequence], np.ndarray]] = {
    "classification": _classification_stats,
    "rouge": _rouge_stats,
    "bleu": lambda p, r: _sacrebleu_stats(_bleu(), p, r),
    "chrf": lambda p, r: _sacrebleu_stats(_chrf(), p, r),
    "exact_match": _exact_match_stats,
    "perplexity": _perplexity_stats,
}


# ------------------------------------------------------------------ scores from summed statistics


def _split(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = s.shape[-1] // 3
    return s[:k], s[k:2 * k], s[2 * k:]


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # zero_division=0, as scikit-learn's precision/recall/F1 with zero_division=0.
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def _prf(kind: str, average: str) -> Callable[[np.ndarray], float]:
    """Precision/recall/F1 from summed [tp | pred | true] counts, averaged like scikit-learn."""

    def score(s: np.ndarray) -> float:
        tp, pred, true = _split(s)
        present = (pred + true) > 0  # scikit-learn averages over labels seen in y_true or y_pred
        if average == "micro":
            tp, pred, true = tp.sum(keepdims=True), pred.sum(keepdims=True), true.sum(keepdims=True)
            present = np.ones(1, bool)
        value = {"precision": _safe_div(tp, pred), "recall": _safe_div(tp, true),
                 "f1": _safe_div(2 * tp, pred + true)}[kind]
        if average == "weighted":  # mean weighted by each label's true count (support)
            return float((value * true).sum() / true.sum()) if true.sum() > 0 else 0.0
        return float(value[present].mean()) if present.any() else 0.0

    return score


def _ratio(col: int, count_col: int) -> Callable[[np.ndarray], float]:
    return lambda s: float(s[col] / s[count_col]) if s[count_col] > 0 else float("nan")


def _sacrebleu_score(make) -> Callable[[np.ndarray], float]:
    metric = make()
    return lambda s: float(metric._compute_score_from_stats(list(s)).score) / 100.0


def _perplexity_score(s: np.ndarray) -> float:
    return perplexity(float(s[0]), float(s[1]))


METRICS: dict[str, Metric] = {
    "accuracy": Metric("classification", lambda s: float(_split(s)[0].sum() / max(_split(s)[2].sum(), 1))),
    **{f"{kind}_{avg}": Metric("classification", _prf(kind, avg))
       for kind in ("precision", "recall", "f1") for avg in ("macro", "micro", "weighted")},
    "rouge1": Metric("rouge", _ratio(0, 3)),
    "rouge2": Metric("rouge", _ratio(1, 3)),
    "rougeL": Metric("rouge", _ratio(2, 3)),
    "bleu": Metric("bleu", _sacrebleu_score(_bleu)),
    "chrf": Metric("chrf", _sacrebleu_score(_chrf)),
    "exact_match": Metric("exact_match", _ratio(0, 1)),
    "perplexity": Metric("perplexity", _perplexity_score, higher_is_better=False),
}

KNOWN = sorted([*METRICS, *STRUCTURED])


# ------------------------------------------------------------------ public API


def perplexity(nll_sum: float, n_tokens: float) -> float:
    """exp(summed negative log-likelihood in nats / token count); inf when nothing was scored."""
    if n_tokens <= 0:
        return float("inf")
    return float(math.exp(nll_sum / n_tokens))


def metrics_for(task_kind: str, names: Sequence[str] | None = None) -> list[str]:
    """The metrics to report: `names` (from `eval.metrics`) when given, else the task kind's defaults.

    Raises:
        ValueError: unknown task kind or metric name (with a did-you-mean suggestion).
    """
    if names is None:
        if task_kind not in TASK_METRICS:
            raise ValueError(f"unknown task kind {task_kind!r}; expected one of {sorted(TASK_METRICS)}")
        return list(TASK_METRICS[task_kind])
    return _checked(names)


def _checked(names: Sequence[str]) -> list[str]:
    for name in names:
        if name not in METRICS and name not in STRUCTURED:
            close = difflib.get_close_matches(name, KNOWN, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown metric {name!r} in eval.metrics{hint} (known: {', '.join(KNOWN)})")
    return list(names)


def scalar_names(names: Sequence[str]) -> list[str]:
    """The one-number metrics among `names` (those that get intervals and paired tests)."""
    return [n for n in names if n in METRICS]


def structured_names(names: Sequence[str]) -> list[str]:
    """The multi-valued metrics among `names` (per-class F1, confusion matrix)."""
    return [n for n in names if n in STRUCTURED]


def example_stats(names: Sequence[str], predictions: Sequence, references: Sequence) -> dict[str, np.ndarray]:
    """Per-example sufficient statistics for every family the scalar metrics in `names` need."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    families = {METRICS[n].family for n in scalar_names(names)}
    return {fam: FAMILIES[fam](predictions, references) for fam in sorted(families)}


def score(name: str, summed: np.ndarray) -> float:
    """The value of scalar metric `name` from column sums of its family's statistics."""
    return METRICS[name].score(summed)


def compute_metrics(names: Sequence[str], predictions: Sequence, references: Sequence,
                    stats: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """All requested metrics as one flat dict: `n`, scalars, `f1_per_class: {label: f1}`, `confusion_matrix`.

    `confusion_matrix` is `{"labels": [...], "matrix": [[count]]}` with rows = reference, columns =
    prediction (scikit-learn's convention). `stats` reuses `example_stats` already computed.
    """
    names = _checked(names)
    out: dict[str, Any] = {"n": len(predictions)}
    if not len(predictions):
        return out
    stats = stats if stats is not None else example_stats(names, predictions, references)
    for name in scalar_names(names):
        out[name] = score(name, stats[METRICS[name].family].sum(axis=0))
    if structured_names(names):
        out.update(_structured(structured_names(names), predictions, references))
    return out


def _structured(names: list[str], predictions: Sequence[str], references: Sequence[Any]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, f1_score

    y_true = [_ref_list(r)[0].strip() for r in references]
    y_pred = [str(p).strip() for p in predictions]
    labels = sorted(set(y_true) | set(y_pred))
    out: dict[str, Any] = {}
    if "f1_per_class" in names:
        f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        # Every label seen in references or predictions, so f1_macro is the mean of these values.
        out["f1_per_class"] = {lab: float(v) for lab, v in zip(labels, f1)}
    if "confusion_matrix" in names:
        cm = confusion_matrix(y_true, y_pred, labels=labels)
        out["confusion_matrix"] = {"labels": labels, "matrix": cm.tolist()}
    return out


def per_example(name: str, predictions: Sequence, references: Sequence) -> list[float]:
    """One value per example for a mean-type metric (rouge*, exact_match, accuracy), for sample views."""
    family = METRICS[name].family
    stats = FAMILIES[family](predictions, references)
    if family == "classification":
        k = stats.shape[1] // 3
        return stats[:, :k].sum(axis=1).tolist()
    col = {"rouge1": 0, "rouge2": 1, "rougeL": 2}.get(name, 0)
    if family not in ("rouge", "exact_match"):
        raise ValueError(f"{name} is a corpus-level metric: it has no per-example value")
    return stats[:, col].tolist()
