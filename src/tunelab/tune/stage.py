"""The `tune` stage: `tunelab tune CONFIG [--workers N]`.

prepare the data once (shared by the trials) -> create or continue the study -> N worker processes
run trials until `tune.n_trials` have finished (or `tune.time_budget` is spent) -> the best config is
evaluated on the test set against the baselines exactly as `tunelab run` does (its trial's weights
reused when they are the best config's, else trained once more) -> best_config.yaml, trials.csv,
tune_report.html. Re-running the same command continues the study.
"""

from __future__ import annotations

import logging
import os
import time

import yaml

from tunelab.config import Config, dump_config
from tunelab.core.errors import UserError
from tunelab.core.log import progress
from tunelab.core.rundir import StudyDir, atomic_write_text
from tunelab.data import load_prepared, prepare
from tunelab.models import load_tokenizer
from tunelab.tune import final, workers
from tunelab.tune.objective import Objective, objective_for
from tunelab.tune.space import check_values
from tunelab.tune.study import (best_trial, counts, open_study, recover_interrupted, retry_now, study_dir,
                                target)
from tunelab.tune.trial import Surplus, TrialRunner, keep_best_weights
from tunelab.tune.versus import start_trial

log = logging.getLogger(__name__)


class TuneError(UserError, RuntimeError):
    """The search could not run or finish (a worker failed, no trial completed)."""


def run(cfg: Config, n_workers: int = 1, search_only: bool = False, argv: list[str] | None = None) -> StudyDir:
    """Search `cfg.tune.space`, then evaluate the best config on the test set (unless `search_only`).

    `argv` is the command line that started the study (config path and overrides), given to worker
    processes when `n_workers` > 1.

    Raises:
        ConfigError: a bad space value, objective or storage, or a stored study of another search.
        TuneError: a worker failed, or no trial completed.
    """
    if not cfg.tune.space:
        log.warning("tune.space is empty: every trial trains the same config")
    sd = study_dir(cfg)
    sd.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sd.config_path, yaml.safe_dump(dump_config(cfg), sort_keys=False))
    log.info(f"study folder: {sd.path}")
    check_values(cfg)
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare(cfg, sd.data, tokenizer)   # once; each trial's prepare stage reuses it
    objective = objective_for(cfg, prepared.labels)
    study = open_study(cfg, sd, objective)
    recover_interrupted(study)
    n = target(cfg)
    c = counts(study)
    log.info(f"study '{study.study_name}': {c['complete'] + c['pruned']} of {n} trials finished; optimising "
             f"{objective.name} ({objective.direction}) on validation data with {n_workers} worker(s), "
             f"sampler {cfg.tune.sampler}, pruner {cfg.tune.pruner if not cfg.tune.also_minimize else 'none (multi-objective)'}")
    bar = StudyProgress(n, objective, c["complete"] + c["pruned"])
    if n_workers <= 1:
        runner, until = TrialRunner(cfg, sd, study, objective, tokenizer, n, extra={}), deadline(cfg)
        work(runner, until, lambda: bar.refresh(study))
        if counts(study)["running"] and (until is None or time.time() < until):
            # Trials another process still holds (a re-run while the interrupted one was exiting, or another
            # machine): wait for them; a dead one's heartbeat goes stale, it is failed and queued again, and
            # this process runs what the study still needs.
            final.wait_for_others(study, lambda: bar.refresh(study))
            work(runner, until, lambda: bar.refresh(study))
    else:
        workers.run_workers(sd, n_workers, argv or [], lambda: bar.refresh(study))
    bar.refresh(study)
    bar.close()
    if search_only:
        log.info(f"search done on this machine (--search-only): {_summary(study, objective)}")
        return sd
    final.wait_for_others(study, lambda: bar.refresh(study))
    if best_trial(study) is None:
        raise TuneError(f"no trial of study '{study.study_name}' completed ({_summary(study, objective)}); "
                        f"see the trial folders under {sd.trials_dir}")
    final.finish(cfg, sd, study, objective)
    return sd


def run_worker(cfg: Config, index: int, n_workers: int) -> None:
    """One worker process of `tunelab tune --workers N`: run trials until the study has its trials."""
    sd = study_dir(cfg)
    tokenizer = load_tokenizer(cfg.model)
    objective = objective_for(cfg, load_prepared(sd.data).labels)
    study = open_study(cfg, sd, objective, worker=index)
    # Each worker gets its share of the cores unless the config fixes train.threads.
    extra = {} if cfg.train.threads else {"train.threads": max(1, (os.cpu_count() or 1) // n_workers)}
    runner = TrialRunner(cfg, sd, study, objective, tokenizer, target(cfg), extra)
    work(runner, deadline(cfg), lambda: None)


def deadline(cfg: Config) -> float | None:
    return time.time() + cfg.tune.time_budget if cfg.tune.time_budget else None


def work(runner: TrialRunner, until: float | None, after_trial) -> None:
    """Run trials one at a time until the study has `runner.n_trials` finished or running, or time is up."""
    study = runner.study
    while True:
        c = counts(study)
        if c["complete"] + c["pruned"] + c["running"] >= runner.n_trials:
            return
        if until is not None and time.time() >= until:
            log.info("tune.time_budget spent: no new trial is started")
            return
        runner.current = None
        try:
            study.optimize(runner, n_trials=1, catch=(), gc_after_trial=True)
        except Surplus:
            return
        except KeyboardInterrupt:
            if runner.current is not None:
                retry_now(study, runner.current)
                log.info(f"trial {runner.current} interrupted: marked failed; a re-run runs its parameters again")
            raise
        best = best_trial(study)
        if runner.cfg.tune.keep_weights == "best":
            start = start_trial(runner.cfg, study)
            keep_best_weights(study, runner.sd, {t.number for t in (best, start) if t is not None})
        after_trial()


class StudyProgress:
    """A progress bar across trials: finished of total, the best value so far, an ETA."""

    def __init__(self, total: int, objective: Objective, done: int):
        self.objective = objective
        self.bar = progress(total=total, desc="tune", unit="trial")
        # Trials finished by earlier runs count as done but not in the rate the ETA is computed from.
        self.bar.n = self.bar.initial = min(done, total)
        self.bar.refresh()

    def refresh(self, study) -> None:
        c = counts(study)
        done = min(c["complete"] + c["pruned"], self.bar.total)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        best = best_trial(study)
        best_text = f"best {self.objective.name} {best.values[0]:.4f}" if best else "no complete trial yet"
        self.bar.set_postfix_str(f"{best_text}, pruned {c['pruned']}, running {c['running']}")

    def close(self) -> None:
        self.bar.close()


def _summary(study, objective: Objective) -> str:
    c = counts(study)
    best = best_trial(study)
    return (f"{c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed"
            + (f"; best {objective.name} {best.values[0]:.4f} (trial {best.number})" if best else ""))

