"""`tunelab run`: prepare -> train -> evaluate -> report, in one run folder; and the verbs that run a
part of it. Each stage is one `run(cfg, rd, ...)` that records itself in the run folder's status."""

from __future__ import annotations

import logging
from pathlib import Path

from tunelab.config import Config
from tunelab.core.rundir import RunDir
from tunelab.data import stage as prepare_stage
from tunelab.evaluate import stage as evaluate_stage
from tunelab.evaluate.verdict import render as render_verdict
from tunelab.methods import check_method
from tunelab.models import load_tokenizer
from tunelab.report import stage as report_stage
from tunelab.report.markdown import comparison_table
from tunelab.train import stage as train_stage

log = logging.getLogger(__name__)


def run(cfg: Config, overwrite: bool = False) -> RunDir:
    """The whole lifecycle for `cfg`: prepare, train, evaluate against the baselines, write the report."""
    check_method(cfg.method, cfg.task)
    rd = RunDir.create(cfg, overwrite)
    log.info(f"run folder: {rd.path}")
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_stage.run(cfg, rd, tokenizer)
    train_stage.run(cfg, rd, prepared, tokenizer)
    evaluate_stage.run(cfg, rd, prepared, tokenizer)
    path = report_stage.run(cfg, rd)
    log.info("\n" + comparison_table(rd.metrics()))
    if rd.metrics().get("verdict"):
        log.info(render_verdict(rd.metrics()["verdict"]))
    log.info(f"report: {path}")
    return rd


def prepare(cfg: Config, overwrite: bool = False) -> RunDir:
    """Prepare the data of `cfg` into its run folder (reused when nothing changed)."""
    rd = RunDir.create(cfg, overwrite, stage="prepare")
    prepare_stage.run(cfg, rd)
    return rd


def train_only(cfg: Config, overwrite: bool = False) -> RunDir:
    """Prepare the data and fine-tune (no evaluation)."""
    check_method(cfg.method, cfg.task)
    rd = RunDir.create(cfg, overwrite)
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_stage.run(cfg, rd, tokenizer)
    train_stage.run(cfg, rd, prepared, tokenizer)
    return rd


def evaluate_run(rd: RunDir, test_file: Path | None = None, allow_incomplete: bool = False) -> dict:
    """Re-evaluate a trained run (optionally on another test file) and rewrite its report."""
    cfg = rd.config()
    rd.require_trained(allow_incomplete)
    if test_file is not None:
        cfg.data.test = str(Path(test_file).resolve())
        rd.write_config(cfg)
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_stage.run(cfg, rd, tokenizer)
    results = evaluate_stage.run(cfg, rd, prepared, tokenizer, allow_incomplete)
    report_stage.run(cfg, rd)
    return results
