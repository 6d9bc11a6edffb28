"""Replay pruning rules on the unpruned study of a `tune_pruning.py --json` file, without training again.

    .venv/bin/python benchmarks/_pruning_replay.py build/tune_pruning.json

Both studies of `tune_pruning.py` try the same configurations and a trial's training is deterministic, so
what a pruner would have done is decided by the unpruned study's curves: each trial reports its curve step
by step to a fresh in-memory study with the rule under test, stops where the rule prunes it, and a trial
that completes keeps its measured value. (It reproduces the benchmark's own median rows exactly.) Prints,
per rule, the trial-steps saved and the best value reached against the unpruned best.
"""

from __future__ import annotations

import json
import sys
import warnings

import optuna


def rules(last: int, warm: int, every: int) -> dict:
    """Pruning rules to replay, for trials of `last` steps validated every `every` steps (`warm`: the benchmark's
    tune.warmup_steps)."""
    return {
        "median, start-up 4, from step 0": lambda: optuna.pruners.MedianPruner(4, 0),
        f"median, start-up 4, from step {warm}": lambda: optuna.pruners.MedianPruner(4, warm),
        f"median, start-up 4, from step {2 * warm}": lambda: optuna.pruners.MedianPruner(4, 2 * warm),
        f"25th percentile, start-up 4, from step {warm}": lambda: optuna.pruners.PercentilePruner(25.0, 4, warm),
        f"patient (1) median, from step {warm}": lambda: optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(4, warm), 1),
        f"hyperband, min {every} steps": lambda: optuna.pruners.HyperbandPruner(min_resource=every,
                                                                              max_resource=last),
        f"successive halving, min {every} steps": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=every),
    }


def replay(curves: dict[int, dict[int, float]], values: dict[int, float], pruner,
           last: int) -> tuple[float, float | None]:
    # Hyperband puts a trial in a bracket by a hash of the study's name: the name `--pruner hyperband` gives.
    study = optuna.create_study(study_name="prune-hyperband-tune", direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(0))
    steps, best = 0, None
    for number in sorted(curves):
        trial = study.ask()
        for step in sorted(curves[number]):
            trial.report(curves[number][step], step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                steps += step
                break
        else:
            study.tell(trial, values[number])
            steps += last
            best = values[number] if best is None else max(best, values[number])
    return 1 - steps / (last * len(curves)), best


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    data = json.loads(open(sys.argv[1]).read())
    curves = {int(k): {int(s): v for s, v in c.items()} for k, c in data["curves_unpruned"].items()}
    values = {int(k): v for k, v in data["values_unpruned"].items()}
    top = max(values.values())
    last = max(max(c) for c in curves.values())
    every = min(min(c) for c in curves.values())
    print(f"{sys.argv[1]}: {len(curves)} trials, unpruned best {top}")
    for name, make in rules(last, data.get("pruner_warmup_steps", last // 4), every).items():
        saved, best = replay(curves, values, make(), last)
        print(f"  {name:42s} saved {saved:6.1%}  best {best}{'  (equal)' if best == top else ''}")


if __name__ == "__main__":
    main()
