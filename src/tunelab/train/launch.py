"""`tunelab run|train CONFIG --nproc N`: training in N processes on this machine, started by `accelerate
launch` (torchrun underneath: gloo on CPU, NCCL with one GPU per process), never by tunelab itself.

The command is built here, logged before it runs, and printed alone by `--print-launch`, so a user
can copy it, add an accelerate config (FSDP, DeepSpeed, several machines: docs/scaling.md) and run
it by hand. Each launched process runs `python -m tunelab train CONFIG ...`; the pipeline in the
launching process has prepared the data before and evaluates after.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.core.errors import Interrupted, UserError
from tunelab.core.rundir import RunDir

log = logging.getLogger(__name__)


class LaunchError(UserError, RuntimeError):
    """The launched training processes failed; the message has rank 0's recorded error when there is one."""


def accelerate_command() -> list[str]:
    """`accelerate launch` of this Python environment (its console script, or the module when absent)."""
    script = Path(sys.executable).with_name("accelerate")
    return [str(script), "launch"] if script.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]


@dataclass(frozen=True)
class Launch:
    """How to start the training processes: `nproc` on this machine, optionally with an accelerate config.

    `config` and `overrides` are the user's own arguments, passed on verbatim: every process loads
    the same config the same way.
    """

    nproc: int
    config: Path
    overrides: list[str] = field(default_factory=list)
    accelerate_config: Path | None = None
    resume: bool = False   # the processes continue the run from its newest complete checkpoint

    @property
    def needed(self) -> bool:
        """Whether training needs the launcher (several processes, or an FSDP/DeepSpeed config)."""
        return self.nproc > 1 or self.accelerate_config is not None

    def command(self) -> list[str]:
        """The exact command that starts the training processes."""
        worker = ["-m", "tunelab", "train", str(self.config), *self.overrides, *(["--resume"] if self.resume else [])]
        if not self.needed:
            return [sys.executable, *worker]
        worker.insert(3, "--no-estimate")   # the launching process has printed it, calibrated, before
        cmd = accelerate_command()
        if self.accelerate_config is not None:
            cmd += ["--config_file", str(self.accelerate_config)]
        else:
            # --multi_gpu is accelerate's name for its torchrun launcher; on a machine without GPUs the
            # processes join a gloo group (TrainingArguments(use_cpu=True)). The rest silences its defaults.
            cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        # Port 0: a free port, so two runs (or two users) on one machine never collide.
        return cmd + ["--num_processes", str(self.nproc), "--main_process_port", "0", *worker]

    def printable(self) -> str:
        return shlex.join(self.command())

    def run(self, rd: RunDir) -> None:
        """Start the processes and wait for them.

        Raises:
            Interrupted: SIGINT/SIGTERM stopped training; the processes saved a resumable checkpoint.
            LaunchError: a process failed (the stall watchdog, an error in a rank); rank 0's recorded
                error is in the message, each process's own output is above it.
        """
        procs = f"{self.nproc} process{'es' if self.nproc > 1 else ''}"
        log.info(f"launching {procs}: {self.printable()}")
        code = _wait(subprocess.Popen(self.command()))
        if code == 0:
            return
        entry = rd.status().get("stages", {}).get("train") or {}
        if entry.get("status") == "interrupted":
            raise Interrupted(f"training in {procs} stopped; a resumable checkpoint is in {rd.checkpoints}. Continue "
                              f"with `tunelab train {rd.path} --nproc {self.nproc} --resume` (or `tunelab run ... "
                              "--resume`)")
        error = entry.get("error")
        raise LaunchError(f"training in {procs} failed (the launcher exited with code {code}); each process's "
                          f"output is above." + (f"\nrank 0 recorded: {error}" if error else ""))


def _wait(proc: subprocess.Popen) -> int:
    """Wait for the launcher to end. Ctrl-C reaches it too (one process group): it passes the signal to the
    training processes, which save a checkpoint and stop, so this process keeps waiting for them instead
    of killing the launcher (as `subprocess.run` would, orphaning them). SIGTERM, sent to this process
    alone, is passed on to the launcher."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum)) if main else None
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                log.warning("interrupt: waiting for the training processes to save a checkpoint and stop")
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
