"""What a served model's card page shows: the run's test metrics against its zero-/few-shot baselines,
read from the run folder (or the export's model card when only the export is served)."""

from __future__ import annotations

from tunelab.report.markdown import comparison_rows


def card_rows(served) -> dict:
    """The card of a served model: description lines and the comparison table's columns and rows."""
    p = served.predictor
    cfg = p.cfg
    about = {"run": p.name, "task": cfg.task, "base model": cfg.model.name, "method": cfg.method.name,
             "serving": served.serving, "labels": len(served.labels) if served.labels else "open-ended"}
    if served.is_base:
        return {"about": {"base model of": p.name, "model": cfg.model.name}, "cols": [], "rows": [],
                "note": "The untuned base model: its zero-/few-shot scores are on the card of " + p.name}
    metrics = p.rd.metrics() if p.rd is not None else {}
    cols, rows = comparison_rows(metrics)
    note = None if rows else ("No test metrics: this model is served from an export; its README.md carries them"
                              if p.rd is None else "No test metrics in the run folder.")
    return {"about": about, "cols": cols, "rows": rows, "note": note}
