"""Training in several processes through `accelerate launch` (DDP over gloo on CPU) on a tiny model.

The invariant: two processes with 2 examples each per step log the same per-step losses, validation
losses and token counts as one process with 4, because the loss is normalised by the supervised
tokens of the whole step across processes. Every file operation of every process is recorded
(tests/_audit/sitecustomize.py): rank 1 touches nothing in the run folder. A rank stopped with
SIGSTOP makes rank 0's stall watchdog print the stacks and the likely causes, record the stall and
end the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from accelerate.commands.config.config_args import load_config_from_file
from typer.testing import CliRunner

from intent_project import intent_project
from tiny import tiny_llama
from tunelab.cli import app
from tunelab.config import load_config
from tunelab.core.rundir import RunDir
from tunelab.pipeline import train_only
from tunelab.train.launch import Launch
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


def _wait(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


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
        _wait(lambda: rd.metrics_jsonl.is_file() and len(rd.read_log()) >= 2, 240, "training to start")
        rank1 = _wait(lambda: _rank(proc, "1"), 30, "rank 1")
        rank1.send_signal(signal.SIGSTOP)   # the forced stall: rank 0 now waits in the gradient all-reduce
        _wait(lambda: rd.stage_state("train") == "failed", 120, "the watchdog to record the stall")
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
    _wait(lambda: exits, 10, "the watchdog")
    dog.on_train_end(None, _State(), None)
    assert exits == [STALL_EXIT_CODE]
    assert stalls[0].startswith("stall watchdog: training made no progress for 0.01 minutes") and "step 7" in stalls[0]
