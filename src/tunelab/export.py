"""The `export` stage: turn a run's `best/` into a folder any Hugging Face loader can serve.

Merged export (default): the base model in fp32 with the adapter folded into its weights, saved as
safetensors with the tokenizer, chat template and generation config. Before writing, the merged
model's logits are compared with the adapter model's on probe prompts: a merge that changes the
model's answers fails loudly instead of shipping. `merge=False` writes the adapter unmerged (PEFT
format, or tunelab's bottleneck-adapter files) for serving engines that load adapters, e.g. vLLM.
Every export carries a model card (`README.md`) with the run's own figures from metrics.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from tunelab._adapters import ADAPTERS_CONFIG, ADAPTERS_FILE
from tunelab._layers import TASK_HEAD_NAMES
from tunelab.config import Config
from tunelab.models import EMBEDDED, load_tokenizer, load_trained
from tunelab.report import SYSTEM_NAMES, comparison_table
from tunelab.rundir import RunDir

# fp32 merges reorder a few sums; real merge bugs (wrong scale, lost head) move logits by >0.1.
TOLERANCE = 1e-3
PROBES = [
    "I am still waiting on my card, can you help?",
    "Write one sentence about the sea.",
    "What is 12 times 7?",
]


class ExportError(RuntimeError):
    """An export that cannot be done or would not reproduce the trained model."""


def _labels(rd: RunDir, best: Path) -> list[str] | None:
    """Class names for a classification run: from the prepared data's manifest, else generic ones."""
    manifest = rd.data_dir / "manifest.json"
    if manifest.is_file():
        labels = json.loads(manifest.read_text(encoding="utf-8")).get("labels")
        if labels:
            return list(labels)
    # No manifest (e.g. the data folder was deleted): the saved head's shape still says how many classes.
    weights = best / "adapter_model.safetensors"
    weights = weights if weights.is_file() else best / ADAPTERS_FILE
    if weights.is_file():
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                if any(f"{h}." in key for h in TASK_HEAD_NAMES) and key.endswith(".weight"):
                    return [f"LABEL_{i}" for i in range(f.get_slice(key).get_shape()[0])]
    return None


def probe_inputs(tokenizer, task: str) -> list[torch.Tensor]:
    """Token ids of the probe prompts, in the chat template for sft, as plain text otherwise."""
    out = []
    for text in PROBES:
        if task == "sft" and tokenizer.chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
        out.append(ids)
    return out


@torch.no_grad()
def probe_logits(model, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model's logits for each probe, in fp32 on CPU."""
    model.eval()
    device = next(model.parameters()).device
    return [model(input_ids=ids.to(device)).logits.float().cpu() for ids in inputs]


def check_parity(reference: list[torch.Tensor], candidate: list[torch.Tensor], tolerance: float = TOLERANCE) -> float:
    """Max abs logit difference between two models on the probes; raises ExportError above `tolerance`."""
    diff = max((r - c).abs().max().item() for r, c in zip(reference, candidate))
    if not diff <= tolerance:  # `not <=` also catches NaN
        raise ExportError(f"the merged model does not reproduce the adapter model: max abs logit difference "
                          f"{diff:.3g} > tolerance {tolerance:g} on {len(reference)} probe prompts")
    return diff


def _save_bundle(model, tokenizer, out: Path) -> None:
    """Write fp32 safetensors weights, tokenizer + chat template and (for generators) generation config."""
    model = model.to(torch.float32)
    if getattr(model, "generation_config", None) is not None:
        gen = model.generation_config
        gen.pad_token_id = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
        gen.eos_token_id = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _export_peft(model, tokenizer, cfg: Config, out: Path, merge: bool) -> dict:
    if not merge:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return {"merged": False, "format": "peft"}
    if model.peft_config["default"].is_prompt_learning:
        raise ExportError(f"method.name={cfg.method.name} trains virtual input tokens, not weights: there is "
                          "nothing to merge. Export the adapter with `--no-merge`.")
    inputs = probe_inputs(tokenizer, cfg.task)
    reference = probe_logits(model, inputs)
    merged = model.merge_and_unload()
    diff = check_parity(reference, probe_logits(merged, inputs))
    print(f"merge check: max abs logit difference {diff:.3g} on {len(inputs)} probes (tolerance {TOLERANCE:g})")
    _save_bundle(merged, tokenizer, out)
    return {"merged": True, "format": "safetensors", "max_abs_logit_diff": diff, "probes": len(inputs)}


# ------------------------------------------------------------------ model card


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


def run(run_dir: Path, out: Path | None = None, merge: bool = True) -> Path:
    """Export the run's `best/` to `out` (default RUN_DIR/export) and return the folder.

    Raises:
        ExportError: no `best/`, a method that cannot merge (prompt tuning, bottleneck adapters),
            or merged logits that differ from the adapter model's by more than `TOLERANCE`.
    """
    rd = RunDir(Path(run_dir))
    cfg = rd.config()
    best = rd.best
    if not best.is_dir():
        raise ExportError(f"{best} does not exist: train the run first (tunelab train)")
    out = Path(out) if out is not None else rd.path / "export"
    if out.exists():
        shutil.rmtree(out)  # a stale file from another method (adapter vs merged) would confuse loaders
    out.mkdir(parents=True)
    # The tokenizer saved with the weights is the one training used (pad token and all).
    has_tokenizer = (best / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(best) if has_tokenizer else load_tokenizer(cfg.model)
    labels = _labels(rd, best) if cfg.task == "classification" else None
    model = load_trained(cfg.model, best, cfg.task, labels=labels)

    if (best / "adapter_config.json").is_file():
        info = _export_peft(model, tokenizer, cfg, out, merge)
    elif (best / ADAPTERS_CONFIG).is_file():
        if merge:
            raise ExportError("bottleneck adapters (method.name=adapter) are non-linear, so they cannot be merged "
                              "into the base weights. Export them with `--no-merge`; load them with "
                              "tunelab.models.load_trained.")
        for name in (ADAPTERS_FILE, ADAPTERS_CONFIG):
            shutil.copy2(best / name, out / name)
        tokenizer.save_pretrained(out)
        info = {"merged": False, "format": "tunelab-adapters"}
    else:  # full or partly frozen fine-tuning: best/ already holds every weight
        _save_bundle(model, tokenizer, out)
        info = {"merged": False, "format": "safetensors", "note": "full weights: nothing to merge"}
    doc = {"run": str(rd.path), "method": cfg.method.name, "task": cfg.task, "base_model": cfg.model.name, **info}
    (out / "tunelab_export.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    manifest = rd.data_dir / "manifest.json"
    manifest = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    (out / "README.md").write_text(model_card(cfg, rd.metrics(), manifest, info), encoding="utf-8")
    print(f"exported {cfg.method.name} ({info['format']}{', merged' if info['merged'] else ''}) to {out}")
    return out
