"""`report.md` and the loss-curve PNG of a run folder (the HTML report is report_html.py)."""

from __future__ import annotations

from pathlib import Path

from tunelab.rundir import RunDir

SYSTEM_ORDER = ["zero_shot", "few_shot", "finetuned", "finetuned_full_test"]
SYSTEM_NAMES = {"zero_shot": "zero-shot (base)", "few_shot": "few-shot (base)",
                "finetuned": "fine-tuned", "finetuned_full_test": "fine-tuned, full test set"}
HEADLINE = ["accuracy", "f1_macro", "rouge1", "rouge2", "rougeL", "bleu", "perplexity"]


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def comparison_table(metrics: dict) -> str:
    """A Markdown table: one row per system, the headline metrics the run has, and n."""
    test = metrics.get("test", {})
    systems = [s for s in SYSTEM_ORDER if s in test] + [s for s in test if s not in SYSTEM_ORDER]
    if not systems:
        return "(no test metrics)"
    cols = [m for m in HEADLINE if any(m in test[s] for s in systems)]
    lines = ["| system | " + " | ".join(cols) + " | n |", "|---" * (len(cols) + 2) + "|"]
    for s in systems:
        ci = test[s].get("ci", {})
        cells = []
        for m in cols:
            v = test[s].get(m)
            cell = _fmt(v) if v is not None else "-"
            if m in ci:
                cell += f" [{ci[m][0]:.3f}, {ci[m][1]:.3f}]"
            cells.append(cell)
        lines.append(f"| {SYSTEM_NAMES.get(s, s)} | " + " | ".join(cells) + f" | {test[s].get('n', '-')} |")
    return "\n".join(lines)


def loss_plot(rd: RunDir, out: Path) -> Path | None:
    """Train and validation loss against step, as a PNG; None when nothing was logged."""
    log = rd.read_log()
    train = [(r["step"], r["loss"]) for r in log if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
    if not train and not val:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    best = rd.metrics().get("train", {}).get("best_step")
    if best is not None:
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best step {best}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per supervised token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(rd: RunDir) -> Path:
    """Write report.md (comparison table, training summary, loss curve) and, when available, report.html."""
    m = rd.metrics()
    tr = m.get("train", {})
    plot = loss_plot(rd, rd.path / "loss.png")
    cfg = rd.config()
    parts = [f"# tunelab run `{cfg.name}`", "",
             f"Model `{cfg.model.name}`, method `{cfg.method.name}`, task `{cfg.task}`.", "",
             "## Test set: fine-tuned vs prompting the same base model", "", comparison_table(m), ""]
    ev = m.get("evaluation", {})
    if ev and ev.get("evaluated", 0) < ev.get("test_examples", 0):
        parts += [f"Time budget {ev['time_budget_s']:g} s: a fixed seeded subset of {ev['evaluated']} of "
                  f"{ev['test_examples']} test examples was evaluated.", ""]
    if tr:
        parts += ["## Training", "",
                  f"- {tr.get('steps')} optimizer steps in {tr.get('wall_seconds')} s "
                  f"({tr.get('tokens_per_second')} tokens/s; {tr.get('precision')})",
                  f"- best validation loss {tr.get('best_eval_loss')} at step {tr.get('best_step')}",
                  f"- trainable parameters {tr.get('trainable_params'):,} of {tr.get('total_params'):,}"
                  if tr.get("trainable_params") else "",
                  f"- examples truncated to max length: {tr.get('truncated', 0)}", ""]
    if plot:
        parts += ["![loss curve](loss.png)", ""]
    out = rd.path / "report.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    try:
        from tunelab.report_html import write_html
    except ImportError:
        return out
    return write_html(rd)
