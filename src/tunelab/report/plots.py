"""Plots of a run, shared by report.md (saved as a PNG file) and report.html (embedded as data: URIs): the
loss curve, the learning-rate schedule, the metric bars of each system, the confusion matrix and per-class F1."""

from __future__ import annotations

import base64
import io

from tunelab.report.markdown import SYSTEM_NAMES


def figure(w: float, h: float):
    """A new matplotlib figure and axes, on the headless Agg backend (reports render on servers and in CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(w, h))


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def data_uri(fig) -> str:
    """The figure as a `data:image/png;base64,...` URI (pages embed it, so they need no other file); closed."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode()


def train_points(log: list[dict]) -> list[dict]:
    """Logged training steps (with a training loss) from metrics.jsonl."""
    return [r for r in log if "loss" in r and "step" in r and "eval_loss" not in r]


def eval_points(log: list[dict]) -> list[dict]:
    """Logged validations from metrics.jsonl."""
    return [r for r in log if "eval_loss" in r and "step" in r]


def loss_figure(log: list[dict], best_step: int | None, overfit_from: int | None = None):
    """Train and validation loss against step, the best step marked and any overfitting span shaded;
    None when nothing was logged."""
    train, evals = train_points(log), eval_points(log)
    if not train and not evals:
        return None
    fig, ax = figure(8, 3.6)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="validation loss")
    if best_step is not None:
        ax.axvline(best_step, color="green", ls="--", label=f"best step {best_step}")
    if overfit_from is not None:
        ax.axvspan(overfit_from, max(r["step"] for r in train + evals), color="red", alpha=0.08,
                   label="val rises, train falls")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per supervised token)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def lr_figure(log: list[dict]):
    """The learning rate against step; None when none was logged."""
    lr = [r for r in train_points(log) if "lr" in r or "learning_rate" in r]
    if not lr:
        return None
    fig, ax = figure(8, 2.4)
    ax.plot([r["step"] for r in lr], [r.get("lr", r.get("learning_rate")) for r in lr])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return fig


def metric_bars(test: dict, systems: list[str], names: list[str]) -> list:
    """Bars of each system's metrics with their 95% intervals: one figure for scores, one for perplexity."""
    import numpy as np

    groups = [[n for n in names if n != "perplexity"], [n for n in names if n == "perplexity"]]
    figs = []
    for group in [g for g in groups if g]:
        fig, ax = figure(max(5, 1.3 * len(group) * len(systems) / 2), 3.4)
        width = 0.8 / len(systems)
        for i, s in enumerate(systems):
            e = test[s]
            vals = [e.get(m, np.nan) for m in group]
            cis = [(e.get("ci") or {}).get(m) for m in group]
            err = np.array([[v - c[0], c[1] - v] if c else [0, 0] for v, c in zip(vals, cis)]).T
            ax.bar(np.arange(len(group)) + i * width, vals, width, yerr=np.clip(err, 0, None), capsize=3,
                   label=SYSTEM_NAMES.get(s, s))
        ax.set_xticks(np.arange(len(group)) + width * (len(systems) - 1) / 2, group)
        ax.set_ylabel("lower is better" if group == ["perplexity"] else "score (95% CI)")
        ax.legend(), ax.grid(axis="y", alpha=0.3)
        figs.append(fig)
    return figs


def confusion_figure(labels: list[str], matrix: list[list[int]]):
    """The confusion matrix, coloured by recall per true class, with counts in the cells when they fit."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    size = max(4.5, 0.14 * len(labels))
    fig, ax = figure(size, size)
    # Row-normalised colour (recall per true class); small classes would vanish in raw counts.
    ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 100:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=max(4, 9 - len(labels) // 15))
        ax.set_yticks(range(len(labels)), labels, fontsize=max(4, 9 - len(labels) // 15))
    if len(labels) <= 20:  # small matrices: the counts themselves fit in the cells
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, int(v), ha="center", va="center", fontsize=8, color="black" if v < m.max() / 2 else "white")
    ax.set_xlabel("predicted"), ax.set_ylabel("reference")
    return fig


def f1_figure(f1: dict[str, float], order: list[str]):
    """Horizontal bars of the per-class F1, in `order`."""
    # 77 Banking77 classes at 0.16 in and 4 pt each were unreadable once scaled to a page's width.
    fig, ax = figure(7, max(2.0, 0.2 * len(order)))
    ax.barh(range(len(order)), [f1[k] for k in order])
    ax.set_yticks(range(len(order)), order, fontsize=max(5, 9 - len(order) // 20))
    ax.set_xlim(0, 1), ax.set_xlabel("F1 (fine-tuned)"), ax.grid(axis="x", alpha=0.3)
    return fig
