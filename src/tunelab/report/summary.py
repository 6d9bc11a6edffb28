"""A run's one-line summary: the row of the dashboard's runs table (status, task, model, method, headline test
metric against the best baseline with intervals, gain, p-value, training time, tokens/s, dates, tags).

`summarize` computes it from the run's small files (config.yaml, status.json, metrics.json, tags.json).
Every `RunDir` writer of those files calls it and stores the row in the run's summary file (see
`RunDir.refresh_summary`), so a reader of many runs (the dashboard) reads one small file per run instead of
parsing each run's YAML config and its Banking77-sized metrics.json (confusion matrices, per-class F1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from tunelab.core.rundir import RunDir, RunDirError
from tunelab.report.html import headline

# The summary needs only strings from config.yaml (task, model, method, created): the C base loader
# builds no typed values and reads a config ~30% faster than the C safe loader (measured: 1.75 vs 2.5 ms
# at load 11 on 2 cores); it is absent on builds without libyaml.
_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


@dataclass
class Summary:
    """One row of the runs table."""

    name: str
    status: str = "new"
    stage: str | None = None
    error: str | None = None
    task: str = "?"
    model: str = "?"
    method: str = "?"
    created: str = ""
    updated: str = ""
    metric: str | None = None          # the fine-tuned model's headline test metric
    metric_value: float | None = None
    metric_ci: list[float] | None = None
    baseline: str | None = None        # the best baseline on that metric
    baseline_value: float | None = None
    baseline_ci: list[float] | None = None
    gain: float | None = None          # fine-tuned minus best baseline (signed so that > 0 is better)
    p_value: float | None = None       # fine-tuned vs that baseline (paired test)
    train_seconds: float | None = None
    tokens_per_second: float | None = None
    tags: list[str] = field(default_factory=list)
    problem: str | None = None         # a file that could not be read

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Summary":
        """A row read back from a summary file (keys this version does not know are ignored)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in known})


def _read_config(rd: RunDir) -> tuple[dict, dict]:
    doc = yaml.load(rd.config_path.read_text(encoding="utf-8"), Loader=_LOADER) or {}
    return doc, doc.get("_meta") or {}


def _best_baseline(head: dict) -> dict | None:
    """The baseline the fine-tuned model is judged against: the best one measured on the headline metric."""
    measured = [b for b in head["baselines"] if b.get("value") is not None]
    if not measured:
        return None
    # `better` is true when the fine-tuned model beats that baseline; the best baseline is the one with the
    # smallest gain over it (a gain is signed so that > 0 means the fine-tuned model is better).
    return min(measured, key=_signed_gain)


def _signed_gain(b: dict) -> float:
    if not b["delta"]:
        return 0.0
    return abs(b["delta"]) if b["better"] else -abs(b["delta"])


def summarize(rd: RunDir) -> Summary:
    """The runs-table row of `rd` read from its files; unreadable files leave their fields empty and name the problem."""
    s = Summary(rd.name)
    try:
        cfg, meta = _read_config(rd)
        s.task, s.created = str(cfg.get("task", "?")), str(meta.get("created", ""))
        s.model = str((cfg.get("model") or {}).get("name", "?"))
        s.method = str((cfg.get("method") or {}).get("name", "?"))
        st = rd.status()
        s.status, s.stage, s.error, s.updated = rd.state(), st.get("stage"), st.get("error"), st.get("updated", "")
        metrics = rd.metrics()
        s.tags = rd.tags()
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RunDirError) as e:
        s.problem = str(e)
        return s
    try:
        _metrics(s, metrics)
    except (AttributeError, KeyError, TypeError, ValueError) as e:   # a metrics.json edited by hand or half-migrated
        s.problem = f"{rd.metrics_json}: {type(e).__name__}: {e}"
    return s


def _metrics(s: Summary, metrics: dict) -> None:
    train = metrics.get("train") or {}
    s.train_seconds, s.tokens_per_second = train.get("wall_seconds"), train.get("tokens_per_second")
    head = headline(metrics.get("test") or {})
    if head is None:
        return
    s.metric, s.metric_value, s.metric_ci = head["metric"], head["value"], head["ci"]
    # The test metric is the whole test set's when the baselines were measured on a subset of it (the gain and
    # its p-value stay the paired comparison on that subset).
    full = (metrics.get("test") or {}).get("finetuned_full_test") or {}
    if isinstance(full.get(s.metric), (int, float)):
        s.metric_value, s.metric_ci = full[s.metric], (full.get("ci") or {}).get(s.metric)
    best = _best_baseline(head)
    if best is not None:
        s.baseline, s.baseline_value, s.baseline_ci = best["name"], best["value"], best.get("ci")
        s.gain, s.p_value = _signed_gain(best), best.get("p")
