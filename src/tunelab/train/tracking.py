"""Tracking sinks: `train.report_to` mapped onto the transformers Trainer's own integrations.

metrics.jsonl is always written (trainer.py); TensorBoard, MLflow and Weights & Biases are optional
extras (`pip install 'tunelab[track]'`). tunelab does not log to them itself: it turns them on in
`TrainingArguments(report_to=...)` and points them, through the environment variables those
integrations read, at places inside the runs folder, so a run works offline and leaves everything
next to its run folder:

- tensorboard: `runs/<name>/tensorboard/` (`tensorboard --logdir runs` shows every run);
- mlflow: `MLFLOW_TRACKING_URI` when the user set one (a server or store of their own), else the
  sqlite store `runs/mlflow.db`, shared by all runs (`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`),
  experiment `MLFLOW_EXPERIMENT_NAME` or "tunelab";
- wandb: files under `runs/<name>/wandb/`, offline unless `WANDB_MODE` says otherwise (`wandb sync`
  uploads later), project `WANDB_PROJECT` or "tunelab".

Only the process of global rank 0 reports; the others get `report_to="none"`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, MutableMapping, Sequence

from tunelab.core.ranks import process_rank
from tunelab.core.rundir import RunDir

SINKS = ("tensorboard", "mlflow", "wandb")


def check_installed(report_to: Sequence[str]) -> None:
    """Raise ImportError naming the extra to install when a requested sink's library is missing."""
    unknown = [s for s in report_to if s not in SINKS]
    if unknown:
        raise ValueError(f"train.report_to: unknown sink(s) {unknown}; choose from {list(SINKS)}")
    missing = [s for s in report_to if importlib.util.find_spec(s) is None]
    if missing:
        raise ImportError(f"train.report_to asks for {', '.join(missing)}, which is not installed: "
                          f"pip install 'tunelab[track]' (or pip install {' '.join(missing)})")


def tracking_env(report_to: Sequence[str], rd: RunDir,
                 environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables the Trainer integrations read, for each sink in `report_to`.

    Values the user already set for the MLflow store, experiment, W&B mode and project are kept;
    directories are always the run's own.
    """
    environ = os.environ if environ is None else environ
    rd = RunDir(rd.path.resolve())
    env: dict[str, str] = {}
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(rd.tensorboard_dir)
    if "mlflow" in report_to:
        # sqlite rather than a ./mlruns file store: MLflow 3 deprecates the file store.
        env["MLFLOW_TRACKING_URI"] = environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{rd.mlflow_db}"
        env["MLFLOW_EXPERIMENT_NAME"] = environ.get("MLFLOW_EXPERIMENT_NAME") or "tunelab"
    if "wandb" in report_to:
        env["WANDB_DIR"] = str(rd.path)
        env["WANDB_MODE"] = environ.get("WANDB_MODE") or "offline"
        env["WANDB_PROJECT"] = environ.get("WANDB_PROJECT") or "tunelab"
    return env


def configure(report_to: Sequence[str], rd: RunDir, run_name: str | None = None,
              environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Set the sinks' environment and return the `TrainingArguments` keywords that turn them on.

    Call it before building the Trainer (the integrations read their environment when created).

    Args:
        report_to: `train.report_to` (tensorboard, mlflow, wandb).
        rd: the run folder; sinks write next to it.
        run_name: the name shown in MLflow and W&B (default: the run folder's name).
        environ: the environment to update (default `os.environ`).

    Returns:
        `{"report_to": [...] or "none", "run_name": ...}` for `TrainingArguments(**kwargs)`.
    """
    environ = os.environ if environ is None else environ
    sinks = [s for s in SINKS if s in report_to]
    check_installed(list(report_to))
    if not sinks or process_rank(environ) != 0:
        return {"report_to": "none"}
    env = tracking_env(sinks, rd, environ)
    environ.update(env)
    if "TENSORBOARD_LOGGING_DIR" in env:
        Path(env["TENSORBOARD_LOGGING_DIR"]).mkdir(parents=True, exist_ok=True)
    return {"report_to": sinks, "run_name": run_name or rd.name}
