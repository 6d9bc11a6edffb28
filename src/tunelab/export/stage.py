"""The `export` stage: turn a run's `best/` into a folder any Hugging Face loader can serve.

Merged export (default): the base model in fp32 with the adapter folded into its weights, saved as
safetensors with the tokenizer, chat template and generation config. Before writing, the merged
model's logits are compared with the adapter model's on probe prompts: a merge that changes the
model's answers fails loudly instead of shipping. `merge=False` writes the adapter unmerged (PEFT
format, or tunelab's bottleneck-adapter files) for serving engines that load adapters, e.g. vLLM.
Every export carries a model card (`README.md`) with the run's own figures from metrics.json.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from tunelab.config import Config
from tunelab.core.errors import UserError
from tunelab.config import dump_config
from tunelab.core.rundir import RunDir, atomic_folder, atomic_write_json, atomic_write_text
from tunelab.export.bundle import EXPORT_INFO
from tunelab.export.card import model_card
from tunelab.methods import ADAPTERS_CONFIG, ADAPTERS_FILE, TASK_HEAD_NAMES, load_trained
from tunelab.models import load_tokenizer
from tunelab.tasks import TASKS

log = logging.getLogger(__name__)

# fp32 merges reorder a few sums; real merge bugs (wrong scale, lost head) move logits by >0.1.
TOLERANCE = 1e-3
PROBES = [
    "I am still waiting on my card, can you help?",
    "Write one sentence about the sea.",
    "What is 12 times 7?",
]


class ExportError(UserError, RuntimeError):
    """An export that cannot be done or would not reproduce the trained model."""


def _labels(rd: RunDir, best: Path) -> list[str] | None:
    """Class names for a classification run: from the prepared data's manifest, else generic ones."""
    labels = rd.data.manifest().get("labels")
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
    """Token ids of the probe prompts, in the chat template for chat tasks, as plain text otherwise."""
    out = []
    for text in PROBES:
        if TASKS[task].serving == "chat" and tokenizer.chat_template:
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
    log.info(f"merge check: max abs logit difference {diff:.3g} on {len(inputs)} probes (tolerance {TOLERANCE:g})")
    _save_bundle(merged, tokenizer, out)
    return {"merged": True, "format": "safetensors", "max_abs_logit_diff": diff, "probes": len(inputs)}


FORMATS = ("hf", "gguf", "vllm")


def run(cfg: Config, rd: RunDir, out: Path | None = None, merge: bool = True,
        allow_incomplete: bool = False, fmt: str = "hf", quant: str = "q8_0") -> Path:
    """Export the run's `best/` to `out` (default the run's `export/`) and return the folder.

    `fmt`: `hf` (safetensors folder), `gguf` (that folder plus `<run>.<quant>.gguf`, verified by loading
    it back), `vllm` (that folder plus the exact `vllm serve` command). The folder is written whole or
    not at all (a temp folder renamed into place).

    Raises:
        RunDirError: the run is not complete (unless `allow_incomplete`).
        ExportError: a method that cannot merge (prompt tuning, bottleneck adapters), or merged logits
            that differ from the adapter model's by more than `TOLERANCE`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "gguf" and not merge:
        raise ExportError("GGUF holds whole weights: export it merged (without --no-merge)")
    best = rd.require_complete("export it", allow_incomplete)
    if out is None or Path(out).resolve() == rd.export_dir.resolve():
        with rd.stage("export"):
            return _export(cfg, rd, best, rd.export_dir, merge, fmt, quant)
    return _export(cfg, rd, best, Path(out), merge, fmt, quant)


def _deploy_format(cfg: Config, rd: RunDir, tmp: Path, info: dict, fmt: str, quant: str, labels, final: Path) -> dict:
    """Write the GGUF file (verified) or the vLLM command into the export folder; returns what to record."""
    if fmt == "gguf":
        from tunelab.export import gguf

        if TASKS[cfg.task].head != "causal_lm":
            raise ExportError("GGUF export is for causal language models; this run has a classification head")
        gguf_file = gguf.write_gguf(tmp, tmp / f"{rd.name}.{quant}.gguf", quant, rd.name)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        check = gguf.verify(tmp, gguf_file, quant, [ids[0].tolist() for ids in probe_inputs(tokenizer, cfg.task)])
        log.info(f"GGUF {gguf_file.name}: max abs logit difference {check['max_abs_logit_diff']:.3g} "
                 f"(tolerance {check['tolerance']}), greedy {check['greedy_tokens']} tokens equal on {check['probes']} probes")
        return {"gguf": gguf_file.name, "gguf_check": check}
    if fmt == "vllm":
        from tunelab.export import vllm

        return vllm.write_bundle(cfg, tmp, final, info, rd.name, labels)
    return {}


def _export(cfg: Config, rd: RunDir, best: Path, out: Path, merge: bool, fmt: str = "hf", quant: str = "q8_0") -> Path:
    # The tokenizer saved with the weights is the one training used (pad token and all).
    has_tokenizer = (best / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(best) if has_tokenizer else load_tokenizer(cfg.model)
    labels = _labels(rd, best) if TASKS[cfg.task].labels == "required" else None
    model = load_trained(cfg.model, best, cfg.task, labels=labels)
    # A stale file from another export (adapter vs merged) would confuse loaders: the folder is replaced whole.
    with atomic_folder(out) as tmp:
        if (best / "adapter_config.json").is_file():
            info = _export_peft(model, tokenizer, cfg, tmp, merge)
        elif (best / ADAPTERS_CONFIG).is_file():
            if merge:
                raise ExportError("bottleneck adapters (method.name=adapter) are non-linear, so they cannot be "
                                  "merged into the base weights. Export them with `--no-merge`; load them with "
                                  "tunelab.load or tunelab.methods.load_trained.")
            for name in (ADAPTERS_FILE, ADAPTERS_CONFIG):
                shutil.copy2(best / name, tmp / name)
            tokenizer.save_pretrained(tmp)
            info = {"merged": False, "format": "tunelab-adapters"}
        else:  # full or partly frozen fine-tuning: best/ already holds every weight
            _save_bundle(model, tokenizer, tmp)
            info = {"merged": False, "format": "safetensors", "note": "full weights: nothing to merge"}
        info.update(_deploy_format(cfg, rd, tmp, info, fmt, quant, labels or rd.data.manifest().get("labels"), out))
        manifest = rd.data.manifest()
        # The config, labels and input columns let `tunelab serve` render prompts exactly as the run did,
        # from the export alone (the run folder may stay behind on the training machine).
        doc = {"run": str(rd.path), "name": rd.name, "method": cfg.method.name, "task": cfg.task,
               "base_model": cfg.model.name, **info, "labels": labels or manifest.get("labels"),
               "columns": manifest.get("columns") or {}, "config": dump_config(cfg)}
        atomic_write_json(tmp / EXPORT_INFO, doc)
        atomic_write_text(tmp / "README.md", model_card(cfg, rd.metrics(), rd.data.manifest(), info))
    log.info(f"exported {cfg.method.name} ({info['format']}{', merged' if info['merged'] else ''}) to {out}")
    return out
