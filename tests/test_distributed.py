"""Training in several processes through `accelerate launch` (DDP over gloo on CPU) on a tiny model.

The invariant: two processes with 2 examples each per step log the same per-step losses, validation
losses and token counts as one process with 4, because the loss is normalised by the supervised
tokens of the whole step across processes. Every file operation of every process is recorded
(tests/_audit/sitecustomize.py): rank 1 touches nothing in the run folder. A rank stopped with
SIGSTOP makes rank 0's stall watchdog print the stacks and the likely causes, record the stall and
end the run. A two-process run killed mid-training resumes with `--nproc 2 --resume` to the same
losses as one process (and refuses to resume in one); Ctrl-C stops both processes after the same
step with one checkpoint, from which `--resume` finishes the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from accelerate.commands.config.config_args import load_config_from_file
from typer.testing import CliRunner

from intent_project import intent_project
from tiny import tiny_llama
from polling import wait_for
from tunelab.cli import app
from tunelab.config import load_config
from tunelab.core.rundir import RunDir
from tunelab.pipeline import train_only
from tunelab.train.launch import Launch, accelerate_command
from tunelab.train.watchdog import STALL_EXIT_CODE, StallWatchdog

TESTS = Path(__file__).resolve().parent
ACCELERATE_CONFIGS = TESTS.parent / "examples" / "accelerate"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # 19 training examples: 4 steps of 2 x 2 (or 1 x 4) examples stay inside the first epoch, whose
    # last, partial batch accelerate would complete with repeated examples in one process only.
    return intent_project(root, "one", tiny_llama(root / "tiny-llama"),
                          {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                          {"lr": 1e-2, "max_steps": 4, "batch_size": 2, "eval_every": 2, "log_every": 1,
                           "warmup_ratio": 0.0, "precision": "fp32", "threads": 1})


def _tunelab(project: Path, *args: str, audit: Path | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "TUNELAB_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    if audit is not None:
        audit.mkdir(parents=True, exist_ok=True)
        env.update(PYTHONPATH=os.pathsep.join([str(TESTS / "_audit"), env.get("PYTHONPATH", "")]),
                   TUNELAB_AUDIT_ROOT=str(project / "runs"), TUNELAB_AUDIT_OUT=str(audit))
    return subprocess.Popen([sys.executable, "-m", "tunelab", *args], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **popen)


def _per_step(rd: RunDir, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rd.read_log() if key in r}


def _audit(folder: Path) -> dict[str, list]:
    ops: dict[str, list] = {}
    for f in folder.glob("*.json"):
        doc = json.loads(f.read_text())
        ops.setdefault(doc["rank"], []).extend(doc["ops"])
    return ops


def test_two_processes_match_one_process_and_only_rank_0_writes(project, tmp_path):
    proc = _tunelab(project, "train", "cfg.yaml", "name=two", "--nproc", "2", "--no-estimate", audit=tmp_path / "audit")
    # Meanwhile the reference: one process, 4 examples per step (2 processes x 2).
    one = train_only(load_config(project / "cfg.yaml", ["train.batch_size=4"]))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert "--multi_gpu" in out and "--num_processes 2" in out   # the launch is printed before it runs
    two = RunDir(project / "runs" / "two")

    losses_one, losses_two = _per_step(one, "loss"), _per_step(two, "loss")
    assert sorted(losses_one) == sorted(losses_two) == [1, 2, 3, 4]
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-4), step
    assert len(set(losses_one.values())) > 1   # the steps did train: a frozen model would match trivially
    evals_one, evals_two = _per_step(one, "eval_loss"), _per_step(two, "eval_loss")
    assert sorted(evals_two) == [2, 4]
    for step in evals_one:
        assert evals_two[step] == pytest.approx(evals_one[step], rel=1e-4), step
    m1, m2 = one.metrics()["train"], two.metrics()["train"]
    assert m2["processes"] == 2 and m1["processes"] == 1
    assert m2["tokens"] == m1["tokens"] and m2["examples"] == m1["examples"]   # token counts summed over ranks
    assert two.state() == "complete" and (two.best / "adapter_model.safetensors").is_file()

    ops = _audit(tmp_path / "audit")
    assert ops.get("1") == [], f"rank 1 wrote in the run folder: {ops.get('1')}"
    assert "1" in ops   # the audit ran in rank 1 (an empty list is a finding, not a missing hook)
    rank0 = {Path(p).name for op in ops["0"] for p in op[1:]}
    assert {"status.json", "metrics.jsonl", "metrics.json", "trainable.json"} <= rank0
    assert any(name.startswith((".best.partial", ".last.partial")) for name in rank0)


def _rank(proc: subprocess.Popen, rank: str) -> psutil.Process | None:
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "tunelab" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def test_watchdog_ends_a_run_whose_rank_stalls(project):
    proc = _tunelab(project, "train", "cfg.yaml", "name=stall", "train.max_steps=100000", "train.eval_every=100000",
                    "train.stall_minutes=0.1", "--nproc", "2", "--no-estimate")
    rd = RunDir(project / "runs" / "stall")
    rank1 = None
    try:
        wait_for(lambda: rd.metrics_jsonl.is_file() and len(rd.read_log()) >= 2, 240, "training to start")
        rank1 = wait_for(lambda: _rank(proc, "1"), 30, "rank 1")
        rank1.send_signal(signal.SIGSTOP)   # the forced stall: rank 0 now waits in the gradient all-reduce
        wait_for(lambda: rd.stage_state("train") == "failed", 120, "the watchdog to record the stall")
        rank1.send_signal(signal.SIGCONT)   # let it dump its stack and receive the launcher's SIGTERM
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, out[-4000:]
    assert "stall watchdog: rank 0 of 2 made no progress for 0.1 minutes" in out, out[-4000:]
    for cause in ("deadlocked collective", "a process that died or was stopped", "data imbalance",
                  "the network between processes"):
        assert cause in out
    assert "(most recent call first)" in out   # faulthandler's stack dump
    assert f"code {STALL_EXIT_CODE}" in out or "exitcode  : 75" in out
    error = rd.status()["stages"]["train"]["error"]
    assert error.startswith("stall watchdog: rank 0 of 2") and "likely causes" in error


# ---------------------------------------------------------------- resuming a multi-process run

# Each process of a two-process run SIGKILLs itself when step 4 begins: checkpoint-2 is complete (every
# rank's RNG state in it), step 3 is logged, and nothing gets to save or record anything more.
CRASHING_WORKER = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from tunelab.config import load_config
    from tunelab.pipeline import _start
    from tunelab.train import stage as train_stage

    class Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = load_config(sys.argv[1], sys.argv[2:])
    rd, tokenizer, prepared = _start(cfg, False, False, "train")
    train_stage.run(cfg, rd, prepared, tokenizer, callbacks=[Crash()])
""")


def _one_process_reference(project: Path) -> RunDir:
    one = RunDir(project / "runs" / "one")
    if one.state() != "complete":   # made by the first test; alone, this test makes it
        one = train_only(load_config(project / "cfg.yaml", ["name=one", "train.batch_size=4"]))
    return one


def test_a_crashed_two_process_run_resumes_in_two_processes(project, tmp_path):
    overrides = ["name=crashed", "train.save_every=2"]
    script = tmp_path / "crashing_worker.py"
    script.write_text(CRASHING_WORKER)
    launch = Launch(2, project / "cfg.yaml", overrides).command()
    worker = launch.index("-m", len(accelerate_command()))
    done = subprocess.run([*launch[:worker], str(script), str(project / "cfg.yaml"), *overrides], cwd=project,
                          env={**os.environ, "TUNELAB_PROGRESS": "0"}, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout[-3000:] + done.stderr[-3000:]
    crashed = RunDir(project / "runs" / "crashed")
    assert crashed.state() == "interrupted", crashed.status()
    assert [s for s, _ in crashed.checkpoint_folders()] == [2]
    marker = crashed.checkpoint_marker(crashed.checkpoint_path(2))
    assert marker["processes"] == 2 and {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])
    assert max(r["step"] for r in crashed.read_log()) == 3

    alone = _tunelab(project, "train", "cfg.yaml", *overrides, "--resume", "--no-estimate")
    out, _ = alone.communicate(timeout=300)
    assert alone.returncode == 2 and "the number of training processes changed" in out and "2 -> 1" in out, out[-3000:]
    assert "resume with --nproc 2" in out and crashed.checkpoint_marker(crashed.checkpoint_path(2)) is not None

    resumed = _tunelab(project, "train", "cfg.yaml", *overrides, "--nproc", "2", "--resume", "--no-estimate")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-4000:]
    assert "resuming from checkpoint-2 (step 2)" in out, out[-4000:]
    assert crashed.state() == "complete" and crashed.status()["stages"]["train"]["resumed_from"] == "checkpoint-2"
    assert not crashed.checkpoints.exists()
    one = _one_process_reference(project)
    rows = [r for r in crashed.read_log() if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]   # step 3 once: the crashed run's line was cut
    for step, loss in _per_step(one, "loss").items():
        assert _per_step(crashed, "loss")[step] == pytest.approx(loss, rel=1e-4), step
    for step, loss in _per_step(one, "eval_loss").items():
        assert _per_step(crashed, "eval_loss")[step] == pytest.approx(loss, rel=1e-4), step
    assert crashed.metrics()["train"]["tokens"] == one.metrics()["train"]["tokens"]


def test_ctrl_c_stops_both_processes_after_one_step_and_resume_finishes(project, tmp_path):
    overrides = ["name=ctrl_c", "train.max_steps=40", "train.eval_every=1000", "train.save_every=1000"]
    proc = _tunelab(project, "train", "cfg.yaml", *overrides, "--nproc", "2", "--no-estimate", audit=tmp_path / "audit")
    rd = RunDir(project / "runs" / "ctrl_c")
    try:
        wait_for(lambda: rd.metrics_jsonl.is_file() and len(rd.read_log()) >= 2, 240, "training to start")
        os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C: the terminal signals the foreground process group
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-4000:]
    assert "--nproc 2 --resume" in out and "interrupted: training in 2 processes stopped" in out, out[-4000:]
    assert rd.state() == "interrupted"
    [(step, folder)] = rd.checkpoint_folders()   # one checkpoint, saved by both processes after the same step
    assert 2 <= step < 40 and rd.checkpoint_marker(folder)["processes"] == 2
    assert max(r["step"] for r in rd.read_log()) == step
    # Rank 1 wrote nothing in the run folder but its RNG state into the checkpoint (torch writes that file
    # from C++, out of the audit's sight; the folder it creates for it is seen).
    ops = _audit(tmp_path / "audit")
    assert "1" in ops and all(op[0] == "os.mkdir" and Path(op[1]) == folder for op in ops["1"]), ops["1"]
    assert (folder / "rng_state_1.pth").is_file()

    resumed = _tunelab(project, "train", "cfg.yaml", *overrides, "--nproc", "2", "--resume", "--no-estimate")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-4000:]
    assert f"resuming from checkpoint-{step} (step {step})" in out
    steps = [r["step"] for r in rd.read_log() if "loss" in r]
    assert steps == list(range(1, 41)) and rd.state() == "complete"


# ---------------------------------------------------------------- the launch command


def test_launch_command():
    cmd = Launch(2, Path("cfg.yaml"), ["train.lr=1e-4"]).command()
    assert cmd[:2][-1] in ("launch", "-m") and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "0"
    assert cmd[-6:] == ["-m", "tunelab", "train", "--no-estimate", "cfg.yaml", "train.lr=1e-4"]
    fsdp = Launch(1, Path("cfg.yaml"), [], ACCELERATE_CONFIGS / "fsdp.yaml").command()
    assert fsdp[fsdp.index("--config_file") + 1].endswith("fsdp.yaml") and "--multi_gpu" not in fsdp
    assert Launch(1, Path("cfg.yaml")).command() == [sys.executable, "-m", "tunelab", "train", "cfg.yaml"]


def test_print_launch_prints_and_runs_nothing(project):
    result = CliRunner().invoke(app, ["train", str(project / "cfg.yaml"), "name=printed", "--nproc", "3",
                                      "--print-launch"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == Launch(3, project / "cfg.yaml", ["name=printed"]).printable()
    assert not (project / "runs" / "printed").exists()


def test_nproc_inside_a_launched_process_is_refused(project, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["train", str(project / "cfg.yaml"), "--nproc", "2"])
    assert result.exit_code == 2 and "started by a launcher (2 processes)" in result.output


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("multi_node", "MULTI_GPU"), ("fsdp", "FSDP"),
                                       ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_load(name, kind):
    cfg = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind
    ds_file = cfg.deepspeed_config.get("deepspeed_config_file")
    if ds_file:
        ds = json.loads((TESTS.parent / ds_file).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1]) and ds["train_micro_batch_size_per_gpu"] == "auto"


# ---------------------------------------------------------------- the watchdog in one process


class _State:
    global_step = 7


def test_watchdog_fires_only_without_progress():
    stalls, exits = [], []
    dog = StallWatchdog(0.01, on_stall=stalls.append, exit=exits.append)   # 0.6 s
    dog.on_train_begin(None, _State(), None)
    for _ in range(8):   # progress every 0.2 s: no stall
        time.sleep(0.2)
        dog.on_step_end(None, _State(), None)
    assert not dog.fired.is_set()
    wait_for(lambda: exits, 10, "the watchdog")
    dog.on_train_end(None, _State(), None)
    assert exits == [STALL_EXIT_CODE]
    assert stalls[0].startswith("stall watchdog: training made no progress for 0.01 minutes") and "step 7" in stalls[0]
