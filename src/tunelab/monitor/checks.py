"""The checks of one window of production traffic against the reference, and how a window is judged.

Families: `input` drift (embedding MMD, domain-classifier AUC, vocabulary, length), `output` drift
(label mix, confidence, empty and refusing answers) and `operations` (error rate, p95 latency). A
statistical check fires when its p-value is below alpha / (statistical checks run on the window) and
its effect reaches its floor; a rate check fires above its threshold. A check that cannot run says why.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from tunelab.config.monitor import MonitorConfig
from tunelab.monitor import stats
from tunelab.monitor.reference import Reference
from tunelab.monitor.traffic import answered, is_error

MIN_SAMPLE = 20   # fewer observations than this in a window: the check does not run

TITLES = {
    "embedding_mmd": "input embeddings: MMD² (permutation test)",
    "domain_classifier": "input embeddings: domain-classifier AUC",
    "vocabulary": "input vocabulary: out-of-vocabulary word rate",
    "length": "input length: PSI of prompt tokens",
    "labels": "answered labels: PSI vs expected mix",
    "confidence": "confidence: mean top-label probability",
    "empty": "empty answers: rate",
    "refusals": "refusing answers: rate",
    "error_rate": "errors (5xx, 429): rate",
    "p95_latency_ms": "latency: p95 (ms)",
}
FAMILIES = {"embedding_mmd": "input", "domain_classifier": "input", "vocabulary": "input", "length": "input",
            "labels": "output", "confidence": "output", "empty": "output", "refusals": "output",
            "error_rate": "operations", "p95_latency_ms": "operations"}


@dataclass
class Check:
    """One signal of one window: its value, the reference value, the threshold, the p-value and the verdict."""

    name: str
    value: float | None = None
    reference: float | None = None
    threshold: float | None = None      # effect floor (statistical checks) or limit (rate checks)
    p: float | None = None              # None: a rate check
    n: int = 0
    effect_ok: bool = True
    fired: bool = False
    skipped: str | None = None          # why the check did not run
    alpha: float | None = None          # the per-test level it was judged at

    @property
    def family(self) -> str:
        return FAMILIES.get(self.name) or ("quality" if self.name.startswith("quality_") else "other")

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _skip(name: str, why: str, n: int = 0) -> Check:
    return Check(name, n=n, skipped=why)


def single(r: dict) -> bool:
    """A request with one input: a batch classification logs its inputs joined and no label."""
    return not (r["route"].endswith("classifications") and r.get("label") is None)


def input_checks(ref: Reference, ok: list[dict], cfg: MonitorConfig, encoder, rng: np.random.Generator) -> list[Check]:
    """Embedding MMD, domain classifier, vocabulary (need logged inputs) and length (prompt tokens)."""
    out = []
    lengths = [r["prompt_tokens"] for r in ok if single(r)]
    if len(lengths) < MIN_SAMPLE:
        out.append(_skip("length", f"{len(lengths)} single-input requests (< {MIN_SAMPLE})", len(lengths)))
    else:
        res = stats.binned_shift(ref.lengths, np.asarray(lengths), rng)
        out.append(Check("length", res.value, None, cfg.psi_min, res.p, len(lengths), res.value >= cfg.psi_min))
    texts = [r["input"] for r in ok if single(r) and r.get("input") is not None]
    names = ("embedding_mmd", "domain_classifier", "vocabulary")
    if not texts:
        why = "the request log holds no input text (serve.log_prompts is off)"
        return out + [_skip(n, why) for n in names]
    if len(texts) < MIN_SAMPLE:
        return out + [_skip(n, f"{len(texts)} logged inputs (< {MIN_SAMPLE})", len(texts)) for n in names]
    if ref.embeddings is None:
        ref.embeddings = encoder(ref.texts)
    y = encoder(texts)
    res = stats.mmd(ref.embeddings, y, cfg.permutations, rng)
    out.append(Check("embedding_mmd", res.value, None, None, res.p, len(texts)))
    res = stats.domain_classifier(ref.embeddings, y, cfg.seed)
    out.append(Check("domain_classifier", res.value, 0.5, cfg.auc_min, res.p, len(texts), res.value >= cfg.auc_min))
    fracs, unknown, total = stats.oov_fractions(texts, ref.vocabulary)
    rate = unknown / max(total, 1)
    out.append(Check("vocabulary", rate, ref.oov_rate, ref.oov_rate + cfg.oov_min_increase,
                     stats.greater(fracs, ref.oov, rng), len(texts), rate - ref.oov_rate >= cfg.oov_min_increase))
    return out


def output_checks(ref: Reference, ok: list[dict], cfg: MonitorConfig, rng: np.random.Generator) -> list[Check]:
    """Label mix and confidence (label-set runs); empty and refusing answers (generating runs)."""
    if ref.labels:
        return _label_checks(ref, ok, cfg, rng)
    out = []
    generated = [r for r in ok if r.get("label") is None and not r["route"].endswith("classifications")]
    if len(generated) < MIN_SAMPLE:
        out.append(_skip("empty", f"{len(generated)} generated answers (< {MIN_SAMPLE})", len(generated)))
    else:
        rate = float(np.mean([r["completion_tokens"] == 0 or (r.get("output") is not None and not r["output"].strip())
                              for r in generated]))
        out.append(Check("empty", rate, None, cfg.max_empty_rate, None, len(generated), fired=rate > cfg.max_empty_rate))
    texts = [r["output"] for r in generated if r.get("output") is not None]
    if len(texts) < MIN_SAMPLE:
        why = ("the request log holds no answer text (serve.log_prompts is off)" if not texts
               else f"{len(texts)} logged answers (< {MIN_SAMPLE})")
        out.append(_skip("refusals", why, len(texts)))
    else:
        patterns = [re.compile(p, re.IGNORECASE) for p in cfg.refusal_patterns]
        rate = float(np.mean([any(p.search(t) for p in patterns) for t in texts]))
        out.append(Check("refusals", rate, None, cfg.max_refusal_rate, None, len(texts), fired=rate > cfg.max_refusal_rate))
    return out


def _label_checks(ref: Reference, ok: list[dict], cfg: MonitorConfig, rng: np.random.Generator) -> list[Check]:
    out = []
    index = {l: i for i, l in enumerate(ref.labels)}
    answers = [index[r["label"]] for r in ok if r.get("label") in index]
    if len(answers) < MIN_SAMPLE:
        out.append(_skip("labels", f"{len(answers)} answered labels (< {MIN_SAMPLE})", len(answers)))
    else:
        res = stats.label_shift(ref.expected, np.bincount(answers, minlength=len(ref.labels)), rng)
        out.append(Check("labels", res.value, None, cfg.psi_min, res.p, len(answers), res.value >= cfg.psi_min))
    probs = np.asarray([r["label_probability"] for r in ok if r.get("label_probability") is not None], float)
    if len(probs) < MIN_SAMPLE:
        out.append(_skip("confidence", "the requests did not ask for label probabilities" if not len(probs)
                         else f"{len(probs)} label probabilities (< {MIN_SAMPLE})", len(probs)))
    elif ref.confidence is None or not len(ref.confidence):
        out.append(_skip("confidence", "no reference confidence (the model's probabilities on its validation inputs)",
                         len(probs)))
    else:
        base = float(ref.confidence.mean())
        drop = base - float(probs.mean())
        out.append(Check("confidence", float(probs.mean()), base, base - cfg.confidence_drop,
                         stats.greater(-probs, -ref.confidence, rng), len(probs), drop >= cfg.confidence_drop))
    return out


def operations(requests: list[dict], ok: list[dict], cfg: MonitorConfig) -> list[Check]:
    """Error rate over every request of the window, p95 latency over the answered ones."""
    rate = float(np.mean([is_error(r) for r in requests])) if requests else 0.0
    out = [Check("error_rate", rate, None, cfg.max_error_rate, None, len(requests), fired=rate > cfg.max_error_rate)]
    latency = stats.p95([r["latency_ms"] for r in ok])
    if latency is None:
        out.append(_skip("p95_latency_ms", "no answered request"))
    else:
        out.append(Check("p95_latency_ms", latency, None, cfg.max_p95_latency_ms, None, len(ok),
                         fired=latency > cfg.max_p95_latency_ms))
    return out


def judge(checks: list[Check], alpha: float) -> None:
    """Bonferroni over the statistical checks that ran: each is judged at alpha / their number."""
    tests = [c for c in checks if c.p is not None and c.skipped is None]
    level = alpha / max(len(tests), 1)
    for c in tests:
        c.alpha = level
        c.fired = c.p < level and c.effect_ok


def check_window(ref: Reference, requests: list[dict], cfg: MonitorConfig, encoder, seed: int) -> list[Check]:
    """Every check of one window, judged."""
    rng = np.random.default_rng(seed)
    ok = [r for r in requests if answered(r)]
    checks = input_checks(ref, ok, cfg, encoder, rng) + output_checks(ref, ok, cfg, rng) + operations(requests, ok, cfg)
    judge(checks, cfg.alpha)
    return checks
