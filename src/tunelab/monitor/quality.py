"""Quality from labelled feedback: the served answers scored against what people labelled them, with a
bootstrap interval, compared with the run's test score, and a one-sided test for a significant decline.

Feedback is a CSV/JSONL file (read like training data) with a `request_id` column naming the logged
request and the correct answer in the run's output column (or `label`/`output`); any other columns
(the input text, for retraining) are carried along. Each row is matched with the request log's answer;
a row that matches no request of the monitored model is reported as dropped with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.config.monitor import MonitorConfig
from tunelab.data.ingest import ingest
from tunelab.data.problems import Problems
from tunelab.evaluate import metrics as M
from tunelab.evaluate.significance import bootstrap_ci
from tunelab.monitor.checks import Check
from tunelab.monitor.windows import spans

ANSWER_COLUMNS = ("label", "output", "expected", "answer")


@dataclass
class Feedback:
    """Labelled feedback joined with the served answers, in request-time order."""

    items: list[dict]                                 # {request_id, time, expected, answered, row}
    file: str
    dropped: dict[str, int] = field(default_factory=dict)
    column: str = ""


def read_feedback(path: Path, requests: list[dict], all_requests: dict[str, dict], output_column: str | None) -> Feedback:
    """Feedback rows matched with the monitored model's requests (by request id).

    Raises:
        DataError: an unreadable file, or one without a request_id or answer column (file and column named).
    """
    problems = Problems()
    ing = ingest(str(path), Path("."), "auto", "utf-8", problems)
    problems.raise_if_errors(f"cannot read the feedback file {path}")
    columns = list(ing.columns)
    wanted = [c for c in ((output_column,) if output_column else ()) + ANSWER_COLUMNS if c]
    answer = next((c for c in wanted if c in columns), None)
    if "request_id" not in columns or answer is None:
        missing = "request_id" if "request_id" not in columns else f"an answer column ({', '.join(wanted)})"
        problems.add("missing_column", str(path), 1, missing, "request_id and the correct answer per row",
                     f"columns {columns}", hint="feedback names the request it labels by the request log's request_id")
        problems.raise_if_errors("cannot use the feedback")
    mine = {r["request_id"]: r for r in requests}
    items, dropped = [], {}
    for row in ing.rows:
        rid, expected = str(row.fields.get("request_id") or ""), row.fields.get(answer)
        reason = None
        if expected is None or str(expected).strip() == "":
            reason = "no_answer"
        elif rid not in mine:
            reason = "other_model" if rid in all_requests else "request_not_in_log"
        elif (mine[rid].get("label") if mine[rid].get("label") is not None else mine[rid].get("output")) is None:
            reason = "answer_not_logged"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        req = mine[rid]
        served = req["label"] if req.get("label") is not None else req["output"]
        items.append({"request_id": rid, "time": req["time"], "expected": str(expected).strip(),
                      "answered": str(served).strip(), "row": row.fields, "line": row.line})
    items.sort(key=lambda it: it["time"])
    return Feedback(items, str(path), dropped, answer)


def metric_names(labels: list[str] | None, configured: list[str] | None) -> list[str]:
    """The scalar metrics quality is reported in; the first one with a per-example value is tested."""
    names = M.scalar_names(M.metrics_for("classification" if labels else "generation", configured))
    return names[:2] or ["accuracy"]


def _decline_p(name: str, window: list[float], test: list[float]) -> float:
    """One-sided p-value that the window scores lower than the test set on `name`."""
    from scipy.stats import fisher_exact, ttest_ind

    if name in ("accuracy", "exact_match"):
        a, b = int(sum(window)), int(sum(test))
        return float(fisher_exact([[a, len(window) - a], [b, len(test) - b]], alternative="less")[1])
    if np.ptp(np.r_[window, test]) == 0:
        return 1.0
    return float(ttest_ind(window, test, equal_var=False, alternative="less").pvalue)


@dataclass
class QualityWindow:
    """Feedback items [start, end) in request-time order and their quality check."""

    index: int
    start: int
    end: int
    time_start: str
    time_end: str
    values: dict              # metric -> {value, ci, test}
    check: Check

    def to_dict(self) -> dict:
        return {"index": self.index, "feedback": [self.start + 1, self.end], "time": [self.time_start, self.time_end],
                "metrics": self.values, "check": self.check.to_dict()}


def check_quality(fb: Feedback, test_rows: list[dict], test_score: dict, names: list[str],
                  cfg: MonitorConfig) -> list[QualityWindow]:
    """Quality over windows of `feedback_window` items (step half a window; one window for fewer items),
    each against the test set: the first metric is tested for a decline at `alpha`."""
    primary = names[0]
    test_pred = [r["prediction"] for r in test_rows]
    test_ref = [r["reference"] for r in test_rows]
    test_each = M.per_example(primary, test_pred, test_ref) if test_rows else []
    n = len(fb.items)
    todo = spans(n, cfg.feedback_window, max(1, cfg.feedback_window // 2)) or ([(0, n)] if n >= cfg.min_feedback else [])
    out = []
    for i, (a, b) in enumerate(todo):
        part = fb.items[a:b]
        preds, refs = [it["answered"] for it in part], [it["expected"] for it in part]
        values = {}
        found = M.compute_metrics(names, preds, refs)
        ci = bootstrap_ci(names, preds, refs, samples=1000, seed=cfg.seed)
        for name in names:
            values[name] = {"value": found.get(name), "ci": ci.get(name), "test": test_score.get(name),
                            "test_ci": (test_score.get("ci") or {}).get(name)}
        check = Check(f"quality_{primary}", found.get(primary), test_score.get(primary), None, None, len(part))
        if not test_each:
            check.skipped = "the run has no test predictions (predictions.jsonl) to compare with"
        else:
            check.p = _decline_p(primary, M.per_example(primary, preds, refs), test_each)
            check.alpha = cfg.alpha
            check.fired = check.p < cfg.alpha
        out.append(QualityWindow(i, a, b, part[0]["time"], part[-1]["time"], values, check))
    return out
