"""Resume after a crash: 20 uninterrupted steps equal 10 steps + kill -9 + `--resume` (tiny Llama, fp32, CPU).

The killed run is a real process that SIGKILLs itself while the Trainer saves checkpoint-15 (after
the Trainer wrote its files, before tunelab's completion marker), so checkpoint-15 is a genuine
half-written checkpoint; a second one whose marker lists a file that was later cut short is injected.
Both must be skipped, training must continue from checkpoint-10, and the finished run must equal the
uninterrupted one: weights, every logged loss and learning rate, the early-stopping state, no
duplicated or missing log line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from test_pipeline import tiny_project
from tunelab.cli import app
from tunelab.config import load_config
from tunelab.core.rundir import RunDir
from tunelab.pipeline import train_only

STEPS = 20


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    # min_delta: only the first validation counts as an improvement, so the early-stopping counter is 1
    # at checkpoint-10 and reaches patience (3) exactly at step 20 only when it is restored on resume.
    # batch_size 3: an epoch is 7 steps, so checkpoint-10 lies inside the second epoch and a resume that
    # restarted the data position would train on other batches; LoRA dropout draws from the RNG every
    # step, so a resume that did not restore the RNG states would draw other masks. (With batch_size 4 an
    # epoch is 5 steps and dropout 0: neither mistake changed a number.)
    tiny_project(root, "ref", method={"dropout": 0.1},
                 train={"max_steps": STEPS, "batch_size": 3, "eval_every": 5, "save_every": 5, "keep_checkpoints": 3,
                        "patience": 3, "min_delta": 10.0})
    return root


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from tunelab.config import load_config
    from tunelab.core.rundir import RunDir
    from tunelab.data import stage as prepare_stage
    from tunelab.models import load_tokenizer
    from tunelab.train import stage as train_stage

    class KillWhileSaving(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 15:   # the Trainer wrote checkpoint-15; tunelab's marker comes after us
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = load_config(sys.argv[1], ["name=killed"])
    rd = RunDir.create(cfg)
    tok = load_tokenizer(cfg.model)
    train_stage.run(cfg, rd, prepare_stage.run(cfg, rd, tok), tok, callbacks=[KillWhileSaving()])
""")


def losses(rd: RunDir) -> dict[int, dict]:
    """Per step: the logged training loss, learning rate and gradient norm (each step once)."""
    rows = [r for r in rd.read_log() if "loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"duplicated log lines for steps {steps}"
    return {r["step"]: {k: r[k] for k in ("loss", "learning_rate", "grad_norm")} for r in rows}


def test_kill_and_resume_equals_uninterrupted(project):
    ref = train_only(load_config(project / "cfg.yaml"))

    env = {**os.environ, "TUNELAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, str(project / "cfg.yaml")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    killed = RunDir(project / "runs" / "killed")
    assert killed.state() == "interrupted"
    assert [s for s, _ in killed.checkpoint_folders()] == [5, 10, 15]
    assert killed.checkpoint_marker(killed.checkpoint_path(15)) is None      # killed before its marker
    assert max(r["step"] for r in killed.read_log()) == 15                   # steps 11-15 are logged ...
    # ... and a checkpoint whose marker lists a file that was cut short afterwards:
    fake = killed.checkpoint_path(18)
    shutil.copytree(killed.checkpoint_path(10), fake)
    (fake / "optimizer.pt").write_bytes((fake / "optimizer.pt").read_bytes()[:100])
    for verb in ("eval", "export"):
        refused = CliRunner().invoke(app, [verb, str(killed.path)])
        assert refused.exit_code == 2 and "interrupted" in refused.output, refused.output

    result = CliRunner().invoke(app, ["train", str(project / "cfg.yaml"), "name=killed", "--resume"])
    assert result.exit_code == 0, result.output
    assert "skipping checkpoint-18: incomplete" in result.output
    assert "skipping checkpoint-15: incomplete" in result.output
    assert "resuming from checkpoint-10 (step 10)" in result.output
    assert killed.state() == "complete"
    assert killed.status()["stages"]["train"]["resumed_from"] == "checkpoint-10"
    assert not killed.checkpoints.exists()

    a, b = load_file(ref.last / "adapter_model.safetensors"), load_file(killed.last / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = load_file(ref.best / "adapter_model.safetensors"), load_file(killed.best / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_log, res_log = losses(ref), losses(killed)
    assert sorted(res_log) == list(range(1, STEPS + 1))
    assert {s: res_log[s] for s in range(11, STEPS + 1)} == {s: ref_log[s] for s in range(11, STEPS + 1)}
    evals = lambda rd: [(r["step"], r["eval_loss"]) for r in rd.read_log() if "eval_loss" in r]  # noqa: E731
    assert evals(killed) == evals(ref) and [s for s, _ in evals(ref)] == [5, 10, 15, 20]
    tr_ref, tr_res = ref.metrics()["train"], killed.metrics()["train"]
    for key in ("steps", "best_step", "best_eval_loss", "train_loss", "tokens"):
        assert tr_res[key] == tr_ref[key], key
    assert tr_ref["best_step"] == 5   # min_delta: the restored early-stopping state kept step 5 as best


def stop_with(sig: int, cfg: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Train in a real process that sends itself `sig` at step 5, through the CLI's error guard."""
    script = KILLED_RUN.replace("os.kill(os.getpid(), signal.SIGKILL)", f"os.kill(os.getpid(), {int(sig)})") \
        .replace("state.global_step == 15", "state.global_step == 5") \
        .replace('["name=killed"]', repr(list(overrides)))
    script = script.replace("train_stage.run(cfg, rd, prepare_stage.run(cfg, rd, tok), tok, callbacks=[KillWhileSaving()])",
                            "import typer\nfrom tunelab.cli import _guard\ntry:\n"
                            "    _guard(train_stage.run, cfg, rd, prepare_stage.run(cfg, rd, tok), tok, "
                            "callbacks=[KillWhileSaving()])\n"
                            "except typer.Exit as e:\n    sys.exit(e.exit_code)")
    env = {**os.environ, "TUNELAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script, str(cfg)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_sigterm_saves_a_checkpoint_and_resume_refuses_a_changed_config(project):
    done = stop_with(signal.SIGTERM, project / "cfg.yaml", "name=term", "train.keep_checkpoints=1")
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert "SIGTERM received: saving a resumable checkpoint" in done.stdout + done.stderr
    assert "interrupted: training stopped by SIGTERM at step 6" in done.stderr
    rd = RunDir(project / "runs" / "term")
    assert rd.state() == "interrupted" and rd.stage_state("train") == "interrupted"
    assert rd.checkpoint_marker(rd.checkpoint_path(6))["step"] == 6   # saved at the end of the next step
    assert [s for s, _ in rd.checkpoint_folders()] == [6]   # keep_checkpoints=1: checkpoint-5 went once 6 was whole

    changed = CliRunner().invoke(app, ["train", str(project / "cfg.yaml"), "name=term", "train.lr=1e-3", "--resume"])
    assert changed.exit_code == 2
    assert "the training config changed since it was started:\n  - train.lr changed (0.005 -> 0.001)" in changed.output
    fine = CliRunner().invoke(app, ["train", str(rd.path), "--resume", "train.threads=2"])   # may change
    assert fine.exit_code == 0, fine.output
    assert "resuming from checkpoint-6 (step 6)" in fine.output and rd.state() == "complete"
    assert sorted(losses(rd)) == list(range(1, STEPS + 1))


def test_log_torn_by_a_kill_reads_and_cuts_back(tmp_path):
    """A writer killed mid-line leaves a torn last line: reading skips it, a resume cuts the log back."""
    rd = RunDir(tmp_path)
    for step in (1, 2, 3):
        rd.log({"step": step, "loss": 1.0 / step})
    with rd.metrics_jsonl.open("a") as f:
        f.write('{"step": 4, "lo')
    assert [r["step"] for r in rd.read_log()] == [1, 2, 3]
    assert rd.log_lines() == 3
    assert rd.truncate_log(2) == 2   # line 3 and the torn line 4
    assert [r["step"] for r in rd.read_log()] == [1, 2]
    assert rd.metrics_jsonl.read_text().endswith("\n")


class PowerCut(Exception):
    """Stands for the process dying at a step (in-process, so each method's checkpoint round trip is quick)."""


@pytest.mark.parametrize("task,method", [("sft", "full"), ("sft", "adapter"), ("sft", "prompt_tuning"),
                                         ("classification", "lora")])
def test_each_method_resumes_to_the_same_weights(project, tmp_path, task, method):
    from transformers import TrainerCallback

    from tunelab.data import stage as prepare_stage
    from tunelab.models import load_tokenizer
    from tunelab.train import stage as train_stage

    class CutAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise PowerCut

    over = [f"runs_dir={tmp_path}", f"task={task}", f"method.name={method}", "method.adapter_size=8",
            "method.num_virtual_tokens=4", "train.max_steps=6", "train.save_every=3", "train.eval_every=3"]
    runs = {}
    for name, cut in (("whole", False), ("cut", True)):
        cfg = load_config(project / "cfg.yaml", over + [f"name={name}"])
        rd = RunDir.create(cfg)
        tok = load_tokenizer(cfg.model)
        prepared = prepare_stage.run(cfg, rd, tok)
        if cut:
            with pytest.raises(PowerCut):
                train_stage.run(cfg, rd, prepared, tok, callbacks=[CutAt()])
            assert rd.state() == "failed"
            train_stage.run(cfg, rd, prepared, tok, resume=True)
            assert rd.status()["stages"]["train"]["resumed_from"] == "checkpoint-3"
        else:
            train_stage.run(cfg, rd, prepared, tok)
        runs[name] = rd
    files = sorted(p.name for p in runs["whole"].last.glob("*.safetensors"))
    assert files
    for f in files:
        a, b = load_file(runs["whole"].last / f), load_file(runs["cut"].last / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert losses(runs["cut"]) == losses(runs["whole"])


BETWEEN_STAGES = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from tunelab.core.rundir import RunDir

    rd = RunDir(Path(sys.argv[1]))
    rd.path.mkdir()
    rd.set_goal(sys.argv[2])   # what `tunelab run` (report) or `tunelab prepare` (prepare) records
    with rd.stage("prepare"):
        pass
    print(rd.state(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # between prepare and train
""")


@pytest.mark.parametrize("goal,after_kill", [("report", "interrupted"), ("prepare", "complete")])
def test_a_kill_between_stages_never_leaves_a_complete_run(tmp_path, goal, after_kill):
    """A `tunelab run` killed after prepare completed, before train started, read `complete` (stage prepare)."""
    done = subprocess.run([sys.executable, "-c", BETWEEN_STAGES, str(tmp_path / "run"), goal],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert done.stdout.split() == ["running" if goal == "report" else "complete"]   # while the process lived
    rd = RunDir(tmp_path / "run")
    assert rd.state() == after_kill and rd.status()["stage"] == "prepare"
    assert rd.stage_state("prepare") == "complete"


def test_sigint_saves_a_checkpoint_and_resume_refuses_changed_data(project, tmp_path):
    """Ctrl-C during training saves a checkpoint; a resume after the training file changed is refused
    with the difference, and the checkpoint stays for a resume with the original data."""
    for f in ("cfg.yaml", "train.csv", "test.csv"):
        shutil.copy(project / f, tmp_path / f)
    over = ["name=int", f"runs_dir={tmp_path / 'runs'}"]
    done = stop_with(signal.SIGINT, tmp_path / "cfg.yaml", *over)
    assert done.returncode == 128 + signal.SIGINT, done.stderr[-2000:]
    assert "SIGINT received: saving a resumable checkpoint" in done.stderr
    rd = RunDir(tmp_path / "runs" / "int")
    assert rd.state() == "interrupted" and rd.checkpoint_marker(rd.checkpoint_path(6))["step"] == 6

    original = (tmp_path / "train.csv").read_bytes()
    (tmp_path / "train.csv").write_bytes(original + b"a brand new message about my card (99),card\n")
    changed = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), *over, "--resume"])
    assert changed.exit_code == 2, changed.output
    assert f"cannot resume {rd.path}: the data changed since it was started:\n  - " in changed.output
    assert "train.csv" in changed.output.split("changed since it was started:")[1], changed.output
    assert rd.checkpoint_marker(rd.checkpoint_path(6))["step"] == 6 and rd.stage_state("train") == "interrupted"

    (tmp_path / "train.csv").write_bytes(original)
    fine = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), *over, "--resume"])
    assert fine.exit_code == 0, fine.output
    assert "resuming from checkpoint-6 (step 6)" in fine.output and rd.state() == "complete"
