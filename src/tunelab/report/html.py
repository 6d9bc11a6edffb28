"""`report.html`: one self-contained file (plots embedded as base64 PNG) rendered from a run folder.

Everything comes from the run folder's own files: `config.yaml`, `data/manifest.json`,
`metrics.jsonl` (training curves), `metrics.json` (`test`, `forgetting`, `train`, `environment`) and
`predictions.jsonl` (sample predictions). A missing file or section renders as "not measured", so the
report can be rebuilt at any point of a run's life (`tunelab report RUN_DIR`).
"""

from __future__ import annotations

import base64
import html
import json
import platform
import time
from typing import Any

import yaml

from tunelab.core.rundir import RunDir
from tunelab.evaluate import metrics as M
from tunelab.report.markdown import SYSTEM_NAMES
from tunelab.report.plots import figure as _figure
from tunelab.report.plots import loss_figure, lr_figure, png_bytes

SYSTEMS = ("zero_shot", "few_shot", "finetuned")
NOT_MEASURED = '<p class="na">not measured</p>'
SAMPLES = 5  # right and wrong predictions shown each

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}.na{color:#999;font-style:italic}
.good{color:#1a7f37}.bad{color:#b42318}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;white-space:pre-wrap}
img{max-width:100%}nav a{margin-right:.8em}.meta{color:#666}"""

SECTIONS = [("summary", "Summary"), ("data", "Data"), ("training", "Training curves"),
            ("overfitting", "Overfitting markers"), ("test", "Baselines vs fine-tuned"),
            ("classification", "Confusion matrix and per-class F1"), ("samples", "Sample predictions"),
            ("forgetting", "Forgetting"), ("config", "Config"), ("environment", "Environment")]


# ------------------------------------------------------------------ small helpers


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.2f}"
    return _e(v)


def _p(p: Any) -> str:
    return f"{p:.3g}" if isinstance(p, (int, float)) else "not measured"


def _table(header: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (then they are trusted HTML)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_fmt(c)}</td>' if isinstance(c, (int, float)) and not raw
                                    else f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig) -> str:
    """The figure as an inline <img> (base64 PNG); the figure is closed."""
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(png_bytes(fig)).decode()}">'


# ------------------------------------------------------------------ overfitting


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


# ------------------------------------------------------------------ sections


def _summary(test: dict) -> str:
    ft = test.get("finetuned") or {}
    primary = next((k for k in ft if isinstance(ft[k], (int, float)) and k != "n"), None)
    if primary is None:
        return NOT_MEASURED
    lines = [f"<p>Headline metric <b>{_e(primary)}</b> on {ft.get('n', '?')} test examples: "
             f"fine-tuned <b>{_fmt(ft[primary])}</b>{_ci_text(ft, primary)}.</p><ul>"]
    for base in ("zero_shot", "few_shot"):
        other = test.get(base) or {}
        if primary not in other:
            lines.append(f"<li>{SYSTEM_NAMES[base]}: not measured</li>")
            continue
        p = (ft.get("p_value_vs") or {}).get(base)
        delta = ft[primary] - other[primary]
        higher_better = M.METRICS[primary].higher_is_better if primary in M.METRICS else True
        cls = "good" if (delta > 0) == higher_better else "bad"
        sig = f", p = {_p(p)} ({'significant' if p < 0.05 else 'not significant'} at 0.05)" if p is not None else ""
        lines.append(f'<li>{SYSTEM_NAMES[base]}: {_fmt(other[primary])}{_ci_text(other, primary)}; '
                     f'fine-tuned {"+" if delta >= 0 else ""}<span class="{cls}">{delta:.4f}</span>{sig}</li>')
    return "".join(lines) + "</ul>"


def _ci_text(entry: dict, metric: str) -> str:
    ci = (entry.get("ci") or {}).get(metric)
    return f" (95% CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else ""


def _data(manifest: dict) -> str:
    if not manifest:
        return NOT_MEASURED
    out = [f"<p>{_e(manifest.get('schema', ''))}</p>"]
    labels = manifest.get("labels")
    out.append(f"<p>{len(labels)} labels (closed set).</p>" if labels else "<p>Open-ended outputs (no closed label set).</p>")
    files = manifest.get("files") or []
    if files:
        out.append(_table(["split", "file", "format", "rows", "sha256"],
                          [[f.get("split"), f.get("path"), f.get("format"), f.get("rows"), str(f.get("sha256", ""))[:12]]
                           for f in files]))
    acc = manifest.get("accounting") or {}
    if acc:
        kv = lambda d: ", ".join(f"{k} {v}" for k, v in (d or {}).items()) or "-"  # noqa: E731
        out.append(_table(["split", "read", "kept", "dropped", "moved"],
                          [[s, a.get("read"), a.get("kept"), kv(a.get("dropped")), kv(a.get("moved"))] for s, a in acc.items()]))
    leak = manifest.get("leakage") or {}
    if leak:
        out.append(f"<p>Leakage policy <code>{_e(leak.get('policy'))}</code>: {_e(leak.get('train_examples', 0))} "
                   f"training example(s) matched held-out ones.</p>")
    stats = manifest.get("stats") or {}
    if stats:
        out.append(_table(["split", "examples", "unit", "mean", "p95", "max"],
                          [[s, x.get("examples"), x.get("unit"), x.get("mean"), x.get("p95"), x.get("max")]
                           for s, x in stats.items() if isinstance(x, dict)]))
    return "".join(out)


def _training(log: list[dict], marks: dict, train_summary: dict) -> str:
    out = [_png(fig) for fig in (loss_figure(log, marks.get("best_step"), marks.get("overfit_from")), lr_figure(log))
           if fig is not None]
    if train_summary:
        out.append(_table(["", "value"], [[k, v] for k, v in train_summary.items() if not isinstance(v, (dict, list))]))
    return "".join(out) or NOT_MEASURED


def _overfitting(marks: dict) -> str:
    if marks.get("best_step") is None:
        return NOT_MEASURED
    text = (f"<p>Best validation loss {_fmt(marks['best_eval_loss'])} at step {marks['best_step']}; "
            f"last validation loss {_fmt(marks['last_eval_loss'])}.</p>")
    if marks["overfit_from"] is not None:
        text += (f'<p class="bad">Overfitting from step {marks["overfit_from"]}: validation loss rose while training '
                 f"loss fell (at steps {', '.join(map(str, marks['rising']))}). The best checkpoint is kept.</p>")
    else:
        text += '<p class="good">No validation where validation loss rose while training loss fell after the best step.</p>'
    return text


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


def _test(test: dict) -> str:
    systems, names = _systems(test), _scalars(test)
    if not systems or not names:
        return NOT_MEASURED
    rows = []
    for s in systems:
        e = test[s]
        cells = [f"{_fmt(e[m])}<br><small>{_ci_text(e, m).strip() or ''}</small>" if m in e else "not measured" for m in names]
        subset = f"<br><small>{_e(e['subset'])}</small>" if e.get("subset") else ""
        rows.append([_e(SYSTEM_NAMES.get(s, s)), f"{_e(e.get('n', ''))}{subset}"] + cells)
    out = [_table(["system", "n"] + names, rows, raw=True)]
    ft = test.get("finetuned") or {}
    for other, info in (ft.get("paired") or {}).items():
        out.append(f"<p>Fine-tuned vs {SYSTEM_NAMES.get(other, other)}: {_e(info.get('test'))} on "
                   f"{_e(info.get('metric'))} over {_e(info.get('n'))} shared examples, difference "
                   f"{_fmt(info.get('delta'))}, p = {_p((ft.get('p_value_vs') or {}).get(other))}.</p>")
    if not ft.get("paired") and ft.get("p_value_vs"):
        out.append(_table(["fine-tuned vs", "p-value"], [[SYSTEM_NAMES.get(k, k), _p(v)] for k, v in ft["p_value_vs"].items()]))
    out.append(_bars(test, systems, names))
    return "".join(out)


def _bars(test: dict, systems: list[str], names: list[str]) -> str:
    import numpy as np

    groups = [[n for n in names if n != "perplexity"], [n for n in names if n == "perplexity"]]
    imgs = []
    for group in [g for g in groups if g]:
        fig, ax = _figure(max(5, 1.3 * len(group) * len(systems) / 2), 3.4)
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
        imgs.append(_png(fig))
    return "".join(imgs)


def _classification(test: dict) -> str:
    ft = test.get("finetuned") or {}
    cm, f1 = ft.get("confusion_matrix"), ft.get("f1_per_class")
    if not cm and not f1:
        return NOT_MEASURED
    out = []
    if cm:
        import numpy as np
        labels, m = cm["labels"], np.asarray(cm["matrix"], dtype=float)
        size = max(4.5, 0.14 * len(labels))
        fig, ax = _figure(size, size)
        # Row-normalised colour (recall per true class); small classes would vanish in raw counts.
        ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        if len(labels) <= 100:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=max(4, 9 - len(labels) // 15))
            ax.set_yticks(range(len(labels)), labels, fontsize=max(4, 9 - len(labels) // 15))
        if len(labels) <= 20:  # small matrices: the counts themselves fit in the cells
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, int(v), ha="center", va="center", fontsize=8, color="black" if v < m.max() / 2 else "white")
        ax.set_xlabel("predicted"), ax.set_ylabel("reference")
        out.append(_png(fig))
    if f1:
        baselines = [s for s in ("zero_shot", "few_shot") if (test.get(s) or {}).get("f1_per_class")]
        order = sorted(f1, key=lambda k: f1[k])
        rows = [[lab, f1[lab]] + [test[b]["f1_per_class"].get(lab, 0.0) for b in baselines] for lab in order]
        fig, ax = _figure(7, max(2.0, 0.16 * len(order)))
        ax.barh(range(len(order)), [f1[k] for k in order])
        ax.set_yticks(range(len(order)), order, fontsize=max(4, 9 - len(order) // 15))
        ax.set_xlim(0, 1), ax.set_xlabel("F1 (fine-tuned)"), ax.grid(axis="x", alpha=0.3)
        out.append(_png(fig))
        out.append("<p>Per-class F1 of the fine-tuned model, worst first:</p>")
        out.append(_table(["label", "fine-tuned F1"] + [f"{SYSTEM_NAMES[b]} F1" for b in baselines], rows))
    return "".join(out)


def _samples(preds: list[dict], is_classification: bool) -> str:
    ft = [r for r in preds if r.get("system") == "finetuned" and r.get("reference") is not None]
    if not ft:
        return NOT_MEASURED
    refs = [r["reference"] for r in ft]
    metric = "accuracy" if is_classification else "rougeL"
    score = M.per_example(metric, [str(r["prediction"]) for r in ft], refs)
    ranked = sorted(zip(score, range(len(ft))), key=lambda x: (-x[0], x[1]))
    others = {(r.get("system"), r.get("id")): r.get("prediction") for r in preds if r.get("system") != "finetuned"}
    if is_classification:
        right = [i for s, i in ranked if s > 0][:SAMPLES]
        wrong = [i for s, i in ranked if s == 0][:SAMPLES]
        blocks = [("Right", right), ("Wrong", wrong)]
    else:
        blocks = [(f"Best by {metric}", [i for _, i in ranked[:SAMPLES]]),
                  (f"Worst by {metric}", [i for _, i in ranked[::-1][:SAMPLES]])]
    out = []
    for title, idx in blocks:
        rows = []
        for i in idx:
            r = ft[i]
            ref = r["reference"] if isinstance(r["reference"], str) else " | ".join(r["reference"])
            prompt = f"<details><summary>{_e(str(r.get('id')))}</summary><pre>{_e(str(r.get('prompt', ''))[-1500:])}</pre></details>"
            base = "<br>".join(f"<b>{SYSTEM_NAMES[s]}:</b> {_e(others[(s, r.get('id'))])}"
                               for s in ("zero_shot", "few_shot") if (s, r.get("id")) in others)
            rows.append([prompt, _e(r["prediction"]), _e(ref), f"{score[i]:.3f}", base or "-"])
        out.append(f"<h3>{_e(title)} ({len(idx)})</h3>")
        out.append(_table(["example", "fine-tuned prediction", "reference", metric, "baselines"], rows, raw=True)
                   if rows else NOT_MEASURED)
    return "".join(out)


def _forgetting(f: dict) -> str:
    if not f:
        return NOT_MEASURED
    change = f.get("perplexity_change")
    rows = [["perplexity, base model", f.get("perplexity_base")], ["perplexity, fine-tuned", f.get("perplexity")],
            ["relative change", f"{change:+.1%}" if isinstance(change, (int, float)) else None],
            ["mean KL(base ‖ fine-tuned), nats/token", f.get("kl_mean")], ["tokens scored", f.get("tokens")],
            ["text", f.get("text")]]
    rows += [[k, v] for k, v in f.items() if k not in {"perplexity_base", "perplexity", "perplexity_change",
                                                        "kl_mean", "tokens", "text"} and not isinstance(v, (dict, list))]
    return ("<p>Measured on general English the model was not tuned on (see <code>resources/SOURCES.md</code>).</p>"
            + _table(["", "value"], rows))


def _environment(meta: dict, recorded: dict) -> str:
    import torch
    import transformers

    now = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
           "rendered": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    out = [_table(["run", "value"], [[k, v] for k, v in meta.items()])] if meta else []
    if recorded:
        out.append("<p>Recorded by the run:</p>" + _table(["", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                                                        for k, v in recorded.items()]))
    out.append("<p>Report rendered with:</p>" + _table(["", "value"], [[k, v] for k, v in now.items()]))
    return "".join(out)


# ------------------------------------------------------------------ the page


def render_html(run_dir: RunDir) -> str:
    """The report page for `run_dir` as one HTML string (no external assets)."""
    raw_cfg = run_dir.raw_config() if run_dir.config_path.is_file() else {}
    meta = run_dir.config_meta()
    metrics, log = run_dir.metrics(), run_dir.read_log()
    test = metrics.get("test") or {}
    marks = overfitting(log)
    is_cls = any("accuracy" in (test.get(s) or {}) for s in SYSTEMS) or raw_cfg.get("task") == "classification"
    bodies = {
        "summary": _summary(test),
        "data": _data(run_dir.data.manifest()),
        "training": _training(log, marks, metrics.get("train") or {}),
        "overfitting": _overfitting(marks),
        "test": _test(test),
        "classification": _classification(test) if is_cls else '<p class="na">not a classification task</p>',
        "samples": _samples(run_dir.predictions(), is_cls),
        "forgetting": _forgetting(metrics.get("forgetting") or {}),
        "config": f"<pre>{_e(yaml.safe_dump(raw_cfg, sort_keys=False))}</pre>" if raw_cfg else NOT_MEASURED,
        "environment": _environment(meta, metrics.get("environment") or {}),
    }
    name = raw_cfg.get("name", run_dir.path.name)
    model, method = (raw_cfg.get("model") or {}).get("name", "?"), (raw_cfg.get("method") or {}).get("name", "?")
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tunelab report: {_e(name)}</title>'
            f"<style>{CSS}</style></head><body><h1>tunelab report: {_e(name)}</h1>"
            f'<p class="meta">task {_e(raw_cfg.get("task", "?"))} · model {_e(model)} · method {_e(method)}'
            f" · created {_e(meta.get('created', '?'))}</p><nav>{nav}</nav>{sections}</body></html>")
