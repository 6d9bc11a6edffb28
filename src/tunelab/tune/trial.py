"""One trial = one ordinary tunelab run: the study's config with the sampled values as dotted overrides,
its own run folder (`<study>/trials/<n>/`), the prepare stage (reusing the study's prepared data when
the trial did not change it) and the train stage with the objective callback. Nothing here reads the
test split: the trial's model sees training data, its objective validation data.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from tunelab.config import Config
from tunelab.core.rundir import RunDir, StudyDir
from tunelab.data import stage as prepare_stage
from tunelab.train import stage as train_stage
from tunelab.train.trainer import TrainingStopped
from tunelab.tune.objective import Objective, TrialCallback, ValidationScorer
from tunelab.tune.space import suggest, trial_config

log = logging.getLogger(__name__)
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)   # no process writes their folders any more


class Surplus(Exception):
    """Another worker started the study's last trial first: this one is not run."""


@dataclass
class TrialRunner:
    """Runs trials of one study in this process (a worker)."""

    cfg: Config                # the study's config
    sd: StudyDir
    study: optuna.Study
    objective: Objective
    tokenizer: Any
    n_trials: int
    extra: dict[str, Any]      # overrides every trial gets beside its parameters (threads per worker)
    current: int | None = None  # the number of the trial this process is running

    def __call__(self, trial: optuna.Trial):
        self.current = trial.number
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        ahead = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                         TrialState.RUNNING)) if t.number < trial.number]
        if len(ahead) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the study already has its {self.n_trials} trials")
        params = suggest(trial, self.cfg.tune.space)
        rd = self.sd.trial(trial.number)
        trial.set_user_attr("folder", str(rd.path))
        log.info(f"trial {trial.number}: " + (", ".join(f"{k}={_short(v)}" for k, v in params.items()) or "(no parameters)"))
        tcfg = trial_config(self.cfg, params, str(self.sd.trials_dir), str(trial.number), self.extra)
        return self.train(trial, tcfg, RunDir.create(tcfg, overwrite=True))

    def train(self, trial: optuna.Trial, tcfg: Config, rd: RunDir):
        """Prepare and train the trial's run folder; return its objective value(s) or raise TrialPruned."""
        if not rd.data_dir.exists() and self.sd.data.manifest_path.is_file():
            _link_tree(self.sd.data.path, rd.data_dir)   # the prepare stage reuses it when the fingerprint matches
        prepared = prepare_stage.run(tcfg, rd, self.tokenizer)
        scorer = ValidationScorer(tcfg, prepared, self.tokenizer, self.objective)
        callback = TrialCallback(trial, scorer, prune=not tcfg.tune.also_minimize)
        try:
            result = train_stage.run(tcfg, rd, prepared, self.tokenizer, callbacks=[callback])
        except TrainingStopped as e:
            # A diverged trial says the region is bad: pruned (the sampler learns from it), not a failure.
            reason = str(e).splitlines()[0]
            self._record(trial, rd, "pruned", callback, steps=None, reason=reason)
            raise optuna.TrialPruned(f"diverged: {reason}") from None
        steps = result.stats["steps"]
        if callback.pruned_at is not None:
            self._record(trial, rd, "pruned", callback, steps, reason=f"pruned at step {callback.pruned_at}")
            raise optuna.TrialPruned(f"pruned at step {callback.pruned_at}")
        best_step = result.stats.get("best_step")
        value = callback.history.get(best_step, callback.history[max(callback.history)])
        values = [value] + [_secondary(name, result.stats, scorer) for name in tcfg.tune.also_minimize]
        self._record(trial, rd, "complete", callback, steps, values=values, best_step=best_step)
        return values[0] if len(values) == 1 else values

    def _record(self, trial: optuna.Trial, rd: RunDir, state: str, callback: TrialCallback, steps: int | None,
                **extra: Any) -> None:
        """The trial's outcome in its run folder (metrics.json `tune`) and in the study (user attributes)."""
        if steps is None:   # diverged: the steps it reached are the last logged ones
            steps = max((r.get("step", 0) for r in rd.read_log()), default=0)
        history = {str(k): round(v, 6) for k, v in sorted(callback.history.items())}
        rd.set_metrics("tune", {"study": self.study.study_name, "trial": trial.number, "state": state,
                                "objective": self.objective.name, "steps": steps,
                                "max_steps": callback.max_steps, "history": history, **extra})
        trial.set_user_attr("steps", steps)
        trial.set_user_attr("max_steps", callback.max_steps)
        if callback.pruned_at is not None:
            trial.set_user_attr("pruned_at_step", callback.pruned_at)
        if "reason" in extra:
            trial.set_user_attr("reason", extra["reason"])
        log.info(f"trial {trial.number} {state} after {steps} steps"
                 + (f": {self.objective.name} {extra['values'][0]:.4f}" if "values" in extra else f" ({extra.get('reason')})"))


def _secondary(name: str, stats: dict, scorer: ValidationScorer) -> float:
    """A multi-objective mode value: trainable parameters or ms per validation example."""
    return float(stats["trainable_params"]) if name == "trainable_params" else float(scorer.latency_ms or 0.0)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _link_tree(src, dst) -> None:
    """Copy a folder as hard links where the file system allows (prepared files are replaced, never edited)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link)


def keep_best_weights(study: optuna.Study, sd: StudyDir, keep: set[int]) -> None:
    """Remove best/ and last/ of every finished trial on this machine except those in `keep` (tune.keep_weights:
    the study's best, and the starting config's trial, which the final step compares the best with)."""
    if not sd.trials_dir.is_dir():
        return
    finished = {t.number for t in study.get_trials(deepcopy=False, states=ENDED)}
    for number in sorted(finished - keep):
        rd = sd.trial(number)
        removed = [p.name for p in (rd.best, rd.last) if p.exists()]
        for p in (rd.best, rd.last):
            shutil.rmtree(p, ignore_errors=True)
        if removed and rd.metrics_json.is_file():
            rd.update_metrics("tune", {"weights_removed": "only the study's best and starting trials keep their weights (tune.keep_weights)"})

