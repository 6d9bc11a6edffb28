"""`report.html`: one self-contained file (stylesheet inlined, plots embedded as base64 PNG) rendered from a
run folder.

Everything comes from the run folder's own files: `config.yaml`, `data/manifest.json`,
`metrics.jsonl` (training curves), `metrics.json` (`test`, `forgetting`, `train`, `environment`) and
`predictions.jsonl` (sample predictions). A missing file or section renders as "not measured", so the
report can be rebuilt at any point of a run's life (`tunelab report RUN_DIR`).

This module only prepares data: each section is a dict (or None: not measured) handed to the Jinja2
template `templates/run_report.html`, which renders section `x` with `templates/run_report/x.html`.
"""

from __future__ import annotations

import json
import platform
import time
from typing import Any

import yaml

from tunelab.core import templating
from tunelab.core.rundir import RunDir
from tunelab.evaluate import metrics as M
from tunelab.evaluate.verdict import overfitting
from tunelab.report.markdown import SYSTEM_NAMES
from tunelab.report.plots import confusion_figure, data_uri, f1_figure, loss_figure, lr_figure, metric_bars

SYSTEMS = ("zero_shot", "few_shot", "finetuned")
BASELINES = ("zero_shot", "few_shot")
SAMPLES = 5  # right and wrong predictions shown each

SECTIONS = [("summary", "Summary"), ("data", "Data"), ("training", "Training curves"),
            ("overfitting", "Overfitting markers"), ("test", "Baselines vs fine-tuned"),
            ("classification", "Confusion matrix and per-class F1"), ("samples", "Sample predictions"),
            ("forgetting", "Forgetting"), ("config", "Config"), ("environment", "Environment")]


def _name(system: str) -> str:
    return SYSTEM_NAMES.get(system, system)


def _ci(entry: dict, metric: str) -> list[float] | None:
    return (entry.get("ci") or {}).get(metric)


def _plot(fig, alt: str) -> dict[str, str]:
    return {"uri": data_uri(fig), "alt": alt}


# ------------------------------------------------------------------ sections (None: not measured)


def headline(test: dict, verdict: dict | None = None) -> dict | None:
    """The fine-tuned model's headline test metric with its interval, each baseline's value, gain and p-value,
    and the run's verdict (metrics.json `verdict`) when given."""
    verdict = verdict or {}
    ft = test.get("finetuned") or {}
    primary = next((k for k in ft if isinstance(ft[k], (int, float)) and k != "n"), None)
    if primary is None:
        return None
    higher_better = M.METRICS[primary].higher_is_better if primary in M.METRICS else True
    baselines = []
    for base in BASELINES:
        other = test.get(base) or {}
        if primary not in other:
            baselines.append({"name": _name(base), "value": None})
            continue
        delta = ft[primary] - other[primary]
        baselines.append({"name": _name(base), "value": other[primary], "ci": _ci(other, primary), "delta": delta,
                          "better": (delta > 0) == higher_better, "p": (ft.get("p_value_vs") or {}).get(base)})
    return {"metric": primary, "n": ft.get("n", "?"), "value": ft[primary], "ci": _ci(ft, primary),
            "baselines": baselines, "verdict": verdict.get("conclusion"), "next": verdict.get("next") or [],
            "wins": verdict.get("wins_every_baseline")}


def _data(manifest: dict) -> dict | None:
    if not manifest:
        return None
    kv = lambda d: ", ".join(f"{k} {v}" for k, v in (d or {}).items()) or "-"  # noqa: E731
    leak = manifest.get("leakage") or {}
    return {
        "schema": manifest.get("schema", ""),
        "labels": len(manifest.get("labels") or []),
        "files": [[f.get("split"), f.get("path"), f.get("format"), f.get("rows"), str(f.get("sha256", ""))[:12]]
                  for f in manifest.get("files") or []],
        "accounting": [[s, a.get("read"), a.get("kept"), kv(a.get("dropped")), kv(a.get("moved"))]
                       for s, a in (manifest.get("accounting") or {}).items()],
        "leakage": {"policy": leak.get("policy"), "train_examples": leak.get("train_examples", 0)} if leak else None,
        "stats": [[s, x.get("examples"), x.get("unit"), x.get("mean"), x.get("p95"), x.get("max")]
                  for s, x in (manifest.get("stats") or {}).items() if isinstance(x, dict)],
    }


def _training(log: list[dict], marks: dict, train_summary: dict) -> dict | None:
    figs = ((loss_figure(log, marks.get("best_step"), marks.get("overfit_from")), "training and validation loss"),
            (lr_figure(log), "learning rate"))
    plots = [_plot(fig, alt) for fig, alt in figs if fig is not None]
    rows = [[k, v] for k, v in train_summary.items() if not isinstance(v, (dict, list))]
    return {"plots": plots, "summary": rows} if plots or rows else None


def _systems(test: dict) -> list[str]:
    """Baselines, fine-tuned, then any other scored entry (e.g. the fine-tuned model on the full test set)."""
    extra = [k for k, v in test.items() if k not in SYSTEMS and isinstance(v, dict) and v]
    return [s for s in SYSTEMS if test.get(s)] + extra


def _scalars(test: dict) -> list[str]:
    names: list[str] = []
    for s in _systems(test):
        for k, v in (test.get(s) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n" and k not in names:
                names.append(k)
    return names


def _test(test: dict) -> dict | None:
    systems, names = _systems(test), _scalars(test)
    if not systems or not names:
        return None
    rows = [{"name": _name(s), "n": test[s].get("n", ""), "subset": test[s].get("subset"),
             "cells": [(test[s].get(m), _ci(test[s], m)) for m in names]} for s in systems]
    ft = test.get("finetuned") or {}
    p_vs = ft.get("p_value_vs") or {}
    paired = [{"name": _name(other), "test": info.get("test"), "metric": info.get("metric"), "n": info.get("n"),
               "delta": info.get("delta"), "p": p_vs.get(other)} for other, info in (ft.get("paired") or {}).items()]
    return {"metrics": names, "rows": rows, "paired": paired,
            "p_values": [] if paired else [{"name": _name(k), "p": v} for k, v in p_vs.items()],
            "plots": [_plot(fig, "metrics of each system with 95% intervals") for fig in metric_bars(test, systems, names)]}


def _classification(test: dict) -> dict | None:
    ft = test.get("finetuned") or {}
    cm, f1 = ft.get("confusion_matrix"), ft.get("f1_per_class")
    if not cm and not f1:
        return None
    out: dict[str, Any] = {"confusion": _plot(confusion_figure(cm["labels"], cm["matrix"]), "confusion matrix")
                           if cm else None, "f1": None}
    if f1:
        baselines = [b for b in BASELINES if (test.get(b) or {}).get("f1_per_class")]
        order = sorted(f1, key=lambda k: f1[k])
        out["f1"] = {"plot": _plot(f1_figure(f1, order), "per-class F1 of the fine-tuned model"),
                     "header": ["label", "fine-tuned F1"] + [f"{_name(b)} F1" for b in baselines],
                     "rows": [[lab, f1[lab]] + [test[b]["f1_per_class"].get(lab, 0.0) for b in baselines]
                              for lab in order]}
    return out


def _samples(preds: list[dict], is_classification: bool) -> dict | None:
    ft = [r for r in preds if r.get("system") == "finetuned" and r.get("reference") is not None]
    if not ft:
        return None
    metric = "accuracy" if is_classification else "rougeL"
    score = M.per_example(metric, [str(r["prediction"]) for r in ft], [r["reference"] for r in ft])
    ranked = sorted(zip(score, range(len(ft))), key=lambda x: (-x[0], x[1]))
    others = {(r.get("system"), r.get("id")): r.get("prediction") for r in preds if r.get("system") != "finetuned"}
    if is_classification:
        blocks = [("Right", [i for s, i in ranked if s > 0][:SAMPLES]), ("Wrong", [i for s, i in ranked if s == 0][:SAMPLES])]
    else:
        blocks = [(f"Best by {metric}", [i for _, i in ranked[:SAMPLES]]),
                  (f"Worst by {metric}", [i for _, i in ranked[::-1][:SAMPLES]])]
    return {"metric": metric, "blocks": [{"title": title, "rows": [_sample(ft[i], score[i], others) for i in idx]}
                                         for title, idx in blocks]}


def _sample(r: dict, score: float, others: dict) -> dict:
    ref = r["reference"] if isinstance(r["reference"], str) else " | ".join(r["reference"])
    return {"id": str(r.get("id")), "prompt": str(r.get("prompt", ""))[-1500:], "prediction": r["prediction"],
            "reference": ref, "score": score,
            "baselines": [(_name(s), others[(s, r.get("id"))]) for s in BASELINES if (s, r.get("id")) in others]}


def _forgetting(f: dict) -> dict | None:
    if not f:
        return None
    change = f.get("perplexity_change")
    shown = {"perplexity_base", "perplexity", "perplexity_change", "kl_mean", "tokens", "text"}
    rows = [["perplexity, base model", f.get("perplexity_base")], ["perplexity, fine-tuned", f.get("perplexity")],
            ["relative change", f"{change:+.1%}" if isinstance(change, (int, float)) else None],
            ["mean KL(base ‖ fine-tuned), nats/token", f.get("kl_mean")], ["tokens scored", f.get("tokens")],
            ["text", f.get("text")]]
    rows += [[k, v] for k, v in f.items() if k not in shown and not isinstance(v, (dict, list))]
    return {"rows": rows}


def _environment(meta: dict, recorded: dict) -> dict:
    import torch
    import transformers

    now = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
           "rendered": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    return {"run": [[k, v] for k, v in meta.items()],
            "recorded": [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in recorded.items()],
            "rendered": [[k, v] for k, v in now.items()]}


# ------------------------------------------------------------------ the page


def report_context(run_dir: RunDir) -> dict[str, Any]:
    """Everything `templates/run_report.html` shows for `run_dir`: the header fields and one entry per section."""
    raw_cfg = run_dir.raw_config() if run_dir.config_path.is_file() else {}
    meta = run_dir.config_meta()
    metrics, log = run_dir.metrics(), run_dir.read_log()
    test = metrics.get("test") or {}
    marks = overfitting(log)
    is_cls = any("accuracy" in (test.get(s) or {}) for s in SYSTEMS) or raw_cfg.get("task") == "classification"
    data = {
        "summary": headline(test, metrics.get("verdict") or {}),
        "data": _data(run_dir.data.manifest()),
        "training": _training(log, marks, metrics.get("train") or {}),
        "overfitting": marks if marks["best_step"] is not None else None,
        "test": _test(test),
        "classification": _classification(test) if is_cls else None,
        "samples": _samples(run_dir.predictions(), is_cls),
        "forgetting": _forgetting(metrics.get("forgetting") or {}),
        "config": yaml.safe_dump(raw_cfg, sort_keys=False) if raw_cfg else None,
        "environment": _environment(meta, metrics.get("environment") or {}),
    }
    notes = {"classification": "not measured" if is_cls else "not a classification task"}
    return {"name": raw_cfg.get("name", run_dir.path.name), "task": raw_cfg.get("task", "?"),
            "model": (raw_cfg.get("model") or {}).get("name", "?"),
            "method": (raw_cfg.get("method") or {}).get("name", "?"), "created": meta.get("created", "?"),
            "nav": [{"href": f"#{sid}", "label": title} for sid, title in SECTIONS],
            "sections": [{"id": sid, "title": title, "data": data[sid], "note": notes.get(sid, "not measured")}
                         for sid, title in SECTIONS]}


def render_html(run_dir: RunDir) -> str:
    """The report page for `run_dir` as one HTML string (no external assets)."""
    return templating.render("run_report.html", **report_context(run_dir))
