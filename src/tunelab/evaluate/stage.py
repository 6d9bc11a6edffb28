"""The `evaluate` stage: the evaluator `TASKS[cfg.task]` names, on the run's prepared data and `best/`."""

from __future__ import annotations

from tunelab.config import Config
from tunelab.core.rundir import RunDir
from tunelab.data import Prepared, load_prepared
from tunelab.evaluate.verdict import conclude
from tunelab.models import load_tokenizer
from tunelab.tasks import TASKS


def run(cfg: Config, rd: RunDir, prepared: Prepared | None = None, tokenizer=None,
        allow_incomplete: bool = False) -> dict:
    """Evaluate the run's best model against its baselines; write metrics.json `test` and predictions.jsonl.
    The report and export of an earlier evaluation are removed first.

    Raises:
        RunDirError: the run has no complete trained model (unless `allow_incomplete`).
        EvaluationFailed: a gate of the evaluation failed (metrics are written first).
    """
    rd.require_trained(allow_incomplete)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    prepared = prepared if prepared is not None else load_prepared(rd.data)
    with rd.stage("evaluate"):
        try:
            return TASKS[cfg.task].evaluate_fn()(cfg, rd, prepared, tokenizer)
        finally:   # also when a gate failed after the test figures were written
            if rd.metrics().get("test"):
                rd.set_metrics("verdict", conclude(rd.metrics()["test"], rd.read_log(), prepared.manifest,
                                                   cfg.method.name, cfg.data.train_limit))
