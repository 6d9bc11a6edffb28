"""`report.md` of a run folder, and the comparison table shared by the console, the model card and
`tunelab compare` (the HTML report is html.py)."""

from __future__ import annotations

from tunelab.config import Config
from tunelab.evaluate.verdict import render as render_verdict

SYSTEM_ORDER = ["zero_shot", "few_shot", "finetuned", "finetuned_full_test"]
SYSTEM_NAMES = {"zero_shot": "zero-shot (base)", "few_shot": "few-shot (base)",
                "finetuned": "fine-tuned", "finetuned_full_test": "fine-tuned, full test set"}
HEADLINE = ["accuracy", "f1_macro", "rouge1", "rouge2", "rougeL", "bleu", "perplexity"]


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def comparison_rows(metrics: dict) -> tuple[list[str], list[dict]]:
    """The headline metric names the run has, and one row per system: its display name, each metric's
    value and 95% interval (None when absent), n, and its p-values against other systems."""
    test = metrics.get("test", {})
    systems = [s for s in SYSTEM_ORDER if s in test] + [s for s in test if s not in SYSTEM_ORDER]
    cols = [m for m in HEADLINE if any(m in test[s] for s in systems)]
    rows = []
    for s in systems:
        ci = test[s].get("ci", {})
        rows.append({"system": s, "name": SYSTEM_NAMES.get(s, s), "n": test[s].get("n"),
                     "values": [(test[s].get(m), ci.get(m)) for m in cols],
                     "p_value_vs": {SYSTEM_NAMES.get(k, k): v for k, v in (test[s].get("p_value_vs") or {}).items()}})
    return cols, rows


def comparison_table(metrics: dict) -> str:
    """A Markdown table: one row per system, the headline metrics the run has, and n."""
    cols, rows = comparison_rows(metrics)
    if not rows:
        return "(no test metrics)"
    lines = ["| system | " + " | ".join(cols) + " | n |", "|---" * (len(cols) + 2) + "|"]
    for row in rows:
        cells = []
        for v, ci in row["values"]:
            cell = _fmt(v) if v is not None else "-"
            if ci:
                cell += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            cells.append(cell)
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['n'] if row['n'] is not None else '-'} |")
    return "\n".join(lines)


def render_markdown(cfg: Config, metrics: dict, plot_name: str | None) -> str:
    """report.md: the comparison table, the time-budget note, a training summary and the loss curve."""
    tr = metrics.get("train", {})
    parts = [f"# tunelab run `{cfg.name}`", "",
             f"Model `{cfg.model.name}`, method `{cfg.method.name}`, task `{cfg.task}`.", "",
             "## Test set: fine-tuned vs prompting the same base model", "", comparison_table(metrics), ""]
    if metrics.get("verdict"):
        parts += [render_verdict(metrics["verdict"]), ""]
    ev = metrics.get("evaluation", {})
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
    if plot_name:
        parts += [f"![loss curve]({plot_name})", ""]
    return "\n".join(parts)
