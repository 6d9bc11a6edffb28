"""The Optuna study behind `tunelab tune`: storage, sampler, pruner, and the bookkeeping that makes a
study resumable and safe to share between processes and machines.

- Resumable: the study lives in an RDB storage (SQLite in the study folder by default) and is loaded
  again by a re-run; `n_trials` counts finished trials across every run and worker.
- Interrupted trials: a trial records its worker's pid and host; a re-run marks a RUNNING trial of a
  dead process on this machine as failed and enqueues its parameters again. Trials of dead machines
  are caught by Optuna's heartbeat (`tune.heartbeat_s`) and retried the same way.
- The same search only: a study remembers the search it was created for and refuses to continue under
  a different space, objective or base config (the message lists the differences).
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import warnings
from typing import Any

import optuna
import psutil
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tunelab.config import Config, dump_config
from tunelab.core.errors import ConfigError
from tunelab.core.rundir import StudyDir
from tunelab.tune.objective import Objective
from tunelab.tune.space import grid, grid_size

log = logging.getLogger(__name__)
# Heartbeats and their retry callback are what make a study survive a dead worker; Optuna still labels
# them experimental, which is not news to a user at every start.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, module=r"optuna|tunelab")

# Settings that may change between runs of one study: budget, storage, where runs go, machine-local paths.
MAY_CHANGE = {"tune": ("n_trials", "time_budget", "storage", "keep_weights", "heartbeat_s"), "train": ("threads",),
              "": ("runs_dir", "base_dir")}


def study_name(cfg: Config) -> str:
    return cfg.tune.study_name or f"{cfg.name}-tune"


def study_dir(cfg: Config) -> StudyDir:
    from pathlib import Path

    return StudyDir(Path(cfg.runs_dir) / study_name(cfg))


def directions(cfg: Config, objective: Objective) -> list[str]:
    """The study's directions: the objective's, then `minimize` for each of `tune.also_minimize`."""
    return [objective.direction] + ["minimize"] * len(cfg.tune.also_minimize)


def _sampler(cfg: Config, worker: int) -> optuna.samplers.BaseSampler:
    # Each worker gets its own seed: the same seed in two processes would propose the same values.
    seed = cfg.tune.seed + worker
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.tune.sampler == "grid":
        return optuna.samplers.GridSampler(grid(cfg.tune.space), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(cfg.tune.startup_trials, 1))


def _pruner(cfg: Config) -> optuna.pruners.BasePruner:
    if cfg.tune.pruner == "none" or cfg.tune.also_minimize:
        return optuna.pruners.NopPruner()
    if cfg.tune.pruner == "hyperband":
        # Resources are training steps, reported at each validation (train.eval_every).
        # `eval_every: auto` is decided per trial from the data: Optuna then reads it off the first trial.
        every = cfg.train.eval_every
        return optuna.pruners.HyperbandPruner(min_resource="auto" if every == "auto" else every, max_resource="auto")
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.startup_trials,
                                       n_warmup_steps=cfg.tune.warmup_steps)


def storage_for(cfg: Config, sd: StudyDir) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats (a stale trial is failed and retried)."""
    url = cfg.tune.storage or sd.default_storage()
    # SQLite serialises writers; several workers' commits queue on the lock instead of failing at once.
    engine = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=cfg.tune.heartbeat_s, grace_period=2 * cfg.tune.heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as e:   # a bad URL, a missing driver, an unreachable server: the user can act on each
        raise ConfigError(f"tune.storage {url!r} cannot be opened: {type(e).__name__}: {e}") from None


def search_identity(cfg: Config, objective: Objective) -> dict[str, Any]:
    """What a study must not change between runs: the base config (minus MAY_CHANGE) and the objective."""
    raw = copy.deepcopy(dump_config(cfg))
    for section, keys in MAY_CHANGE.items():
        node = raw.get(section, {}) if section else raw
        for k in keys:
            node.pop(k, None)
    return {"config": raw, "objective": objective.name, "direction": objective.direction}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def open_study(cfg: Config, sd: StudyDir, objective: Objective, worker: int = 0) -> optuna.Study:
    """Create the study or load it to continue.

    Raises:
        ConfigError: the stored study was made for another search (the differences are listed).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # tunelab logs each trial itself
    name = study_name(cfg)
    study = optuna.create_study(storage=storage_for(cfg, sd), study_name=name, sampler=_sampler(cfg, worker),
                                pruner=_pruner(cfg), directions=directions(cfg, objective), load_if_exists=True)
    identity = search_identity(cfg, objective)
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", identity)
        for point in cfg.tune.enqueue:   # lists (e.g. target_modules) are stored as JSON text, as suggest() does
            study.enqueue_trial({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in point.items()})
    elif stored != identity or [d.name.lower() for d in study.directions] != directions(cfg, objective):
        diff = _differences(stored, identity)
        raise ConfigError(f"study '{name}' in {cfg.tune.storage or sd.default_storage()} was started for another "
                          "search; continuing it would mix trials of different searches. Differences:\n  "
                          + "\n  ".join(diff[:20] or ["objective directions"])
                          + "\nSet tune.study_name to start a new study, or restore the settings above.")
    return study


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of dead processes on this machine as failed and enqueue them again."""
    host = socket.gethostname()
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or psutil.pid_exists(pid):
            continue
        frozen = study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        retry(study, frozen)
        recovered.append(t.number)
    if recovered:
        log.info(f"trial(s) {', '.join(map(str, recovered))} were interrupted (their process is gone): marked failed, "
                 "their parameters queued to run again")
    return recovered


def retry_now(study: optuna.Study, number: int) -> None:
    """Queue the parameters of trial `number` (just failed by an interruption) to run again."""
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[number])


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name (complete, pruned, running, waiting, fail)."""
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


def target(cfg: Config) -> int:
    """Trials to finish: `tune.n_trials`, or the grid's size when that is smaller."""
    return min(cfg.tune.n_trials, grid_size(cfg.tune.space)) if cfg.tune.sampler == "grid" else cfg.tune.n_trials


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial; in multi-objective mode the Pareto trial with the best first objective."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    if len(study.directions) == 1:
        return study.best_trial
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(study.best_trials, key=lambda t: (sign * t.values[0], -t.number))
