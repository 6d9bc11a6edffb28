"""Plots of a run, shared by report.md (saved as a PNG file) and report.html (embedded): the loss curve
and the learning-rate schedule."""

from __future__ import annotations

import io


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
