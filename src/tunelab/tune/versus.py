"""After the search: the best config against the config the search started from (`tune.enqueue[0]`,
e.g. the values of the recipe a person has now), on validation and on the test set, with the paired
test `tunelab compare` computes (McNemar for per-example correctness, else a paired bootstrap).

The starting config is the study's first trial with exactly `tune.enqueue[0]`'s values. Its trial keeps
its weights (trial.keep_best_weights), so it is only evaluated on the test set here, without baselines
(the best config's evaluation has them); when its weights are gone (trained on another machine, or
interrupted) it is trained once more in `<study>/start/`. Like final.py, only this step reads the test split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from tunelab import pipeline
from tunelab.config import Config
from tunelab.core.rundir import RunDir, StudyDir
from tunelab.report import compare
from tunelab.tune.objective import Objective
from tunelab.tune.space import decode_params, trial_config

log = logging.getLogger(__name__)


def start_trial(cfg: Config, study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's first complete trial with `tune.enqueue[0]`'s values, else its first trial with them (None
    without tune.enqueue or before it runs)."""
    if not cfg.tune.enqueue:
        return None
    want = cfg.tune.enqueue[0]
    runs = sorted((t for t in study.get_trials(deepcopy=False)
                   if decode_params(t.params) == want and not t.user_attrs.get("surplus")), key=lambda t: t.number)
    # An interrupted trial is retried with the same values: the retry that completed is the one to compare.
    return next((t for t in runs if t.state == TrialState.COMPLETE), runs[0] if runs else None)


@dataclass
class Versus:
    """The best config vs the starting config: validation values, test metrics, the paired test."""

    best: int
    start: int | None                  # the starting config's trial number (None: no trial of it finished)
    validation: dict[str, float | None]  # "best"/"start" -> the objective on validation
    test: dict[str, dict[str, Any]]    # "best"/"start" -> fine-tuned test metrics (full test set)
    paired: dict[str, Any] | None      # compare.paired(best, start); None when the best is the start

    def metric(self, objective: Objective) -> str:
        return (self.paired or {}).get("metric") or objective.name

    def rows(self, objective: Objective) -> list[dict[str, Any]]:
        """One row per config (the start only when it differs from the best): validation, test [95%], n."""
        who = {"best": f"best (trial {self.best})",
               "start": "start: tune.enqueue[0]" + (f" (trial {self.start})" if self.start is not None else "")}
        return [{"config": who[k], "validation": self.validation.get(k),
                 "test": compare.cell(self.test.get(k, {}), self.metric(objective)), "n": self.test.get(k, {}).get("n")}
                for k in (("best", "start") if self.paired is not None else ("best",))]

    def table(self, objective: Objective) -> str:
        """A Markdown table of `rows`, then the paired test's sentence."""
        lines = [f"| config | validation {objective.name} | test {self.metric(objective)} [95%] | n |", "|---|---|---|---|"]
        for r in self.rows(objective):
            v = "-" if r["validation"] is None else f"{r['validation']:.4f}"
            lines.append(f"| {r['config']} | {v} | {r['test']} | {r['n'] or '-'} |")
        return "\n".join(lines) + "\n\n" + self.verdict()

    def verdict(self) -> str:
        if self.paired is None:
            return f"The best config is the starting config itself (trial {self.best}): nothing to test."
        p = self.paired
        if "p" not in p:
            return f"No paired test: {p['n']} shared test examples, metric {p.get('metric') or '-'}."
        return (f"Best - start on the test set: {p['delta']:+.4f} {p['metric']}, {p['test']} p = {p['p']:.4g} "
                f"({p['n']} shared test examples).")


def compare_with_start(cfg: Config, sd: StudyDir, study: optuna.Study, best: optuna.trial.FrozenTrial,
                       best_rd: RunDir, reusable) -> Versus | None:
    """Evaluate the starting config on the test set (reusing its trial's weights) and test it against the best.

    `reusable(rd, cfg)` says whether a run folder holds weights trained with `cfg` (final.reusable).
    Returns None when the study has no `tune.enqueue`.
    """
    if not cfg.tune.enqueue:
        return None
    start = start_trial(cfg, study)
    best_eval = compare.load(best_rd.path)
    validation = {"best": best.values[0],
                  "start": start.values[0] if start is not None and start.state == TrialState.COMPLETE else None}
    if start is not None and start.number == best.number:
        return Versus(best.number, start.number, validation, {"best": best_eval.metrics}, None)
    params = cfg.tune.enqueue[0]
    start_cfg = trial_config(cfg, params, cfg.runs_dir, "start")
    rd = sd.trial(start.number) if start is not None else None
    if rd is not None and start.state == TrialState.COMPLETE and reusable(rd, start_cfg):
        log.info(f"the starting config (trial {start.number}, tune.enqueue[0]) kept its weights: evaluating it on the "
                 "test set (no baselines) for the paired test against the best")
        evaluated = rd.config()
        evaluated.eval.baselines, evaluated.eval.forgetting = [], False
        rd.write_config(evaluated)
        pipeline.evaluate_run(rd)
    else:
        log.info(f"training the starting config (tune.enqueue[0]) once more in {sd.path / sd.start_name} for the "
                 "paired test against the best (its trial's weights are not on this machine)")
        again = trial_config(cfg, {**params, "eval.baselines": [], "eval.forgetting": False}, str(sd.path), sd.start_name)
        rd = pipeline.run(again, overwrite=True)
    start_eval = compare.load(rd.path)
    best_eval.label, start_eval.label = f"best (trial {best.number})", "start (tune.enqueue[0])"
    return Versus(best.number, None if start is None else start.number, validation,
                  {"best": best_eval.metrics, "start": start_eval.metrics}, compare.paired(best_eval, start_eval))
