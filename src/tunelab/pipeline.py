"""`tunelab run`: prepare -> train -> evaluate -> report, in one run folder; and the verbs that run a
part of it. Each stage is one `run(cfg, rd, ...)` that records itself in the run folder's status.

Several processes (DDP): `--nproc N` prepares here, trains in N processes started by `accelerate
launch` (train/launch.py) and evaluates here; a process started by the launcher directly runs the
same functions, with rank 0 alone writing the run folder and evaluating (core/ranks.py)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from tunelab.config import Config
from tunelab.core.errors import RunDirError, UserError
from tunelab.core.ranks import is_main_process, launched, process_rank, world_size
from tunelab.core.rundir import RunDir
from tunelab.data import Prepared, load_prepared
from tunelab.data import stage as prepare_stage
from tunelab.evaluate import stage as evaluate_stage
from tunelab.evaluate.verdict import render as render_verdict
from tunelab.methods import check_method
from tunelab.models import device_of, load_tokenizer
from tunelab.report import stage as report_stage
from tunelab.report.markdown import comparison_table
from tunelab.train import distributed
from tunelab.train import stage as train_stage
from tunelab.train.launch import Launch

log = logging.getLogger(__name__)


def run(cfg: Config, overwrite: bool = False, launch: Launch | None = None, estimate: bool = False) -> RunDir:
    """The whole lifecycle for `cfg`: prepare, train, evaluate against the baselines, write the report.

    `launch` trains in several processes (`tunelab run --nproc N`); `estimate` prints the memory and
    time estimate before training. Launched by `accelerate launch -m tunelab run`, every process trains
    and rank 0 alone evaluates and reports.
    """
    check_method(cfg.method, cfg.task)
    rd, tokenizer, prepared = _start(cfg, overwrite)
    _train(cfg, rd, prepared, tokenizer, launch, estimate)
    if not is_main_process():
        return rd   # evaluation runs once, in rank 0
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


def train_only(cfg: Config, overwrite: bool = False, launch: Launch | None = None, estimate: bool = False) -> RunDir:
    """Prepare the data and fine-tune (no evaluation); `launch` and `estimate` as for `run`."""
    check_method(cfg.method, cfg.task)
    rd, tokenizer, prepared = _start(cfg, overwrite)
    _train(cfg, rd, prepared, tokenizer, launch, estimate)
    return rd


def _start(cfg: Config, overwrite: bool) -> tuple[RunDir, object, Prepared]:
    """The run folder and its prepared data. In a launched run rank 0 creates and prepares them while
    the other processes wait at a barrier, then read what rank 0 wrote."""
    distributed.setup(device_of(cfg.train))
    tokenizer = load_tokenizer(cfg.model)
    with distributed.main_first():
        if is_main_process():
            rd = RunDir.create(cfg, overwrite)
            log.info(f"run folder: {rd.path}")
            prepared = prepare_stage.run(cfg, rd, tokenizer)
        else:
            rd = RunDir.for_config(cfg)
            prepared = _read_prepared(rd)
    return rd, tokenizer, prepared


def _read_prepared(rd: RunDir) -> Prepared:
    missing = rd.data.missing()
    if missing:
        raise RunDirError(f"rank {process_rank()} on {socket.gethostname()} cannot see the prepared data rank 0 wrote "
                          f"to {rd.data.path} ({', '.join(missing)} missing): in a run over several machines, runs_dir "
                          "must be on a file system every machine shares")
    return load_prepared(rd.data)


def _train(cfg: Config, rd: RunDir, prepared: Prepared, tokenizer, launch: Launch | None, estimate: bool) -> None:
    if estimate and is_main_process():
        _log_estimate(cfg, prepared, tokenizer, launch.nproc if launch else world_size())
    if launch is not None and launch.needed:
        launch.run(rd)
    else:
        train_stage.run(cfg, rd, prepared, tokenizer)


def _log_estimate(cfg: Config, prepared: Prepared, tokenizer, nproc: int) -> None:
    """Print the estimate; in a launched process only the counted part (a calibration would hold the
    other processes at their first collective)."""
    from tunelab.estimate import stage as estimate_stage

    try:
        est = estimate_stage.run(cfg, prepared, tokenizer, nproc, calibrate_steps=0 if launched() else 4)
    except UserError:
        raise   # e.g. qlora without CUDA: training would stop with the same message
    except Exception as e:   # the estimate informs; a failure of its own must not cost the user the run
        log.warning(f"no estimate: {type(e).__name__}: {e}")
        return
    log.info(est.text())


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
