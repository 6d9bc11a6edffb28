"""`tunelab compare RUN...`: the fine-tuned metrics of several runs side by side, and paired tests
between runs that were evaluated on the same test examples (matched by example id)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.core.errors import UserError
from tunelab.core.rundir import RunDir, RunDirError
from tunelab.evaluate import metrics as M
from tunelab.evaluate.significance import paired_test
from tunelab.report.markdown import HEADLINE


class CompareError(UserError, ValueError):
    """A folder that cannot be compared (not a run folder, or not evaluated yet)."""


@dataclass
class Evaluated:
    """One evaluated run: its label, fine-tuned metrics and fine-tuned predictions by example id."""

    label: str
    method: str
    model: str
    metrics: dict[str, Any]
    predictions: dict[str, tuple[str, Any]]   # id -> (prediction, reference)
    samples: int


def load(run_dir: Path) -> Evaluated:
    """Read a run folder's fine-tuned test metrics and predictions.

    Raises:
        CompareError: no config.yaml, no fine-tuned test metrics, or no predictions.jsonl.
    """
    try:
        rd = RunDir.open(Path(run_dir))
    except RunDirError as e:
        raise CompareError(str(e)) from None
    test = rd.metrics().get("test", {})
    # The full test set when baselines ran on a subset: runs are compared on everything they saw.
    entry = test.get("finetuned_full_test") or test.get("finetuned")
    if not entry:
        raise CompareError(f"{rd.path} has no fine-tuned test metrics: evaluate it first (tunelab eval {rd.path})")
    rows = rd.predictions()
    if not rows:
        raise CompareError(f"{rd.path} has no predictions: evaluate it first (tunelab eval {rd.path})")
    preds = {str(rec["id"]): (rec["prediction"], rec["reference"])
             for rec in rows if rec.get("system") == "finetuned" and rec.get("id") is not None}
    cfg = rd.config()
    return Evaluated(rd.path.name, cfg.method.name, cfg.model.name, entry, preds, cfg.eval.bootstrap_samples)


def cell(entry: dict, name: str) -> str:
    """One metric of a metrics entry with its 95% interval ('-' when absent)."""
    value = entry.get(name)
    if not isinstance(value, (int, float)):
        return "-"
    ci = entry.get("ci", {}).get(name)
    return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def metrics_table(runs: list[Evaluated]) -> str:
    """A Markdown table: one row per run with its fine-tuned headline metrics, 95% intervals and n."""
    cols = [m for m in HEADLINE if any(m in r.metrics for r in runs)]
    lines = ["| run | method | model | " + " | ".join(cols) + " | n |", "|---" * (len(cols) + 4) + "|"]
    for r in runs:
        cells = " | ".join(cell(r.metrics, m) for m in cols)
        lines.append(f"| {r.label} | {r.method} | {r.model} | {cells} | {r.metrics.get('n', '-')} |")
    return "\n".join(lines)


def tested_metric(a: Evaluated, b: Evaluated) -> str | None:
    """The first per-prediction scalar metric both runs report (accuracy for labels, rouge1 for text)."""
    for name in a.metrics:
        if name in M.METRICS and name != "perplexity" and name in b.metrics:
            return name
    return None


def paired(a: Evaluated, b: Evaluated) -> dict[str, Any]:
    """A vs B on their shared test examples (same id and same reference): the paired test or why not."""
    metric = tested_metric(a, b)
    shared = [i for i in a.predictions if i in b.predictions]
    same = [i for i in shared if a.predictions[i][1] == b.predictions[i][1]]
    out = {"a": a.label, "b": b.label, "metric": metric, "n": len(same), "reference_mismatch": len(shared) - len(same)}
    if metric is None or not same:
        return out
    refs = [a.predictions[i][1] for i in same]
    result = paired_test(metric, [a.predictions[i][0] for i in same], [b.predictions[i][0] for i in same],
                         refs, samples=a.samples, seed=0)
    return {**out, **result}


def paired_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the paired tests; pairs without shared examples say so."""
    lines = ["| run A | run B | metric | test | shared examples | A - B | p |", "|---" * 7 + "|"]
    for r in rows:
        if "p" not in r:
            why = "no shared test examples" if not r["n"] else "no common metric"
            lines.append(f"| {r['a']} | {r['b']} | {r['metric'] or '-'} | - | {r['n']} | - | {why} |")
            continue
        lines.append(f"| {r['a']} | {r['b']} | {r['metric']} | {r['test']} | {r['n']} | "
                     f"{r['delta']:+.4f} | {r['p']:.4g} |")
    mismatched = sum(r["reference_mismatch"] for r in rows)
    if mismatched:
        lines.append(f"\n{mismatched} example id(s) shared by two runs had different references and were left out.")
    return "\n".join(lines)


def run(run_dirs: list[Path]) -> str:
    """Compare evaluated run folders: a metrics table and a paired test for every pair of runs.

    Raises:
        CompareError: fewer than one run, or a folder that is not an evaluated run.
    """
    if not run_dirs:
        raise CompareError("name at least one run folder: tunelab compare runs/a runs/b")
    runs = [load(Path(p)) for p in run_dirs]
    parts = ["## Fine-tuned test metrics (95% bootstrap intervals)", "", metrics_table(runs)]
    if len(runs) > 1:
        rows = [paired(a, b) for a, b in itertools.combinations(runs, 2)]
        parts += ["", "## Paired tests between runs (same test examples, matched by id)", "", paired_table(rows)]
    return "\n".join(parts)
