"""The predictions browser: a run's test predictions, filterable by system, right/wrong and class, a page at a time.

Right or wrong is the evaluation's own per-example score (evaluate/metrics.py): accuracy for a closed
label set, exact match for free text; rows that carry no prediction (language-model scoring) have
no right/wrong and show their token count and loss instead.
"""

from __future__ import annotations

from typing import Any

from tunelab.core.rundir import RunDir
from tunelab.evaluate import metrics as M
from tunelab.report.markdown import SYSTEM_NAMES

PAGE_SIZE = 50


def scored(rd: RunDir) -> dict[str, Any]:
    """Every prediction row with `correct` (bool, or None when not scored), and the systems and classes seen."""
    rows = rd.predictions()
    labels = rd.data.manifest().get("labels") or []
    metric = "accuracy" if labels else "exact_match"
    by_system: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if "prediction" in r and r.get("reference") is not None:
            by_system.setdefault(str(r.get("system")), []).append(i)
    correct: dict[int, bool] = {}
    for idx in by_system.values():
        scores = M.per_example(metric, [str(rows[i]["prediction"]) for i in idx], [rows[i]["reference"] for i in idx])
        correct.update({i: s > 0 for i, s in zip(idx, scores)})
    out = [{**r, "correct": correct.get(i), "system_name": SYSTEM_NAMES.get(str(r.get("system")), r.get("system"))}
           for i, r in enumerate(rows)]
    systems = [(s, SYSTEM_NAMES.get(s, s)) for s in dict.fromkeys(str(r.get("system")) for r in rows)]
    classes = sorted({str(r["reference"]) for r in rows if isinstance(r.get("reference"), str)}) if labels else []
    return {"rows": out, "systems": systems, "classes": classes, "metric": metric}


def browse(table: dict[str, Any], system: str = "", outcome: str = "", label: str = "", page: int = 1) -> dict[str, Any]:
    """One page of `scored(...)` rows after the filters; `outcome` is "right" or "wrong"; `label` matches the
    reference or the prediction."""
    rows = table["rows"]
    if system:
        rows = [r for r in rows if str(r.get("system")) == system]
    if outcome in ("right", "wrong"):
        rows = [r for r in rows if r["correct"] is (outcome == "right")]
    if label:
        rows = [r for r in rows if str(r.get("reference")) == label or str(r.get("prediction")) == label]
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(1, page), pages)
    return {"rows": rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE], "total": len(rows), "page": page, "pages": pages}
