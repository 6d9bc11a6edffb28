"""monitor/report.html: each signal over time with its threshold, the alerts, the latest window and the
recommendation, as one offline page (templates/monitor_report.html, plots embedded as PNG data URIs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.core import templating
from tunelab.core.rundir import atomic_write_text
from tunelab.monitor import recommend
from tunelab.monitor.checks import FAMILIES, TITLES
from tunelab.report.plots import data_uri, figure

if TYPE_CHECKING:
    from tunelab.monitor.stage import Outcome

FAMILY_TITLES = {"input": "Input drift", "output": "Output drift", "operations": "Operations"}


def _signal_figure(windows, names: list[str], at: int | None):
    """One panel per signal, two per row: its value at each window's end, the threshold dashed, the
    reference dotted, fired windows in red, the detecting window shaded."""
    import matplotlib.pyplot as plt

    rows = (len(names) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        pts = [(w.end, w.check(name)) for w in windows if w.check(name) and w.check(name).skipped is None]
        ax.set_title(TITLES[name], fontsize=10)
        if not pts:
            ax.set_axis_off()
            why = next((w.check(name).skipped for w in reversed(windows) if w.check(name)), "")
            ax.text(0.5, 0.5, f"not run: {why}", ha="center", va="center", wrap=True, color="#777", fontsize=9)
            continue
        xs, checks = [x for x, _ in pts], [c for _, c in pts]
        ax.plot(xs, [c.value for c in checks], "o-", ms=3, lw=1, color="#1f77b4", label="value")
        hot = [(x, c.value) for x, c in pts if c.fired]
        if hot:
            ax.plot(*zip(*hot), "o", ms=6, color="#b42318", label="fired")
        if any(c.threshold is not None for c in checks):
            ax.plot(xs, [c.threshold for c in checks], "--", color="#b42318", lw=1, label="threshold")
        if any(c.reference is not None for c in checks):
            ax.plot(xs, [c.reference for c in checks], ":", color="#555", lw=1, label="reference")
        if at is not None:
            ax.axvline(windows[at].end, color="#b42318", alpha=0.25, lw=6)
        ax.set_xlabel("requests seen", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _pvalue_figure(windows, alpha: float):
    """p-values of every statistical check per window (log scale) and the per-test level they are judged at."""
    fig, ax = figure(8, 3.2)
    names = [n for n in TITLES if any((w.check(n) and w.check(n).p is not None) for w in windows)]
    for name in names:
        pts = [(w.end, max(w.check(name).p, 1e-4)) for w in windows if w.check(name) and w.check(name).p is not None]
        ax.plot(*zip(*pts), "o-", ms=3, lw=1, label=name)
    levels = [(w.end, next((c.alpha for c in w.checks if c.alpha), alpha)) for w in windows]
    ax.plot(*zip(*levels), "k--", lw=1, label=f"alpha {alpha} / tests run")
    ax.set_yscale("log")
    ax.set_xlabel("requests seen")
    ax.set_ylabel("p-value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    return fig


def _quality_figure(qwindows):
    fig, ax = figure(8, 3.2)
    first = qwindows[0]
    for name in first.values:
        xs = [w.end for w in qwindows]
        vals = [w.values[name]["value"] for w in qwindows]
        ax.plot(xs, vals, "o-", label=f"{name} on feedback")
        cis = [w.values[name]["ci"] for w in qwindows]
        if all(cis):
            ax.fill_between(xs, [c[0] for c in cis], [c[1] for c in cis], alpha=0.15)
        if first.values[name]["test"] is not None:
            ax.axhline(first.values[name]["test"], ls="--", lw=1, color=ax.lines[-1].get_color(),
                       label=f"{name} on the test set")
    hot = [(w.end, w.check.value) for w in qwindows if w.check.fired]
    if hot:
        ax.plot(*zip(*hot), "o", ms=8, color="#b42318", label="significant decline")
    ax.set_xlabel("labelled feedback items seen")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def report_context(out: "Outcome") -> dict[str, Any]:
    """What templates/monitor_report.html shows."""
    st, windows = out.status, out.windows
    families = []
    for fam, title in FAMILY_TITLES.items():
        names = [n for n in TITLES if FAMILIES[n] == fam and any(w.check(n) for w in windows)]
        if names and windows:
            fig = _signal_figure(windows, names, out.drift_at if fam != "operations" else None)
            families.append({"title": title, "plot": {"uri": data_uri(fig), "alt": f"{title} per window"}})
    latest = windows[-1] if windows else None
    rows = [[TITLES.get(c.name, c.name), c.value, c.reference, c.threshold, c.p, c.alpha, c.n,
             "FIRED" if c.fired else (c.skipped and f"not run: {c.skipped}") or "ok"] for c in (latest.checks if latest else [])]
    return {
        "status": st, "families": families, "latest_rows": rows, "latest": latest,
        "pvalues": {"uri": data_uri(_pvalue_figure(windows, out.cfg.alpha)), "alt": "p-values per window"}
        if windows else None,
        "quality": {"uri": data_uri(_quality_figure(out.quality)), "alt": "quality on labelled feedback"}
        if out.quality else None,
        "quality_rows": [[f"{w.start + 1}-{w.end}", w.check.value, w.check.reference, w.check.p,
                          "FIRED" if w.check.fired else "ok"] for w in out.quality],
        "reasons": recommend.reasons(windows, out.drift_at, out.quality, out.quality_at, out.cfg),
        "candidates": out.candidates[:10],
        "window_rows": [[f"{w.start + 1}-{w.end}", w.time_end, ", ".join(c.name for c in w.fired()) or "-",
                         ", ".join(c.name for c in w.fired(("operations",))) or "-"] for w in windows],
    }


def render_report(out: "Outcome", path: Path) -> Path:
    """Write monitor/report.html for a monitoring pass."""
    atomic_write_text(path, templating.render("monitor_report.html", **report_context(out)))
    return path
