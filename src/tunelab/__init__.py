"""tunelab: fine-tune, evaluate, serve and monitor language models on your own hardware.

The Python API mirrors the CLI verbs; every function takes a config (a YAML path or a `Config`) plus
optional dotted overrides, and returns the run folder (`RunDir`) it worked in:

    import tunelab
    rd = tunelab.run("examples/banking77/config.yaml", ["train.max_steps=20"])
    model = tunelab.load(rd.path)
    model.predict(["I am still waiting on my card"])

Messages go through `logging` (logger "tunelab"); call `logging.basicConfig(level=logging.INFO)` to see them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tunelab.config import Config
    from tunelab.core.rundir import RunDir
    from tunelab.predictor import Predictor

__all__ = ["__version__", "evaluate", "load", "load_config", "prepare", "run", "runtime_defaults", "train"]


def runtime_defaults() -> None:
    """Set tunelab's default OpenMP wait policy unless the user chose one; call it before torch is imported.

    OpenMP threads that busy-wait between parallel regions collapse when another process holds a core:
    a LoRA step of SmolLM2 took 42 s with 2 spinning threads next to one busy process, 2.9 s with passive
    waiting and 2.5 s with 1 thread (2-core machine). Passive waiting costs little on an idle machine.
    The CLI calls this first; the API functions below call it too (it has no effect once torch is loaded).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_config(config: "str | Path | Config", overrides: list[str] | None = None) -> "Config":
    """A validated `Config` from a YAML path (with dotted `key=value` overrides) or a `Config` as is."""
    from tunelab.config import Config, apply_overrides, config_from_dict, dump_config
    from tunelab.config import load_config as _load

    if isinstance(config, Config):
        return config_from_dict(apply_overrides(dump_config(config), overrides or [])) if overrides else config
    return _load(Path(config), overrides or [])


def run(config: "str | Path | Config", overrides: list[str] | None = None, overwrite: bool = False,
        resume: bool = False) -> "RunDir":
    """Prepare, train, evaluate against the zero-/few-shot baselines and write the report (`tunelab run`);
    `resume` continues an existing run where it stopped (`tunelab run --resume`)."""
    runtime_defaults()
    from tunelab import pipeline
    return pipeline.run(load_config(config, overrides), overwrite, resume)


def prepare(config: "str | Path | Config", overrides: list[str] | None = None, overwrite: bool = False) -> "RunDir":
    """Prepare the data into the run folder (`tunelab prepare`)."""
    from tunelab import pipeline
    return pipeline.prepare(load_config(config, overrides), overwrite)


def train(config: "str | Path | Config", overrides: list[str] | None = None, overwrite: bool = False,
          resume: bool = False) -> "RunDir":
    """Prepare the data and fine-tune, without evaluation (`tunelab train`; `resume` as in `run`)."""
    runtime_defaults()
    from tunelab import pipeline
    return pipeline.train_only(load_config(config, overrides), overwrite, resume)


def evaluate(run_dir: "str | Path", test_file: "str | Path | None" = None) -> dict:
    """Evaluate a trained run against its baselines (optionally on another test file); returns metrics.json `test`."""
    runtime_defaults()
    from tunelab import pipeline
    from tunelab.core.rundir import RunDir
    return pipeline.evaluate_run(RunDir.open(Path(run_dir)), Path(test_file) if test_file else None)


def load(run_dir: "str | Path", allow_incomplete: bool = False) -> "Predictor":
    """A fine-tuned model ready to predict (`Predictor.predict(texts)`), built as evaluation built it."""
    runtime_defaults()
    from tunelab.predictor import Predictor
    return Predictor(run_dir, allow_incomplete)
