"""`tunelab tune` on a tiny model: pruning, kill-and-resume, two workers on one SQLite study, the test split
kept out of the search, and the study folder's outputs."""

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from test_pipeline import INTENTS, tiny_project
from polling import wait_for
from tunelab.cli import app
from tunelab.config import ConfigError, load_config
from tunelab.core.rundir import RunDir
from tunelab.tune import stage
from tunelab.tune.study import storage_for, study_dir, study_name

LR = {"type": "float", "low": 1e-4, "high": 3.0, "log": True}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    cfg = yaml.safe_load(tiny_project(root).read_text())
    cfg["train"].update(max_steps=8, eval_every=2, patience=None)
    cfg["eval"]["forgetting"] = False
    cfg["tune"] = {"n_trials": 3, "startup_trials": 2, "space": {"train.lr": LR, "method.r": [2, 4]}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root


def config(project, *overrides):
    return load_config(project / "cfg.yaml", list(overrides))


def study_of(cfg) -> optuna.Study:
    return optuna.load_study(study_name=study_name(cfg), storage=storage_for(cfg, study_dir(cfg)))


def tune_cmd(project, *args) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", "tune", str(project / "cfg.yaml"), *args]


# ------------------------------------------------------------------ config


def test_space_keys_are_checked_with_a_suggestion(project):
    with pytest.raises(ConfigError, match="'train.learning_rate' is not a config key; did you mean 'train.lr'"):
        config(project, 'tune.space={"train.learning_rate": [0.1, 0.2]}')
    with pytest.raises(ConfigError, match="'method.rank' is not a config key; did you mean 'method.r'"):
        config(project, 'tune.space={"method.rank": [2, 4]}')
    with pytest.raises(ConfigError, match="'train.seed' cannot be searched"):
        config(project, 'tune.space={"train.seed": [1, 2]}')
    with pytest.raises(ConfigError, match="log=true needs low > 0"):
        config(project, 'tune.space={"train.lr": {"type": "float", "low": 0, "high": 1, "log": true}}')
    cfg = config(project)
    assert cfg.tune.space["method.r"].type == "categorical" and cfg.tune.space["method.r"].choices == [2, 4]


def test_a_value_the_config_rejects_fails_before_any_trial(project, tmp_path):
    cfg = config(project, f"runs_dir={tmp_path}", 'tune.space={"method.r": [0, 4]}')
    with pytest.raises(ConfigError, match="tune.space.method.r: the value 0 is not accepted"):
        stage.run(cfg, search_only=True)
    assert not study_dir(cfg).trials_dir.exists()


# ------------------------------------------------------------------ pruning


def test_a_diverging_learning_rate_is_pruned_before_its_last_step(project, tmp_path):
    cfg = config(project, f"runs_dir={tmp_path}", "tune.objective=loss", 'tune.space={"train.lr": %s}' % json.dumps(LR))
    sd = study_dir(cfg)
    sd.path.mkdir(parents=True)
    # Two sound learning rates first (the median pruner's start-up trials), then one far too high.
    queued = optuna.create_study(storage=storage_for(cfg, sd), study_name=study_name(cfg))
    for lr in (5e-3, 3e-3, 3.0):
        queued.enqueue_trial({"train.lr": lr})
    stage.run(cfg, search_only=True)
    trials = study_of(cfg).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    pruned = trials[2]
    assert pruned.params["train.lr"] == 3.0
    assert pruned.user_attrs["pruned_at_step"] < pruned.user_attrs["max_steps"] == 8
    assert pruned.user_attrs["steps"] == pruned.user_attrs["pruned_at_step"]
    assert pruned.user_attrs["reason"].startswith("pruned at step")   # by the pruner, not a divergence guard
    rd = RunDir(sd.trials_dir / "2")
    # Each trial is an ordinary run folder whose prepare stage reused the study's prepared data.
    assert rd.stage_state("prepare") == "complete"
    assert os.path.samefile(rd.data.split_path("train"), sd.data.split_path("train"))
    tune = rd.metrics()["tune"]
    assert tune["state"] == "pruned" and tune["steps"] < 8
    assert max(r["step"] for r in rd.read_log()) < 8
    # Only the best trial keeps its weights.
    kept = [n for n in range(3) if (sd.trials_dir / str(n) / "best").exists()]
    assert kept == [study_of(cfg).best_trial.number]


# ------------------------------------------------------------------ kill and resume


def test_killed_mid_trial_then_rerun_gives_exactly_n_trials_none_duplicated(project, tmp_path):
    args = [f"runs_dir={tmp_path}", "tune.n_trials=3", "tune.pruner=none", "train.max_steps=40", "train.eval_every=10"]
    cfg = config(project, *args)
    sd = study_dir(cfg)
    proc = subprocess.Popen(tune_cmd(project, *args, "--search-only"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def mid_second_trial():
            if not sd.db_path.exists():
                return None
            try:
                trials = study_of(cfg).trials
            except Exception:   # the study is being created
                return None
            running = [t for t in trials if t.state == TrialState.RUNNING]
            return (len(trials) >= 2 and running and (sd.trials_dir / str(running[0].number) / "metrics.jsonl").exists()
                    and running[0])
        killed = wait_for(mid_second_trial, 180, "a trial in the middle of training")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = study_of(cfg).trials
    done_before = {t.number: (sd.trials_dir / str(t.number) / "config.yaml").stat().st_mtime_ns
                   for t in before if t.state == TrialState.COMPLETE}
    assert done_before and before[killed.number].state == TrialState.RUNNING
    assert RunDir(sd.trials_dir / str(killed.number)).state() == "interrupted"

    rerun = subprocess.run(tune_cmd(project, *args, "--search-only"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"trial(s) {killed.number} were interrupted" in rerun.stdout
    trials = study_of(cfg).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert trials[killed.number].state == TrialState.FAIL
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params          # retried with the same values
    keys = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(keys)) == len(keys)                                         # no configuration twice
    for number, mtime in done_before.items():                                 # finished trials were not redone
        assert (sd.trials_dir / str(number) / "config.yaml").stat().st_mtime_ns == mtime
    again = subprocess.run(tune_cmd(project, *args, "--search-only"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and len(study_of(cfg).trials) == len(trials)   # a finished study runs nothing



def test_a_trial_left_running_by_a_process_that_died_elsewhere_is_retried_by_the_rerun(project, tmp_path):
    """A re-run that finds a trial still marked running by another process (no pid of this machine: it cannot
    tell the process is gone) waits for its heartbeat to go stale, then runs the retry itself: N trials finish."""
    args = [f"runs_dir={tmp_path}", "tune.n_trials=2", "tune.pruner=none", "tune.heartbeat_s=1"]
    stage.run(config(project, *args[:1], "tune.n_trials=1", "tune.pruner=none", "tune.heartbeat_s=1"),
              search_only=True)
    cfg = config(project, *args)
    held = study_of(cfg).ask()                                   # a trial "running elsewhere" ...
    study_of(cfg)._storage.record_heartbeat(held._trial_id)      # ... whose process stopped beating
    stage.run(cfg, search_only=True)
    trials = study_of(cfg).trials
    assert trials[held.number].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and any(t.system_attrs.get("failed_trial") == held.number for t in complete)


# ------------------------------------------------------------------ two workers


def test_two_workers_on_one_sqlite_study_never_run_the_same_trial(project, tmp_path):
    args = [f"runs_dir={tmp_path}", "tune.n_trials=4", "tune.pruner=none", "train.max_steps=4"]
    out = subprocess.run(tune_cmd(project, *args, "--workers", "2", "--search-only"), capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = config(project, *args)
    sd = study_dir(cfg)
    trials = study_of(cfg).trials
    # Both workers may ask for a trial while the study's last one is running: the later ask is a surplus
    # trial, failed at once without a folder (trial.py), never a fifth training.
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL and not (sd.trials_dir / str(t.number)).exists() for t in surplus)
    trials = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    started = {}
    for i in range(2):
        for line in sd.worker_log(i).read_text().splitlines():
            if line.startswith("trial ") and ": " in line and "step" not in line.split(":")[0] and "train.lr=" in line:
                started.setdefault(int(line.split()[1].rstrip(":")), []).append(i)
    assert sorted(started) == [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert all(len(w) == 1 for w in started.values()), started              # each trial ran in one worker only
    assert len({t.user_attrs["pid"] for t in trials}) == 2                   # and both workers ran trials
    for t in trials:   # each trial folder trained the values the study recorded for it
        raw = RunDir(sd.trials_dir / str(t.number)).raw_config()
        assert raw["train"]["lr"] == t.params["train.lr"] and raw["method"]["r"] == t.params["method.r"]


# ------------------------------------------------------------------ never tune on test


def test_the_search_does_not_depend_on_the_test_split(project, tmp_path):
    rng = random.Random(1)
    garbage = tmp_path / "garbage.csv"
    with garbage.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for i in range(12):
            w.writerow(["".join(rng.choice("qxzjkvw#%@ ") for _ in range(30)) + f" {i}", rng.choice(list(INTENTS))])
    searches = []
    for name, test_file in (("real", str(project / "test.csv")), ("garbage", str(garbage))):
        cfg = config(project, f"runs_dir={tmp_path / name}", f"data.test={test_file}", "tune.n_trials=4",
                     "tune.startup_trials=1", "train.max_steps=4")
        stage.run(cfg, search_only=True)
        searches.append([(t.params, t.values, t.state) for t in study_of(cfg).trials])
    assert searches[0] == searches[1]
    assert len(searches[0]) == 4


# ------------------------------------------------------------------ outputs


def test_tune_writes_best_config_trials_csv_and_report(project, tmp_path):
    args = [f"runs_dir={tmp_path}", "tune.n_trials=2", "train.max_steps=4", "tune.also_minimize=[trainable_params]"]
    result = CliRunner().invoke(app, ["tune", str(project / "cfg.yaml"), *args])
    assert result.exit_code == 0, result.output
    cfg = config(project, *args)
    sd = study_dir(cfg)
    study = study_of(cfg)
    assert len(study.directions) == 2
    assert "2 configurations were tried" in result.output and "| fine-tuned |" in result.output
    rows = list(csv.DictReader(sd.trials_csv.open()))
    assert [r["state"] for r in rows] == ["complete", "complete"] and "trainable_params" in rows[0]
    best = load_config(sd.best_config_path)   # runnable with `tunelab run`
    assert best.name == "tiny-tune-best" and not best.tune.space
    chosen = max(study.best_trials, key=lambda t: (t.values[0], -t.number))
    assert best.train.lr == chosen.params["train.lr"] and best.method.r == chosen.params["method.r"]
    html = sd.report_html.read_text()
    assert "2</b> configurations were tried" in html and "Pareto set" in html and html.count("data:image/png;base64") >= 3
    final = RunDir(sd.trials_dir / str(chosen.number))   # its weights were reused and evaluated like `tunelab run`
    assert {"zero_shot", "few_shot", "finetuned"} <= set(final.metrics()["test"]) and final.report_html.exists()
    others = [t.number for t in study.trials if t.number != chosen.number]
    assert not any((sd.trials_dir / str(n) / "best").exists() for n in others)


def test_the_best_is_compared_with_the_starting_config_on_validation_and_test(project, tmp_path):
    # objective=loss: a tiny step size barely moves the validation loss, a large one lowers it, so the
    # best is trial 1 and the starting config (tune.enqueue[0], trial 0) is a different model.
    args = [f"runs_dir={tmp_path}", "tune.n_trials=2", "train.max_steps=6", "tune.objective=loss",
            "tune.space={train.lr: [1.0e-6, 1.0e-2]}", "tune.enqueue=[{train.lr: 1.0e-6}, {train.lr: 1.0e-2}]"]
    result = CliRunner().invoke(app, ["tune", str(project / "cfg.yaml"), *args])
    assert result.exit_code == 0, result.output
    cfg = config(project, *args)
    sd = study_dir(cfg)
    study = study_of(cfg)
    assert study.best_trial.number == 1 and study.trials[0].values[0] > study.trials[1].values[0]
    start = RunDir(sd.trials_dir / "0")   # kept its weights (keep_weights: best) and was evaluated on test
    assert start.best.exists() and "finetuned" in start.metrics()["test"]
    assert "zero_shot" not in start.metrics()["test"]   # the baselines ran once, for the best
    assert "| start: tune.enqueue[0] (trial 0) |" in result.output and "| best (trial 1) |" in result.output
    assert "Best - start on the test set:" in result.output and " p = " in result.output
    html = sd.report_html.read_text()
    assert "The best config vs the config the search started from" in html and "Best - start on the test set:" in html
    # Without the starting trial's weights (e.g. trained on another machine) it is trained once more.
    import shutil
    shutil.rmtree(start.best)
    result = CliRunner().invoke(app, ["tune", str(project / "cfg.yaml"), *args])
    assert result.exit_code == 0, result.output
    again = RunDir(sd.path / sd.start_name)
    assert "finetuned" in again.metrics()["test"] and "Best - start on the test set:" in result.output


def test_the_banking77_tune_starts_from_the_shipped_demo_config():
    from test_examples import EXAMPLES
    from tunelab.config import dump_config
    from tunelab.tune.space import trial_config

    tune = load_config(EXAMPLES / "banking77" / "tune.yaml")
    demo = load_config(EXAMPLES / "banking77" / "config.yaml")
    start = dump_config(trial_config(tune, tune.tune.enqueue[0], demo.runs_dir, demo.name))
    start.pop("tune")
    shipped = dump_config(demo)
    shipped.pop("tune")
    assert start == shipped   # trial 0 trains exactly the shipped demo
    assert tune.task == "classification" and tune.tune.pruner == "median" and tune.train.eval_every == "auto"


def test_the_report_embeds_optunas_four_views_of_a_study():
    from tunelab.tune.objective import Objective
    from tunelab.tune.report import plots

    def score(trial):   # a real study of a cheap function: the views only need trials with values
        lr = trial.suggest_float("train.lr", 1e-4, 1.0, log=True)
        r = trial.suggest_categorical("method.r", [2, 4])
        for step in (2, 4):
            trial.report(step / 10 - abs(math.log10(lr) + 2), step)
        return r / 100 - abs(math.log10(lr) + 2)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(score, n_trials=6)
    views = {p["title"]: p for p in plots(study, Objective("accuracy", True), ["accuracy"])}
    for title in ("Optimisation history", "Parameter importances", "Parallel coordinates", "Slices"):
        assert views[title].get("uri", "").startswith("data:image/png;base64,"), (title, views[title].get("error"))


def test_the_banking77_study_runs_at_tiny_scale(project, tmp_path):
    from test_examples import CLASSES, EXAMPLES, _banking_copy
    from tiny import tiny_llama

    data = _banking_copy(tmp_path)
    # The demo's decoder classifier cut to its first layers, on a tiny decoder cut the same way.
    model = tiny_llama(tmp_path / "llama-cls", num_labels=CLASSES, layers=3)
    args = ["model.layers=2", "method.freeze_below=1", f"model.name={model}", f"runs_dir={tmp_path / 'runs'}",
            f"data.train={data['train']}",
            f"data.test={data['test']}", "data.train_limit=24", "train.max_steps=2", "train.batch_size=4",
            "train.eval_every=1", "eval.max_test=8", "eval.baseline_per_class=1", "eval.forgetting=false",
            "eval.few_shot_k=2", "eval.bootstrap_samples=100", "eval.batch_size=8", "tune.n_trials=2"]
    result = CliRunner().invoke(app, ["tune", str(EXAMPLES / "banking77" / "tune.yaml"), *args])
    assert result.exit_code == 0, result.output
    cfg = load_config(EXAMPLES / "banking77" / "tune.yaml", args)
    trials = study_of(cfg).trials
    assert trials[0].params == cfg.tune.enqueue[0]            # the demo's own values are tried first
    assert load_config(study_dir(cfg).best_config_path).method.name == "lora"
    assert "2 configurations were tried" in result.output
    assert "| best (trial " in result.output and ("| start: tune.enqueue[0] (trial 0) |" in result.output
                                                   or "is the starting config itself" in result.output)
