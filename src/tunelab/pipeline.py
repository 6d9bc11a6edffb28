"""`tunelab run`: prepare -> train -> evaluate -> report, in one run folder."""

from __future__ import annotations

import shutil

from tunelab.config import Config
from tunelab.data.prepare import prepare
from tunelab.evaluate import evaluate
from tunelab.models import load_tokenizer
from tunelab.report import comparison_table, write_report
from tunelab.rundir import RunDir
from tunelab.train import train


def fresh_run_dir(cfg: Config) -> RunDir:
    """Create the run folder; outputs of an earlier run of the same name are replaced (data/ is a cache)."""
    rd = RunDir.create(cfg)
    for stale in (rd.metrics_jsonl, rd.metrics_json, rd.path / "predictions.jsonl"):
        stale.unlink(missing_ok=True)
    for folder in (rd.best, rd.last):
        shutil.rmtree(folder, ignore_errors=True)
    return rd


def run(cfg: Config, log=print) -> RunDir:
    """Run the whole lifecycle for `cfg` and print the comparison table."""
    rd = fresh_run_dir(cfg)
    log(f"run folder: {rd.path}")
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare(cfg, rd.data_dir, tokenizer, log=log)
    train(cfg, rd, prepared, tokenizer, log=log)
    evaluate(cfg, rd, prepared, tokenizer, log=log)
    report = write_report(rd)
    log("\n" + comparison_table(rd.metrics()))
    log(f"report: {report}")
    return rd
