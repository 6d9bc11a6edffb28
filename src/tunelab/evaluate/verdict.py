"""The verdict: what the numbers support, and what to try next when the fine-tuned model does not win.

For each baseline the fine-tuned model beats it (significantly better on the headline metric, p < 0.05
on the same examples), ties with it (no significant difference) or loses to it (significantly worse).
When it does not beat every baseline — or when the run itself shows it could do better — the advice is
drawn from what the run recorded: a validation loss still falling at the last step, validation loss
rising while training loss fell (overfitting), few training examples per class, examples left out by
`data.train_limit`, or intervals too wide to decide.
"""

from __future__ import annotations

from typing import Any

from tunelab.evaluate import metrics as M

ALPHA = 0.05
NAMES = {"zero_shot": "zero-shot", "few_shot": "few-shot"}
STILL_FALLING = 0.005   # the last validation improved on the one before by more than 0.5%
WIDE_INTERVAL = 0.05    # a 95% interval wider than +-0.05 on a [0, 1] metric decides little


def overfitting(log: list[dict]) -> dict[str, Any]:
    """Best validation step and the validations where val loss rose while train loss fell.

    Train loss between two validations is the mean of the training records logged in between.
    Returns `{"best_step", "best_eval_loss", "last_eval_loss", "rising": [step, ...], "overfit_from"}`
    (`overfit_from` is the first rising step after the best one, or None).
    """
    evals = [r for r in log if "eval_loss" in r and "step" in r]
    train = [r for r in log if "loss" in r and "step" in r and "eval_loss" not in r]
    if not evals:
        return {"best_step": None, "best_eval_loss": None, "last_eval_loss": None, "rising": [], "overfit_from": None}
    best = min(evals, key=lambda r: r["eval_loss"])
    rising, prev_train, prev = [], None, None
    for r in evals:
        window = [t["loss"] for t in train if (prev is None or t["step"] > prev["step"]) and t["step"] <= r["step"]]
        mean_train = sum(window) / len(window) if window else None
        if prev is not None and r["eval_loss"] > prev["eval_loss"] and None not in (mean_train, prev_train) \
                and mean_train < prev_train:
            rising.append(r["step"])
        prev, prev_train = r, mean_train if mean_train is not None else prev_train
    after = [s for s in rising if s > best["step"]]
    return {"best_step": best["step"], "best_eval_loss": best["eval_loss"], "last_eval_loss": evals[-1]["eval_loss"],
            "rising": rising, "overfit_from": after[0] if after else None}


def _headline(entry: dict) -> str | None:
    paired = entry.get("paired") or {}
    metric = next((p["metric"] for p in paired.values() if p.get("metric")), None)
    return metric or next((k for k, v in entry.items() if k in M.METRICS and isinstance(v, (int, float))), None)


def _outcome(delta: float, p: float | None, higher_is_better: bool) -> str:
    if p is None or p >= ALPHA or delta == 0:
        return "ties"
    return "wins" if (delta > 0) == higher_is_better else "loses"


def comparisons(test: dict) -> tuple[str | None, list[dict]]:
    """The headline metric and, per baseline, outcome, difference, p-value and shared examples."""
    ft = test.get("finetuned") or {}
    metric = _headline(ft)
    if metric is None:
        return None, []
    better = M.METRICS[metric].higher_is_better if metric in M.METRICS else True
    out = []
    for base, info in (ft.get("paired") or {}).items():
        p = (ft.get("p_value_vs") or {}).get(base)
        out.append({"baseline": base, "outcome": _outcome(info["delta"], p, better), "delta": info["delta"],
                    "p": p, "n": info["n"], "test": info["test"], "metric": info["metric"]})
    return metric, out


def signals(test: dict, log: list[dict], manifest: dict, train_limit: int | None) -> dict[str, Any]:
    """What the run recorded that bears on what to try next."""
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    marks = overfitting(log)
    ft = test.get("finetuned") or {}
    metric = _headline(ft)
    ci = (ft.get("ci") or {}).get(metric) if metric else None
    counts = ((manifest.get("stats") or {}).get("train") or {}).get("labels") or {}
    dropped = ((manifest.get("accounting") or {}).get("train") or {}).get("dropped") or {}
    return {
        "validation_still_falling": len(evals) >= 2 and evals[-1] < evals[-2] * (1 - STILL_FALLING)
        and marks["best_step"] == max(r["step"] for r in log if "eval_loss" in r),
        "last_validation_losses": [round(v, 4) for v in evals[-2:]],
        "overfit_from_step": marks["overfit_from"],
        "fewest_examples_per_class": min(counts.values()) if counts else None,
        "left_out_by_train_limit": int(dropped.get("train_limit", 0)) if train_limit else 0,
        "interval_half_width": round((ci[1] - ci[0]) / 2, 4) if ci and metric != "perplexity" else None,
    }


def advice(sig: dict[str, Any], method: str) -> list[str]:
    """What to try next, most specific first, from the run's own signals."""
    out = []
    if sig["validation_still_falling"]:
        a, b = sig["last_validation_losses"]
        out.append(f"validation loss was still falling at the last validation ({a} -> {b}): train longer "
                   "(train.epochs or train.max_steps)")
    if sig["overfit_from_step"] is not None:
        out.append(f"validation loss rose while training loss fell from step {sig['overfit_from_step']}: "
                   "lower train.lr, fewer epochs, or more data")
    if sig["left_out_by_train_limit"]:
        out.append(f"data.train_limit left {sig['left_out_by_train_limit']} training examples out: use them all")
    if sig["fewest_examples_per_class"] is not None and sig["fewest_examples_per_class"] < 20:
        out.append(f"some classes have only {sig['fewest_examples_per_class']} training examples: label more")
    if sig["interval_half_width"] is not None and sig["interval_half_width"] > WIDE_INTERVAL:
        out.append(f"the 95% intervals are +-{sig['interval_half_width']:.3f} wide: evaluate on more test examples "
                   "to decide")
    if not out:
        other = "lora with a higher rank, or full fine-tuning" if method in ("freeze", "ia3", "prompt_tuning") \
            else "another method (method.name) or a higher learning rate"
        out.append(f"nothing in this run's records points at one cause: try {other}, or more data")
    return out


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("p < 1e-4" if p < 1e-4 else f"p = {p:.3g}")


def conclude(test: dict, log: list[dict], manifest: dict, method: str, train_limit: int | None = None) -> dict:
    """metrics.json `verdict`: per-baseline outcomes, a one-paragraph conclusion and what to try next."""
    metric, comps = comparisons(test)
    if not comps:
        return {"metric": metric, "comparisons": [], "conclusion": "no baseline was measured: nothing to conclude",
                "next": []}
    sig = signals(test, log, manifest, train_limit)
    parts = [f"{c['outcome'].replace('ties', 'ties with')} {NAMES.get(c['baseline'], c['baseline'])} "
             f"({c['delta']:+.4f} {metric}, {_p(c['p'])}, {c['n']} shared examples)" for c in comps]
    wins_all = all(c["outcome"] == "wins" for c in comps)
    conclusion = "The fine-tuned model " + "; ".join(parts) + "."
    next_steps = advice(sig, method) if not wins_all else (advice(sig, method)[:1] if sig["validation_still_falling"]
                                                           else [])
    return {"metric": metric, "comparisons": comps, "wins_every_baseline": wins_all, "conclusion": conclusion,
            "next": next_steps, "signals": sig}


def render(verdict: dict) -> str:
    """The verdict as plain text lines (console and report.md)."""
    lines = [f"Verdict: {verdict['conclusion']}"]
    if verdict.get("next"):
        lines.append("What to try next:" if not verdict.get("wins_every_baseline") else "It could do better still:")
        lines += [f"  - {n}" for n in verdict["next"]]
    return "\n".join(lines)
