"""The model card (`README.md`) every export carries: base model, method, data, the test table with
p-values, forgetting, training and license, with the run's own figures from metrics.json."""

from __future__ import annotations

import json

from tunelab.config import Config
from tunelab.models import EMBEDDED
from tunelab.report.markdown import SYSTEM_NAMES, comparison_table


def base_license(name: str) -> str:
    """The base model's license when tunelab ships it, else a pointer to the model's own terms."""
    if name in EMBEDDED:
        return EMBEDDED[name].license
    return "not recorded by tunelab: see the base model's own license"


def _card_header(cfg: Config, license_: str) -> list[str]:
    # Hugging Face model-card metadata: the hub reads `license` and `base_model` from this block.
    meta = {"license": license_.lower() if " " not in license_ else "other", "base_model": cfg.model.name,
            "library_name": "transformers", "tags": ["tunelab", cfg.method.name, cfg.task]}
    return ["---", *[f"{k}: {json.dumps(v)}" for k, v in meta.items()], "---", "",
            f"# {cfg.name}: {cfg.model.name} fine-tuned with {cfg.method.name}", "",
            f"Made with tunelab (task `{cfg.task}`). Base model `{cfg.model.name}`, license: {license_}.", ""]


def _card_data(cfg: Config, manifest: dict) -> list[str]:
    d, acc = cfg.data, manifest.get("accounting", {})
    val = f"`{d.validation}`" if d.validation else f"carved {d.val_fraction:.0%} of train"
    test = f"`{d.test}`" if d.test else f"carved {d.test_fraction:.0%} of train"
    lines = ["## Data", "", f"- train: `{d.train}`", f"- validation: {val}", f"- test: {test}"]
    if acc:
        lines.append("- examples kept: " + ", ".join(f"{s} {a['kept']}" for s, a in acc.items()))
    if cfg.eval.references:
        lines.append(f"- test references: {', '.join(cfg.eval.references)} (each prediction scored against all)")
    return lines + [""]


def _card_tests(test: dict) -> list[str]:
    ft = test.get("finetuned", {})
    lines = []
    for other, p in (ft.get("p_value_vs") or {}).items():
        info = (ft.get("paired") or {}).get(other, {})
        lines.append(f"- fine-tuned vs {SYSTEM_NAMES.get(other, other)}: {info.get('metric', 'first metric')} "
                     f"difference {info.get('delta', float('nan')):+.4f} on {info.get('n', '?')} shared examples, "
                     f"{info.get('test', 'paired test')} p = {p:.4g}")
    return lines


def _card_forgetting(f: dict) -> list[str]:
    if not f:
        return ["Forgetting probe: not measured."]
    if f.get("perplexity_base") is None:
        return [f"- perplexity on `{f.get('text')}`: {f['perplexity']:.4f} (no base model to compare)"]
    return [f"- general-English probe (`{f.get('text')}`, {f.get('tokens')} tokens): perplexity "
            f"{f['perplexity_base']:.4f} (base) -> {f['perplexity']:.4f} (fine-tuned), "
            f"change {f['perplexity_change']:+.2%}", f"- mean KL(base || fine-tuned): {f['kl_mean']:.4f} nats/token"]


def _card_training(tr: dict) -> list[str]:
    if not tr:
        return ["Training summary: not recorded."]
    keys = ["steps", "examples", "wall_seconds", "tokens_per_second", "best_step", "best_eval_loss", "train_loss",
            "trainable_params", "total_params", "precision"]
    return [f"- {k}: {tr[k]}" for k in keys if tr.get(k) is not None]


def model_card(cfg: Config, metrics: dict, manifest: dict, info: dict) -> str:
    """README.md for an export: base model, method, data, test table, p-values, forgetting, training, license.

    Every figure is the one in the run's metrics.json (the same formatting as report.md).
    """
    lines = _card_header(cfg, base_license(cfg.model.name))
    lines += ["## Method", "", f"- `{cfg.method.name}`" + (f", rank {cfg.method.r}, alpha {cfg.method.alpha:g}"
              if cfg.method.name in ("lora", "dora", "rslora", "qlora") else ""),
              f"- export: {info.get('format')}{', adapter merged into the weights' if info.get('merged') else ''}", ""]
    lines += _card_data(cfg, manifest)
    lines += ["## Test results: fine-tuned vs prompting the same base model", "",
              "Values with 95% bootstrap intervals; baselines and fine-tuned see the same test examples.", "",
              comparison_table(metrics), "", *_card_tests(metrics.get("test", {})), ""]
    lines += ["## Forgetting", "", *_card_forgetting(metrics.get("forgetting") or {}), ""]
    lines += ["## Training", "", *_card_training(metrics.get("train") or {}), ""]
    return "\n".join(lines)
