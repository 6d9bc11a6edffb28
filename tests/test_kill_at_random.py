"""kill -9 at random moments of a tiny `tunelab run`, then `--resume`: the finished run equals an uninterrupted one.

    .venv/bin/python tests/test_kill_at_random.py --kills 20 [--seed 0] [--keep DIR]
    .venv/bin/python -m pytest -m slow tests/test_kill_at_random.py

One uninterrupted run of a tiny project (2-layer Llama, LoRA, fp32, CPU, 120 steps with a checkpoint
every 5) is the reference; it also measures when the run folder appears and when the run ends. Each
trial starts the same `tunelab run` as a real process, sends it SIGKILL at a moment drawn uniformly
from the reference's time between its run folder appearing and its end (prepare, train, checkpoint
writes, evaluate and report all get hit), then checks:
the folder's status is not `complete`; `tunelab export` refuses it, and so does `tunelab eval` while
training had not completed (once it has, `eval` is how one finishes evaluating, not a misuse);
`tunelab run --resume` finishes it; and the finished run equals the reference: the same weights in
`last/` and `best/`, every logged loss, learning rate, gradient norm and validation loss once per step,
the same training figures, test metrics and predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

STEPS = 120
TRAIN_KEYS = ("steps", "best_step", "best_eval_loss", "train_loss", "tokens", "examples")


def make_project(root: Path) -> Path:
    """The tiny project (data, model, config); returns the config path."""
    from test_pipeline import tiny_project

    # Enough steps for training to take a fair share of the run's time, a checkpoint every 5 of them.
    # batch_size 3 (7 steps an epoch) puts most checkpoints inside an epoch, so a resume must restore the
    # data position; LoRA dropout makes every step draw from the RNG, so it must restore the RNG states.
    return tiny_project(root, "ref", method={"dropout": 0.1},
                        train={"max_steps": STEPS, "batch_size": 3, "eval_every": 10, "save_every": 5,
                               "keep_checkpoints": 2, "patience": None})


def tunelab(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TUNELAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def reference(cfg: Path, runs: Path) -> tuple[float, float]:
    """Run the reference; returns (seconds until its run folder appeared, seconds until it ended)."""
    start, appeared = time.time(), None
    proc = tunelab("run", cfg)
    while proc.poll() is None:
        if appeared is None and (runs / "ref" / "config.yaml").exists():
            appeared = time.time() - start
        time.sleep(0.01)
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    return appeared, time.time() - start


def snapshot(run: Path) -> dict:
    """What must be equal between two finished runs (weights, the per-step log, figures, predictions)."""
    from safetensors.torch import load_file

    from tunelab.core.rundir import RunDir

    rd = RunDir(run)
    weights = {f"{part}/{k}": v for part in ("last", "best")
               for k, v in load_file(rd.path / part / "adapter_model.safetensors").items()}
    log: dict[tuple, dict] = {}
    for r in rd.read_log():
        kind = "eval" if "eval_loss" in r else "train" if "loss" in r else "end" if "train_loss" in r else None
        if kind:
            assert (r["step"], kind) not in log, f"duplicated log line for step {r['step']} ({kind})"
            log[(r["step"], kind)] = {k: r[k] for k in ("loss", "learning_rate", "grad_norm", "eval_loss") if k in r}
            if "train_loss" in r:   # the whole-run mean: a resumed run sums the same losses in another order
                log[(r["step"], kind)]["train_loss"] = round(r["train_loss"], 9)
    m = rd.metrics()
    return {"weights": weights, "log": log, "train": {k: m["train"][k] for k in TRAIN_KEYS},
            "test": json.dumps(m["test"], sort_keys=True), "predictions": rd.predictions()}


def same(a: dict, b: dict) -> list[str]:
    """What differs between two snapshots (empty: equal)."""
    import torch

    out = [k for k in ("log", "train", "test", "predictions") if a[k] != b[k]]
    if a["weights"].keys() != b["weights"].keys() or not all(torch.equal(a["weights"][k], b["weights"][k])
                                                             for k in a["weights"]):
        out.append("weights")
    return out


def trial(i: int, cfg: Path, runs: Path, at: float, ref: dict) -> dict:
    """Kill a run at `at` seconds, check the refusals, resume it, compare it; one row of the table."""
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.core.rundir import RunDir

    name = f"kill{i:02d}"
    proc = tunelab("run", cfg, f"name={name}")
    while not (runs / name / "config.yaml").exists() and proc.poll() is None:
        time.sleep(0.01)   # the moment is counted from the run folder's creation: imports take long and vary
    appeared = time.time()
    while proc.poll() is None and time.time() - appeared < at:
        time.sleep(0.005)
    if proc.poll() is not None:
        out = proc.stdout.read()
        assert proc.returncode == 0, out   # a run that failed must not pass for one that finished first
        return {"name": name, "at": at, "finished_first": True, "lasted": time.time() - appeared}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rd = RunDir(runs / name)
    row = {"name": name, "at": round(at, 2), "finished_first": False}
    if not rd.is_run():
        row.update(state="no run folder yet", stage="-", step=0)
    else:
        st = rd.status()
        steps = [r["step"] for r in rd.read_log()]
        complete = [s for s, p in rd.checkpoint_folders() if rd.checkpoint_marker(p)]
        row.update(state=rd.state(), stage=st.get("stage") or "-", step=max(steps, default=0),
                   checkpoints=f"{len(complete)}+{len(rd.checkpoint_folders()) - len(complete)}")
        if row["state"] == "complete":   # the kill came after the last write: nothing was interrupted
            assert rd.stage_state("report") == "complete", st   # a kill between two stages reads `interrupted`
            return {**row, "finished_first": True, "lasted": at}
        row["export"] = CliRunner().invoke(app, ["export", str(rd.path)]).exit_code
        trained = rd.stage_state("train") == "complete"
        row["eval"] = "trained" if trained else CliRunner().invoke(app, ["eval", str(rd.path)]).exit_code
    resumed = tunelab("run", cfg, f"name={name}", "--resume")
    out = resumed.communicate()[0]
    row["resume"] = resumed.returncode
    assert resumed.returncode == 0, out
    train = RunDir(runs / name).status()["stages"]["train"]
    row["resumed_from"] = "train kept" if row.get("eval") == "trained" else train.get("resumed_from") or "step 0"
    row["differs"] = same(snapshot(runs / name), ref)
    return row


def main(kills: int = 20, seed: int = 0, keep: Path | None = None) -> list[dict]:
    """Run the reference and `kills` killed-and-resumed trials; print one line per trial and a summary."""
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="tunelab-kill-"))
    folder.mkdir(parents=True, exist_ok=True)
    cfg = make_project(folder)
    runs = folder / "runs"
    appeared, ended = reference(cfg, runs)
    print(f"reference run: folder after {appeared:.1f}s, done after {ended:.1f}s; each kill comes a random "
          f"0-{ended - appeared:.1f}s after its run folder appears")
    ref = snapshot(runs / "ref")
    rng, rows, i, window = random.Random(seed), [], 0, ended - appeared
    while len([r for r in rows if not r["finished_first"]]) < kills:
        i += 1
        row = trial(i, cfg, runs, rng.uniform(0, window), ref)
        rows.append(row)
        if row["finished_first"]:
            # A shared machine's speed varies: a run that finished first shortens the window to its own length.
            window = min(window, row["lasted"])
            print(f"{row['name']}: t={row['at']:.2f}s finished before the kill (in {row['lasted']:.1f}s); "
                  f"window now 0-{window:.1f}s; drawn again")
            continue
        print(f"{row['name']}: killed at t={row['at']:.2f}s in {row['stage']:<8} (status {row['state']}, "
              f"log to step {row['step']}, checkpoints complete+partial {row.get('checkpoints', '-')}); "
              f"export exit {row.get('export', '-')}, eval exit {row.get('eval', '-')}; "
              f"--resume exit {row['resume']} from {row['resumed_from']}; "
              f"equal to the reference: {'yes' if not row['differs'] else 'NO ' + ', '.join(row['differs'])}")
    killed = [r for r in rows if not r["finished_first"]]
    bad = [r for r in killed if r["differs"] or r["state"] == "complete" or r.get("export", 2) != 2
           or r.get("eval") not in (2, "trained", None) or r["resume"] != 0]
    stages = {}
    for r in killed:
        stages[r["stage"]] = stages.get(r["stage"], 0) + 1
    print(f"{len(killed)} kills ({', '.join(f'{n} in {s}' for s, n in sorted(stages.items()))}): "
          f"{len(killed) - len(bad)} passed every check, {len(bad)} failed")
    return rows


@pytest.mark.slow
def test_kill_at_random_moments(tmp_path):
    rows = main(kills=20, keep=tmp_path)
    killed = [r for r in rows if not r["finished_first"]]
    assert len(killed) == 20
    for r in killed:
        assert r["state"] != "complete" and r["resume"] == 0 and not r["differs"], r
        assert r.get("export", 2) == 2 and r.get("eval") in (2, "trained", None), r


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="folder for the project and runs (default: a new temp folder)")
    args = parser.parse_args()
    rows = main(args.kills, args.seed, args.keep)
    sys.exit(1 if any(r.get("differs") for r in rows) else 0)
