"""Training curves for the dashboard's charts: the points of metrics.jsonl, read incrementally.

The run page's script (static/ui/charts.js) asks for the records after the byte offset it has seen
and appends them, so a step logged by a training process shows up at the next poll (every 2 s) and a
long log is never re-sent. A log that shrank (the run was replaced) is answered from the start with
`reset`, so the chart never mixes two runs.
"""

from __future__ import annotations

from typing import Any

from tunelab.core.rundir import RunDir

# name in metrics.jsonl -> what the chart calls it. `loss` rows without `eval_loss` are training steps.
SERIES = {"loss": "train loss", "eval_loss": "validation loss", "learning_rate": "learning rate",
          "grad_norm": "grad norm"}


def points(records: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """`{series: [[step, value], ...]}` for the curves the records hold (non-numeric values skipped)."""
    out: dict[str, list[list[float]]] = {k: [] for k in SERIES}
    for r in records:
        step = r.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key in SERIES:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:   # v == v: not NaN
                if key == "loss" and "eval_loss" in r:
                    continue
                out[key].append([step, v])
    return out


def since(rd: RunDir, offset: int) -> dict[str, Any]:
    """The curve points logged at or after byte `offset` of metrics.jsonl, the next offset and the run's state."""
    size = rd.metrics_jsonl.stat().st_size if rd.metrics_jsonl.is_file() else 0
    reset = offset > size
    records, end = rd.read_log_tail(0 if reset else max(offset, 0))
    return {"offset": end, "reset": reset, "state": rd.state(), "points": points(records)}
