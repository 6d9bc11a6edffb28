"""What the product benchmarks share: a config file (default: the demo's) with only run-length overrides,
a run folder in a temporary runs_dir, the machine's CPU flags, and the settings `tunelab run` chose.

The benchmarks call the product's own stages (`data.stage.run`, `train.stage.run`, `evaluate.stage.run`)
on that config, so whatever the config's recipe is (task, method, precision: auto, batching, threads),
that is what gets measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, load_avg

DEMO_CONFIG = ROOT / "examples" / "banking77" / "config.yaml"


def load(config: str | Path, runs_dir: str, overrides: list[str]):
    """The config file with `runs_dir` and the given dotted overrides (each one a run-length setting)."""
    from tunelab.config import load_config

    return load_config(config, [f"runs_dir={runs_dir}", *overrides])


def prepare(cfg):
    """Prepare the config's data into a fresh run folder; (run folder, tokenizer, prepared data)."""
    from tunelab.core.rundir import RunDir
    from tunelab.data import stage as prepare_stage
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    rd = RunDir.create(cfg, True)
    return rd, tokenizer, prepare_stage.run(cfg, rd, tokenizer)


def cpu_flags() -> dict:
    """The CPU model and the SIMD/matrix flags that decide kernels (AVX2, AVX512*, AMX)."""
    model, flags = "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    return {"cpu_model": model, "cpu_flags": wanted, "cpus": os.cpu_count(), "amx": "amx_bf16" in flags}


def chosen_settings(cfg, precision_reason: str) -> dict:
    """What the product decided for this config on this machine (recorded next to every figure)."""
    from tunelab.train.stage import threads

    return {"precision": precision_reason, "batching": cfg.train.batching, "threads": threads(cfg),
            "task": cfg.task, "method": cfg.method.name, "batch_size": cfg.train.batch_size}


def spawn(script: str, side: str, args: list[str]) -> dict:
    """Run `script --side SIDE --result FILE ARGS` in a fresh process (honest peak RSS) and return the
    JSON it wrote, with the load average at its start."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    start = load_avg()
    argv = [sys.executable, script, "--side", side, "--result", path, *args]
    subprocess.run(argv, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    result = json.loads(Path(path).read_text())
    os.unlink(path)
    return {**result, "loadavg_start": start}
