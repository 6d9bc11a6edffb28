"""`--workers N`: N worker processes on this machine, each running trials of the same study.

Workers are the same command line with a hidden `--worker I` option: they open the study from its
storage and take trials from it, so nothing but the database is shared (which is also how workers on
other machines join). Each writes its output to `<study>/workers/<i>.log`. A worker dies with the
process that started it (Linux: PR_SET_PDEATHSIG), so killing `tunelab tune` stops the whole study.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Callable

from tunelab.core.errors import UserError
from tunelab.core.rundir import StudyDir

log = logging.getLogger(__name__)

POLL_S = 2.0
PR_SET_PDEATHSIG = 1


class WorkerFailed(UserError, RuntimeError):
    """A worker process exited with an error; the message holds the end of its log."""


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its parent dies (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run_workers(sd: StudyDir, n: int, argv: list[str], tick: Callable[[], None]) -> None:
    """Start `n` workers running `tunelab tune ARGV --worker I --workers N`, wait for all, call `tick` meanwhile.

    Raises:
        WorkerFailed: a worker exited with a non-zero code (the others are stopped).
    """
    sd.workers_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNELAB_PROGRESS": "0"}   # one bar, the parent's; workers' logs stay readable
    procs = []
    for i in range(n):
        out = sd.worker_log(i).open("w", encoding="utf-8")
        cmd = [sys.executable, "-m", "tunelab.cli", "tune", *argv, "--worker", str(i), "--workers", str(n)]
        procs.append((i, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None), out))
    log.info(f"{n} workers started; their output: {sd.workers_dir}/<i>.log")
    first: list[tuple[int, int]] = []   # the worker(s) that failed before the others were stopped
    try:
        while any(p.poll() is None for _, p, _ in procs):
            tick()
            first = _failed(procs)
            if first:
                _stop(procs)
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the workers too: each marks its trial failed and queues it again.
        for _, p, _ in procs:
            p.wait()
        raise
    finally:
        for _, _, out in procs:
            out.close()
    failed = first or _failed(procs)
    if failed:
        i, code = failed[0]
        raise WorkerFailed(f"worker {i} exited with code {code}; the end of {sd.worker_log(i)}:\n"
                           + _tail(sd.worker_log(i)))


def _failed(procs) -> list[tuple[int, int]]:
    """(index, exit code) of the workers that exited with an error (the first to fail first)."""
    return [(i, p.returncode) for i, p, _ in procs if p.returncode not in (None, 0)]


def _stop(procs) -> None:
    for _, p, _ in procs:
        if p.poll() is None:
            p.terminate()
    for _, p, _ in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def _tail(path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
