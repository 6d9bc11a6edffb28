"""The dashboard's job queue: runs started from the New-run form, one training at a time by default.

Each job is an ordinary `tunelab run CONFIG` in its own process (and process group), so a run started
from the browser is exactly what the command line does, and Cancel is a signal: SIGINT first (the
stage records `interrupted`, and a resumable checkpoint is saved where the train stage supports it),
SIGTERM after `grace_s`, SIGKILL after as long again. A killed process leaves `running` in status.json
with a dead pid, which `RunDir.state` reads as `interrupted` too, so a cancelled run is never shown
as running or complete. Jobs live in the server's memory; their output goes to
`<runs>/_ui/jobs/<id>.log`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.core.errors import UserError
from tunelab.core.rundir import DashboardDir

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "cancelling")


class JobError(UserError):
    """A job request that cannot be honoured (unknown job, a run already queued, nothing to cancel)."""


@dataclass
class Job:
    id: str
    name: str                 # the run's name (its folder under the runs folder)
    config: str               # the config file the job runs
    resume: bool = False
    state: str = "queued"     # queued, running, cancelling, finished, failed, cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    pid: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class JobQueue:
    """Start queued jobs while fewer than `parallel` run; watch them end; cancel on request."""

    def __init__(self, runs_dir: Path, parallel: int = 1, grace_s: float = 30.0, poll_s: float = 0.5):
        self.dirs = DashboardDir(runs_dir)
        self.parallel, self.grace_s, self.poll_s = parallel, grace_s, poll_s
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._signalled: dict[str, tuple[float, int]] = {}   # job id -> (when, signal sent last)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tunelab-ui-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ requests

    def submit(self, name: str, config: Path, resume: bool = False) -> Job:
        """Queue `tunelab run CONFIG` (with `--resume`); refused while a job for the same run is active."""
        with self._lock:
            if any(j.name == name and j.state in ACTIVE for j in self._jobs.values()):
                raise JobError(f"run {name} already has a job queued or running; cancel it first")
            job = Job(uuid.uuid4().hex[:12], name, str(config), resume)
            self._jobs[job.id] = job
            self._pump()
        return job

    def cancel(self, job_id: str) -> Job:
        """Drop a queued job, or interrupt a running one (SIGINT, then SIGTERM, then SIGKILL)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobError(f"no job {job_id}")
            if job.state == "queued":
                job.state, job.ended = "cancelled", time.time()
            elif job.state == "running":
                job.state = "cancelling"
                self._signal(job, signal.SIGINT)
            return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def active_for(self, name: str) -> Job | None:
        """The queued or running job of run `name`, if any."""
        with self._lock:
            return next((j for j in self._jobs.values() if j.name == name and j.state in ACTIVE), None)

    def log_tail(self, job_id: str, max_bytes: int = 20_000) -> str:
        """The last `max_bytes` of a job's output."""
        path = self.dirs.job_log(job_id)
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - max_bytes))
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Interrupt running jobs (they end `interrupted`, resumable) and stop watching."""
        with self._lock:
            for job in self._jobs.values():
                if job.state == "queued":
                    job.state = "cancelled"
                elif job.state == "running":
                    job.state = "cancelling"
                    self._signal(job, signal.SIGINT)
        deadline = time.time() + self.grace_s
        while time.time() < deadline and any(p.poll() is None for p in self._procs.values()):
            time.sleep(0.2)
        for proc in self._procs.values():
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGKILL)
        self._stop.set()

    # ------------------------------------------------------------ the watcher

    def _pump(self) -> None:
        running = sum(1 for j in self._jobs.values() if j.state in ("running", "cancelling"))
        for job in sorted(self._jobs.values(), key=lambda j: j.created):
            if running >= self.parallel:
                return
            if job.state == "queued":
                self._start(job)
                running += 1

    def _start(self, job: Job) -> None:
        self.dirs.jobs.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tunelab.cli", "run", job.config] + (["--resume"] if job.resume else [])
        out = self.dirs.job_log(job.id).open("ab")
        try:
            # A new session: Cancel signals the whole process group (the run and any worker it starts).
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, "TUNELAB_PROGRESS": "0"})
        except OSError as e:
            job.state, job.ended = "failed", time.time()
            out.write(f"could not start {' '.join(cmd)}: {e}\n".encode())
            return
        finally:
            out.close()
        self._procs[job.id] = proc
        job.state, job.started, job.pid = "running", time.time(), proc.pid
        log.info(f"job {job.id}: started `{' '.join(cmd)}` (pid {proc.pid})")

    def _signal(self, job: Job, sig: int) -> None:
        proc = self._procs.get(job.id)
        if proc is not None and proc.poll() is None:
            _killpg(proc.pid, sig)
            self._signalled[job.id] = (time.time(), sig)

    def _escalate(self, job: Job) -> None:
        when, sig = self._signalled.get(job.id, (time.time(), signal.SIGINT))
        if time.time() - when < self.grace_s:
            return
        nxt = signal.SIGTERM if sig == signal.SIGINT else signal.SIGKILL
        log.warning(f"job {job.id}: still running {self.grace_s:.0f}s after {signal.Signals(sig).name}; "
                    f"sending {signal.Signals(nxt).name}")
        self._signal(job, nxt)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                for job_id, proc in list(self._procs.items()):
                    job = self._jobs[job_id]
                    code = proc.poll()
                    if code is None:
                        if job.state == "cancelling":
                            self._escalate(job)
                        continue
                    del self._procs[job_id]
                    job.returncode, job.ended = code, time.time()
                    job.state = "cancelled" if job.state == "cancelling" else ("finished" if code == 0 else "failed")
                    log.info(f"job {job.id} ({job.name}): {job.state} (exit code {code})")
                self._pump()


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def resume_supported() -> bool:
    """Whether this tunelab's `run` verb has `--resume` (the run-state issue adds it)."""
    import inspect

    from tunelab import cli

    return "resume" in inspect.signature(cli.run).parameters
