"""After the search: the best config on the test set, exactly as `tunelab run` evaluates a run.

The best trial is an ordinary run folder trained with the best config; when it still holds its
complete weights and its config is the best config, it is evaluated and reported in place
(`pipeline.evaluate_run`: the same prepare, evaluate and report stages as `tunelab run`). Otherwise
(its weights were trained on another machine, or removed) the best config is trained once more with
`pipeline.run` in `<study>/final/`. Only this step reads the test split.
"""

from __future__ import annotations

import copy
import logging
import time

import optuna
import yaml
from optuna.trial import TrialState

from tunelab import pipeline
from tunelab.config import Config, dump_config
from tunelab.core.rundir import RunDir, StudyDir, atomic_write_text, is_complete_model
from tunelab.report.markdown import comparison_table
from tunelab.tune import report, versus
from tunelab.tune.objective import Objective
from tunelab.tune.space import decode_params, trial_config
from tunelab.tune.study import best_trial, counts, study_name

log = logging.getLogger(__name__)

# Keys that differ between a trial's config and the best config without changing the trained model.
NOT_THE_MODEL = (("name",), ("runs_dir",), ("train", "threads"), ("tune",))


def wait_for_others(study: optuna.Study, tick, poll_s: float = 5.0) -> None:
    """Wait while trials of other processes or machines are still running (dead ones are failed by heartbeat)."""
    announced = False
    while counts(study)["running"]:
        if not announced:
            log.info(f"waiting for {counts(study)['running']} trial(s) still running elsewhere before the final evaluation")
            announced = True
        optuna.storages.fail_stale_trials(study)
        tick()
        time.sleep(poll_s)


def finish(cfg: Config, sd: StudyDir, study: optuna.Study, objective: Objective) -> RunDir:
    """Write best_config.yaml, evaluate the best config on the test set, write trials.csv and tune_report.html."""
    best = best_trial(study)
    params = decode_params(best.params)
    best_cfg = trial_config(cfg, params, cfg.runs_dir, f"{study_name(cfg)}-best")
    write_best_config(sd, best_cfg, study, best, objective)
    trial_rd = sd.trial(best.number)
    if reusable(trial_rd, best_cfg):
        log.info(f"final: trial {best.number} was trained with the best config and kept its weights; evaluating "
                 "it on the test set against the baselines")
        pipeline.evaluate_run(trial_rd)
        final_rd = trial_rd
    else:
        log.info(f"final: training the best config (trial {best.number}) once more in {sd.path / sd.final_name}")
        final_rd = pipeline.run(trial_config(cfg, params, str(sd.path), sd.final_name), overwrite=True)
    start = versus.compare_with_start(cfg, sd, study, best, final_rd,
                                      lambda rd, c: reusable(rd, c, NOT_THE_MODEL + (("eval",),)))
    report.write_trials_csv(cfg, sd, study, objective)
    path = report.write_report(cfg, sd, study, objective, final_rd, start)
    c = counts(study)
    log.info(f"{c['complete'] + c['pruned']} configurations were tried ({c['complete']} complete, {c['pruned']} "
             f"pruned, {c['fail']} failed); best {objective.name} on validation {best.values[0]:.4f} (trial {best.number})")
    log.info("\n" + comparison_table(final_rd.metrics()))
    if start is not None:
        log.info("the best config vs the one the search started from:\n" + start.table(objective))
    log.info(f"best config: {sd.best_config_path}\ntune report: {path}")
    return final_rd


def _without(raw: dict, keys=NOT_THE_MODEL) -> dict:
    raw = copy.deepcopy(raw)
    for path in keys:
        node = raw
        for k in path[:-1]:
            node = node.get(k, {})
        node.pop(path[-1], None)
    return raw


def reusable(rd: RunDir, best_cfg: Config, keys=NOT_THE_MODEL) -> bool:
    """True when `rd` completed training with `best_cfg` (up to `keys`) and still holds its complete weights."""
    if not rd.is_run() or rd.stage_state("train") != "complete" or not is_complete_model(rd.best):
        return False
    return _without(rd.raw_config(), keys) == _without(dump_config(best_cfg), keys)


def write_best_config(sd: StudyDir, best_cfg: Config, study: optuna.Study, best: optuna.trial.FrozenTrial,
                      objective: Objective) -> None:
    """best_config.yaml: the best trial's config without the search section, runnable with `tunelab run`."""
    raw = dump_config(best_cfg)
    raw.pop("tune", None)
    tried = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    head = (f"# The best of {tried} configurations tried by study '{study.study_name}' (trial {best.number}): "
            f"validation {objective.name} {best.values[0]:.4f}.\n"
            f"# Searched: {', '.join(f'{k}={v}' for k, v in decode_params(best.params).items())}\n"
            f"# Run it with: tunelab run {sd.best_config_path}\n")
    atomic_write_text(sd.best_config_path, head + yaml.safe_dump(raw, sort_keys=False))
