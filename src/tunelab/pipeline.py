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
from tunelab.core import memory
from tunelab.core.errors import RunDirError, UserError
from tunelab.core.ranks import is_main_process, launched, process_rank, world_size
from tunelab.core.rundir import RunDir, sweep
from tunelab.data import Prepared, load_prepared
from tunelab.data import stage as prepare_stage
from tunelab.evaluate import stage as evaluate_stage
from tunelab.evaluate.verdict import render as render_verdict
from tunelab.methods import check_method
from tunelab.models import device_of, load_tokenizer
from tunelab.report import stage as report_stage
from tunelab.report.markdown import comparison_table
from tunelab.train import checkpoints, distributed
from tunelab.train import stage as train_stage
from tunelab.train.launch import Launch

log = logging.getLogger(__name__)


def run(cfg: Config, overwrite: bool = False, resume: bool = False, launch: Launch | None = None,
        estimate: bool = False) -> RunDir:
    """The whole lifecycle for `cfg`: prepare, train, evaluate against the baselines, write the report.

    With `resume`, an existing run continues where it stopped: completed stages are kept, training goes
    on from its newest complete checkpoint (refused when the config or the data changed). `launch` trains
    in several processes (`tunelab run --nproc N`); `estimate` prints the memory and time estimate before
    training. Launched by `accelerate launch -m tunelab run`, every process trains and rank 0 alone
    evaluates and reports.
    """
    check_method(cfg.method, cfg.task)
    rd, tokenizer, prepared = _start(cfg, overwrite, resume, until="report")
    if _to_do(rd, "train", resume):
        _train(cfg, rd, prepared, tokenizer, resume, launch, estimate)
    if not is_main_process():
        return rd   # evaluation runs once, in rank 0
    if _to_do(rd, "evaluate", resume):
        evaluate_stage.run(cfg, rd, prepared, tokenizer)
    if _to_do(rd, "report", resume):
        path = report_stage.run(cfg, rd)
        log.info("\n" + comparison_table(rd.metrics()))
        if rd.metrics().get("verdict"):
            log.info(render_verdict(rd.metrics()["verdict"]))
        log.info(f"report: {path}")
    return rd


def prepare(cfg: Config, overwrite: bool = False) -> RunDir:
    """Prepare the data of `cfg` into its run folder (reused when nothing changed)."""
    rd = RunDir.create(cfg, overwrite, stage="prepare")
    rd.set_goal("prepare")
    prepare_stage.run(cfg, rd)
    return rd


def train_only(cfg: Config, overwrite: bool = False, resume: bool = False, launch: Launch | None = None,
               estimate: bool = False) -> RunDir:
    """Prepare the data and fine-tune (no evaluation); `resume`, `launch` and `estimate` as for `run`."""
    check_method(cfg.method, cfg.task)
    rd, tokenizer, prepared = _start(cfg, overwrite, resume, until="train")
    if _to_do(rd, "train", resume):
        _train(cfg, rd, prepared, tokenizer, resume, launch, estimate)
    return rd


def open_run(cfg: Config, overwrite: bool = False, resume: bool = False, until: str = "train") -> RunDir:
    """The run folder for `cfg`: a new one (`RunDir.create`), or with `resume` the existing one, whose
    training config must be unchanged (a folder that does not exist yet starts a new run). `until`: the
    last stage the command will do (the run reads `complete` only once that stage is, `RunDir.set_goal`);
    a process launched to train for a `tunelab run --nproc N` keeps that run's later goal.

    Raises:
        RunDirError: --overwrite with --resume, or the run is being worked on by a live process.
        ResumeError: the training config differs from the run's (every difference listed).
    """
    if overwrite and resume:
        raise RunDirError("--overwrite replaces a run and --resume continues it: choose one")
    rd = RunDir.for_config(cfg)
    if not resume or not rd.is_run():
        if resume:
            log.info(f"nothing to resume in {rd.path}: starting a new run")
        rd = RunDir.create(cfg, overwrite)
        rd.set_goal(until, keep_later=launched())
        log.info(f"run folder: {rd.path}")
        return rd
    rd.refuse_if_busy()
    checkpoints.refuse_changes(rd, "the training config", checkpoints.config_changes(rd, cfg),
                               f"resume with the config it was made with (`--resume` accepts the run folder: "
                               f"`tunelab train {rd.path} --resume`) or start a new run (--overwrite, or another name)")
    sweep(rd.path)
    sweep(rd.checkpoints)
    rd.write_config(cfg)   # what may change on resume (evaluation settings, threads) applies from now on
    rd.set_goal(until, keep_later=launched())
    log.info(f"resuming {rd.path} ({rd.state()} at stage {rd.status().get('stage') or 'none'})")
    return rd


def _to_do(rd: RunDir, stage: str, resume: bool) -> bool:
    """Whether `stage` must run: always for a new run; on resume, unless it completed (a stage that ran
    again before it removed the entries of what it derived, so those run again too)."""
    if resume and rd.stage_state(stage) == "complete":
        log.info(f"{stage}: complete, kept")
        return False
    return True


def _start(cfg: Config, overwrite: bool, resume: bool, until: str) -> tuple[RunDir, object, Prepared]:
    """The run folder (new, or the one to resume) and its prepared data. In a launched run rank 0 opens
    and prepares them while the other processes wait at a barrier, then read what rank 0 wrote."""
    distributed.setup(device_of(cfg.train))
    tokenizer = load_tokenizer(cfg.model)
    with distributed.main_first():
        if is_main_process():
            rd = open_run(cfg, overwrite, resume, until)
            if resume:
                checkpoints.check_data_unchanged(cfg, rd, tokenizer)
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


def _train(cfg: Config, rd: RunDir, prepared: Prepared, tokenizer, resume: bool, launch: Launch | None,
           estimate: bool) -> None:
    if estimate and is_main_process():
        _log_estimate(cfg, prepared, tokenizer, launch.nproc if launch else world_size())
        memory.release()   # the calibration's model and optimizer, before training loads its own
    if launch is not None and launch.needed:
        launch.run(rd)
    else:
        train_stage.run(cfg, rd, prepared, tokenizer, resume=resume)
        memory.release()   # the Trainer's model, optimizer and activations, before evaluation loads its models


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
    rd.set_goal("report")
    if test_file is not None:
        cfg.data.test = str(Path(test_file).resolve())
        rd.write_config(cfg)
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_stage.run(cfg, rd, tokenizer)
    results = evaluate_stage.run(cfg, rd, prepared, tokenizer, allow_incomplete)
    report_stage.run(cfg, rd)
    return results
