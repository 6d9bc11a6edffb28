"""`monitor:` — how `tunelab monitor`, the checks inside `tunelab serve` and `tunelab retrain` judge production
traffic (every field documented once; docs/monitoring.md explains each check and how the defaults were chosen).

Statistical checks (input and output drift, quality) fire on a p-value below `alpha` divided by the number
of tests run on the window (Bonferroni), so a window of same-distribution traffic raises a false alarm
with probability at most `alpha`; most also need an effect at least as large as their floor, so a huge
window never flags a shift too small to matter. Operational checks compare a rate with a threshold.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from tunelab.config._section import Section

REFUSALS = [r"\bI(?:'m| am) (?:sorry|unable|not able)\b", r"\bI (?:can(?:no|')t|won't|will not)\b",
            r"\bas an AI\b", r"\bI do(?:n't| not) have (?:access|the ability)\b"]


class MonitorConfig(Section):
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="False-alarm rate per window: the statistical checks of a window share it (Bonferroni), and a check fires when its p-value is below alpha / (tests run on the window).")
    window: int = Field(200, ge=20, description="Requests of the monitored model per window (any status; drift checks use the answered ones). The documented power (docs/monitoring.md) is for 200.")
    step: int = Field(100, ge=1, description="Requests between the starts of consecutive windows (window = step: disjoint windows).")
    consecutive: int = Field(2, ge=1, description="A retrain recommendation needs drift or a quality decline in this many consecutive windows (one noisy window is not enough).")
    reference_size: int = Field(1000, ge=50, description="Training inputs sampled (seeded) as the reference the windows are compared with.")
    permutations: int = Field(500, ge=50, description="Permutations for the embedding MMD p-value (its resolution is 1 / (permutations + 1)).")
    encoder: str = Field("minilm-l6", description="Sentence encoder for embedding drift: the embedded `minilm-l6` (all-MiniLM-L6-v2), or a local encoder folder.")
    max_length: int = Field(128, ge=8, description="Tokens of an input the encoder reads (longer inputs are truncated).")
    auc_min: float = Field(0.6, ge=0.5, le=1.0, description="Domain-classifier drift also needs a cross-validated AUC of at least this (0.5 = training and window inputs indistinguishable).")
    psi_min: float = Field(0.1, ge=0.0, description="Length, label and confidence shifts also need a population stability index of at least this (0.1: the usual 'moderate shift' level; 0.25 'large').")
    oov_min_increase: float = Field(0.02, ge=0.0, description="Vocabulary shift also needs the out-of-vocabulary word rate to rise by at least this much over the training data's own rate.")
    confidence_drop: float = Field(0.1, ge=0.0, le=1.0, description="Confidence shift also needs the mean top-label probability to fall by at least this much below the reference (the model's confidence on its validation inputs).")
    max_error_rate: float = Field(0.02, ge=0.0, le=1.0, description="Operations: share of requests answered with a server error (5xx) or turned away (429) above which a window is flagged.")
    max_p95_latency_ms: float = Field(5000.0, gt=0.0, description="Operations: 95th-percentile latency (ms) of successful requests above which a window is flagged.")
    max_empty_rate: float = Field(0.05, ge=0.0, le=1.0, description="Output: share of successful generations with no text (no completion tokens) above which a window is flagged.")
    max_refusal_rate: float = Field(0.05, ge=0.0, le=1.0, description="Output: share of logged answers matching `refusal_patterns` above which a window is flagged (needs serve.log_prompts).")
    refusal_patterns: list[str] = Field(default_factory=lambda: list(REFUSALS), description="Regular expressions (case-insensitive) an answer that refuses matches.")
    feedback_window: int = Field(100, ge=10, description="Labelled feedback items per quality window (ordered by request time).")
    min_feedback: int = Field(30, ge=5, description="Quality is judged only on windows with at least this many labelled feedback items.")
    candidates: int = Field(200, ge=0, description="Drifted inputs listed in the retrain recommendation for labelling (the least training-like first).")
    live_every_requests: int = Field(200, ge=0, description="`tunelab serve`: run the checks on the latest window after this many new requests (0: never by count).")
    live_every_s: float = Field(300.0, ge=0.0, description="`tunelab serve`: run the checks at most this often and at least this often while traffic arrives (0: never by time).")
    live: bool = Field(False, description="`tunelab serve`: run the checks inside the server on the newest window and export them as `tunelab_monitor_*` gauges on /metrics (also `tunelab serve --monitor`). Off by default: the embedding checks load the encoder (~90 MB) and take CPU from answering. Input drift needs serve.log_prompts.")
    holdout_fraction: float = Field(0.3, gt=0.0, lt=0.9, description="`tunelab retrain`: share of the new labelled data held out (stratified, seeded) to compare champion and challenger on.")
    seed: int = Field(0, description="Seed for the reference sample, permutations and cross-validation folds.")

    @model_validator(mode="after")
    def _step_fits(self) -> "MonitorConfig":
        if self.step > self.window:
            raise ValueError(f"monitor.step ({self.step}) must not exceed monitor.window ({self.window}): "
                             "requests between windows would never be checked")
        return self
