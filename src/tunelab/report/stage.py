"""The `report` stage: report.md (with loss.png) and the self-contained report.html of a run folder,
rebuilt from the run's own files at any point of its life."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import Config
from tunelab.core.rundir import RunDir, atomic_write_bytes
from tunelab.evaluate.verdict import overfitting
from tunelab.report.html import render_html
from tunelab.report.markdown import render_markdown
from tunelab.report.plots import loss_figure, png_bytes


def run(cfg: Config, rd: RunDir) -> Path:
    """Write report.md, loss.png and report.html; return the path of report.html."""
    with rd.stage("report"):
        log = rd.read_log()
        fig = loss_figure(log, rd.metrics().get("train", {}).get("best_step"), overfitting(log)["overfit_from"])
        if fig is not None:
            atomic_write_bytes(rd.loss_plot, png_bytes(fig))
        markdown = render_markdown(cfg, rd.metrics(), rd.loss_plot.name if fig is not None else None)
        return rd.write_report(markdown, render_html(rd))
