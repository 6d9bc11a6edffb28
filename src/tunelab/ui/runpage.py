"""A run's page: its summary row, live curves, and the report's sections (report/html.py's context, rendered with
the report's own section templates), re-built only when the run's files change."""

from __future__ import annotations

from typing import Any

from tunelab.core.rundir import RunDir
from tunelab.report.html import report_context
from tunelab.ui.index import read_row
from tunelab.ui.state import Dashboard

# The report's "training" section is replaced on this page by the live charts; the rest are shown as in report.html.
LIVE = ("training",)
CHARTS = [("loss", "Loss", ["loss", "eval_loss"]), ("lr", "Learning rate", ["learning_rate"]),
          ("grad", "Gradient norm", ["grad_norm"])]


def _stamp(rd: RunDir) -> tuple:
    out = []
    for p in (*rd.summary_files(), rd.predictions_path, rd.data.manifest_path):
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _sections(rd: RunDir) -> dict[str, Any]:
    ctx = report_context(rd)
    ctx["sections"] = [s for s in ctx["sections"] if s["id"] not in LIVE]
    return ctx


def run_context(dash: Dashboard, rd: RunDir) -> dict[str, Any]:
    """Everything templates/ui/run.html shows for `rd`."""
    report = dash.cached(f"report:{rd.name}", _stamp(rd), lambda: _sections(rd))
    return {"name": rd.name, "summary": read_row(rd)[0], "report": report, "charts": CHARTS,
            "downloads": sorted(rd.downloads()), "exported": rd.export_dir.is_dir()}
