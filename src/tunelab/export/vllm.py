"""`tunelab export --format vllm`: the folder `vllm serve` loads, with the exact command written beside it.

Merged (default): the merged safetensors folder; `vllm serve <folder>`. Unmerged LoRA: the adapter
folder; `vllm serve <base> --enable-lora --lora-modules <run>=<folder>`. vLLM does not apply the run's
template or label constraint: the bundle's VLLM.md says what a client must send to get the answers
tunelab evaluated (the rendered user text and system message; `structured_outputs` with the labels).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tunelab.config import Config
from tunelab.core.rundir import atomic_write_text
from tunelab.models import local_folder

COMMAND_FILE = "vllm_serve.sh"
GUIDE_FILE = "VLLM.md"


def command(cfg: Config, folder: Path, info: dict, name: str) -> list[str]:
    """The `vllm serve` command line for an export folder (merged weights, or base + LoRA adapter)."""
    folder = Path(folder).resolve()
    common = ["--served-model-name", name, "--host", "127.0.0.1", "--port", "8000", "--api-key", "${VLLM_API_KEY}"]
    if info.get("merged") or info.get("format") == "safetensors":
        return ["vllm", "serve", str(folder), *common]
    if info.get("format") == "peft" and cfg.method.name in ("lora", "rslora", "dora", "qlora"):
        base = local_folder(cfg.model)
        return ["vllm", "serve", base, "--served-model-name", cfg.model.name, "--host", "127.0.0.1", "--port", "8000",
                "--api-key", "${VLLM_API_KEY}", "--enable-lora", "--max-lora-rank", str(cfg.method.r),
                "--lora-modules", f"{name}={folder}"]
    return []


def write_bundle(cfg: Config, folder: Path, final: Path, info: dict, name: str, labels: list[str] | None) -> dict:
    """Write vllm_serve.sh and VLLM.md into `folder` (being written; it becomes `final`); returns what was written."""
    argv = command(cfg, final, info, name)
    if not argv:
        from tunelab.export.stage import ExportError

        raise ExportError(f"vLLM loads merged weights or LoRA adapters; method.name={cfg.method.name} exported "
                          f"as {info.get('format')} is neither: export merged (the default)")
    line = " ".join(a if a.startswith("${") else shlex.quote(a) for a in argv)
    atomic_write_text(folder / COMMAND_FILE, "#!/bin/sh\n# Written by tunelab export --format vllm\nexec " + line + "\n")
    (folder / COMMAND_FILE).chmod(0o755)
    system = cfg.data.system
    extra = {"structured_outputs": {"choice": labels}} if labels else {}
    guide = [f"# Serving `{name}` with vLLM", "", "```sh", line, "```", "",
             "vLLM applies the chat template but not tunelab's prompt template, cleaning or label constraint. "
             "To get the answers tunelab evaluated, send:", "",
             f"- the user turn rendered with the run's template: `{cfg.data.template or '{input}'}`",
             f"- the system message: {json.dumps(system) if system else 'none'}",
             "- `temperature: 0` (tunelab decodes greedily)" + (", and constrain the answer to the label set:" if labels else ""),
             ""]
    if labels:
        guide += ["```json", json.dumps({"extra_body": extra}, indent=1)[:2000], "```", ""]
    guide += ["Keys, metrics and the request log differ from `tunelab serve`: see docs/serving.md (scale-out).", ""]
    atomic_write_text(folder / GUIDE_FILE, "\n".join(guide))
    return {"vllm_command": line}
