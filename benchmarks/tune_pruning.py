"""What pruning saves: the same study with and without the pruner, same seed, same trials budget.

    python benchmarks/tune_pruning.py [--trials 16] [--steps 80] [--pruner median] [--sampler random] [--seed 0]
        [--json PATH]

Both studies run `tunelab tune`'s own code path (`tunelab.tune.stage.run`, search only) on a small real
task that fits a shared 2-core CPU: 20 intents of this repository's Banking77 data (40 training, 10
validation and 10 test queries each: 200 validation queries, the number `tune.eval_examples` judges a
trial on by default), `task: classification` with the embedded all-MiniLM-L6-v2 frozen and a fresh
classification head (as examples/banking77/minilm_head.yaml), so a trial is seconds and the learning
rate decides most. An unpruned trial trains 80 steps (1.6 passes), validated every 10; no trial is
pruned before a quarter of its steps, nor before 4 trials completed. The space is what a user would
search: the learning rate over four decades, warm-up and weight decay; the objective is validation
accuracy.
The peer is Optuna without pruning (every trial runs to its last step).

Both studies try the same configurations: the default sampler is Optuna's seeded random sampler, whose
proposals do not depend on what earlier trials reported. With TPE (`--sampler tpe`) the pruned trials'
intermediate values feed the next proposals, so the two studies search different configurations and a
difference in best value mixes search luck with what pruning threw away; the benchmark prints whether
the configurations matched (`same_configurations`). With the same configurations, the best value of the
pruned study equals the unpruned one exactly when the pruner never stopped the eventual winner.

Compute is counted in trial-steps (optimizer steps trained, summed over trials), which does not depend
on what else runs on the machine; wall seconds are printed too. `pruning_saved_fraction` =
1 - steps(pruned study) / steps(unpruned study). Goal: >= 0.40 at an equal best value.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANKING77 = ROOT / "examples" / "banking77"


def write_subset(out: Path, intents: int, train_per: int, val_per: int, test_per: int) -> None:
    """The first `intents` intents (sorted by name) of Banking77: `train_per` train, `val_per` validation (the
    next queries of Banking77's training file, disjoint from train) and `test_per` test queries each."""
    by_intent = {}
    for source in ("train.csv", "test.csv"):
        with (BANKING77 / source).open(encoding="utf-8", newline="") as f:
            groups: dict[str, list[dict]] = {}
            for r in csv.DictReader(f):
                groups.setdefault(r["category"], []).append(r)
        by_intent[source] = [groups[lab] for lab in sorted(groups)[:intents]]
    parts = (("train.csv", "train.csv", 0, train_per), ("validation.csv", "train.csv", train_per, val_per),
             ("test.csv", "test.csv", 0, test_per))
    for name, source, skip, per in parts:
        if per:
            with (out / name).open("w", encoding="utf-8", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["text", "category"])
                w.writeheader()
                w.writerows(r for rows in by_intent[source] for r in rows[skip:skip + per])


def study_config(root: Path, pruner: str, sampler: str, trials: int, steps: int, threads: int, warmup: int,
                 seed: int = 0):
    from tunelab.config import config_from_dict

    validation = "validation.csv" if (root / "validation.csv").exists() else None
    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
             "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
             "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1}}
    return config_from_dict({
        "name": f"prune-{pruner}", "task": "classification", "runs_dir": str(root / "runs"), "base_dir": str(root),
        "data": {"train": "train.csv", "test": "test.csv", "validation": validation,
                 "input_columns": ["text"], "output_column": "category",
                 "max_length": 48, "dedup": {"near": False}, "leakage": "drop"},
        "model": {"name": "minilm-l6"}, "method": {"name": "freeze", "trainable_layers": 0},
        "train": {"max_steps": steps, "eval_every": max(steps // 8, 1), "patience": None, "batch_size": 16,
                  "threads": threads, "precision": "fp32", "log_every": 10},
        "tune": {"n_trials": trials, "pruner": pruner, "sampler": sampler, "startup_trials": 4, "seed": seed,
                 "warmup_steps": warmup,
                 "space": space}})


def measure(cfg) -> dict:
    """Run the study (search only) and sum what it cost."""
    import optuna
    from optuna.trial import TrialState

    from tunelab.tune import stage
    from tunelab.tune.study import best_trial, storage_for, study_dir, study_name

    start = time.time()
    stage.run(cfg, search_only=True)
    wall = time.time() - start
    study = optuna.load_study(study_name=study_name(cfg), storage=storage_for(cfg, study_dir(cfg)))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    best = best_trial(study)
    return {"trials": len(finished), "pruned": sum(t.state == TrialState.PRUNED for t in finished),
            "trial_steps": sum(t.user_attrs.get("steps", 0) for t in finished),
            "best_value": best.value if best else None, "best_trial": best.number if best else None,
            "best_params": best.params if best else None, "wall_seconds": round(wall, 1),
            "configurations": [t.params for t in sorted(finished, key=lambda t: t.number)],
            "curves": {t.number: t.intermediate_values for t in finished},
            "values": {t.number: t.value for t in finished}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--intents", type=int, default=20)
    ap.add_argument("--pruner", default="median", choices=["median", "hyperband"])
    ap.add_argument("--sampler", default="random", choices=["random", "tpe"],
                    help="random: both studies try the same configurations (see the module's docstring)")
    ap.add_argument("--steps", type=int, default=80,
                    help="optimizer steps of an unpruned trial (80 x 16 = 1.6 passes over the 800 training queries: "
                         "most curves flatten before the end, as in a real study); validation every steps/8")
    ap.add_argument("--warmup-steps", type=int, default=None,
                    help="tune.warmup_steps: no pruning before this step (default: a quarter of a trial, as "
                         "examples/banking77/tune.yaml: 200 of 834)")
    # One thread: on a shared 2-core machine two OpenMP threads per process measured ~10x slower per step.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="tune.seed: the sampler's seed (other configurations)")
    ap.add_argument("--val-per-intent", type=int, default=10,
                    help="validation queries per intent, disjoint from train: 10 x 20 intents = 200, the size "
                         "tune.eval_examples judges trials on by default; 0 = carve 10%% of train (80 queries)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.warmup_steps is None:
        args.warmup_steps = args.steps // 4

    from tunelab import runtime_defaults
    from tunelab.core.log import setup_cli_logging

    runtime_defaults()
    setup_cli_logging()
    logging.getLogger("tunelab").setLevel(logging.WARNING)   # one line per study, not per step
    os.environ.setdefault("TUNELAB_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_subset(root, args.intents, 40, args.val_per_intent, 10)
        results = {}
        for pruner in (args.pruner, "none"):
            results[pruner] = measure(study_config(root, pruner, args.sampler, args.trials, args.steps, args.threads,
                                                  args.warmup_steps, args.seed))
            shown = {k: v for k, v in results[pruner].items() if k not in ("configurations", "curves", "values")}
            print(f"{pruner:>9}: {shown}", flush=True)
    pruned, unpruned = results[args.pruner], results["none"]
    saved = 1 - pruned["trial_steps"] / unpruned["trial_steps"]
    same = pruned["configurations"] == unpruned["configurations"]
    out = {"pruning_saved_fraction": round(saved, 4), "best_value_pruned": pruned["best_value"],
           "best_value_unpruned": unpruned["best_value"], "pruner": args.pruner,
           "pruner_warmup_steps": args.warmup_steps, "sampler": args.sampler, "seed": args.seed,
           "same_configurations": same, "best_trial_pruned": pruned["best_trial"],
           "best_trial_unpruned": unpruned["best_trial"], "trials": args.trials,
           "trial_steps_pruned": pruned["trial_steps"], "trial_steps_unpruned": unpruned["trial_steps"],
           "trials_pruned": pruned["pruned"], "wall_seconds_pruned": pruned["wall_seconds"],
           "wall_seconds_unpruned": unpruned["wall_seconds"],
           "wall_ratio": round(unpruned["wall_seconds"] / max(pruned["wall_seconds"], 1e-9), 2),
           # validation accuracy at each validation step of every trial: what a pruner saw
           "curves_pruned": pruned["curves"], "curves_unpruned": unpruned["curves"],
           "values_unpruned": unpruned["values"], "configurations": unpruned["configurations"],
           "setup": f"minilm-l6 frozen + classification head, {args.intents} Banking77 intents x 40 queries, "
                    f"{args.steps} steps, validation accuracy on "
                    f"{args.val_per_intent * args.intents or 'a 10% carve of train'} queries, "
                    f"{args.sampler} sampler seed {args.seed}, no pruning before step "
                    f"{args.warmup_steps}, {args.threads} threads"}
    print(f"pruning saved {saved:.1%} of trial-steps ({pruned['trial_steps']} vs {unpruned['trial_steps']}; "
          f"{pruned['pruned']} of {pruned['trials']} trials pruned); best validation accuracy "
          f"{pruned['best_value']:.4f} with pruning vs {unpruned['best_value']:.4f} without; "
          f"wall {pruned['wall_seconds']:.0f}s vs {unpruned['wall_seconds']:.0f}s ({out['wall_ratio']}x); "
          f"same configurations tried: {'yes' if same else 'no'}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
