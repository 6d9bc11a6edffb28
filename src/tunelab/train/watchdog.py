"""The stall watchdog: training that makes no progress for `train.stall_minutes` is stopped with every
process's stack and the likely causes, instead of hanging until a collective times out (30 minutes
for gloo, longer for some NCCL set-ups) or forever.

Each process watches itself from a daemon thread: any micro-batch, optimizer step, validation or
save counts as progress. When the limit passes, the watchdog prints its own stack (every thread),
asks the other processes on its machine to print theirs (SIGUSR1, served by `faulthandler` even
while their main thread is blocked inside a collective), lets `on_stall` record the failure, and
ends the process; the launcher then stops the others. A stopped main thread cannot be interrupted
from Python, hence the hard exit.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

from transformers import TrainerCallback

from tunelab.core.ranks import process_rank, world_size
from tunelab.train import distributed

log = logging.getLogger(__name__)

STALL_EXIT_CODE = 75   # EX_TEMPFAIL: nothing was wrong with the input; the run may succeed when retried
DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)   # absent on Windows: no cross-process dumps there

STALL_CAUSES_DISTRIBUTED = """likely causes:
  - a deadlocked collective: one process waits in a gradient all-reduce or barrier that another never reaches
    (a code path only some ranks take, e.g. a callback that stops training on rank 0 only)
  - a process that died or was stopped (out of memory: check `dmesg` for the OOM killer; killed; SIGSTOP):
    the others wait for it forever; its own output above says why
  - data imbalance: one rank got many more or much longer batches and the others wait at the next step
  - the network between processes: NCCL/gloo cannot reach a peer (firewall, wrong MASTER_ADDR or interface:
    set NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME; NCCL_DEBUG=INFO shows where it stops)
  - a step slower than the limit (a large model on CPU): raise train.stall_minutes"""

STALL_CAUSES_SINGLE = """likely causes:
  - a step slower than the limit (a large model on CPU, a machine busy with other work): raise train.stall_minutes
  - a deadlock in a data-loading or tokenizer thread, or a blocked file system (the stack above shows where)"""


def _stderr():
    """The process's own stderr (faulthandler writes to a file descriptor, which a replaced sys.stderr,
    e.g. a test runner's capture, may not have); None when there is none."""
    stream = sys.__stderr__
    try:
        stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None
    return stream


class StallWatchdog(TrainerCallback):
    """Stop the process when training shows no progress for `minutes` (see the module docstring).

    Args:
        minutes: the limit; None disables the watchdog.
        on_stall: called with the message before the process ends (rank 0 records it in status.json).
        exit: how the process ends (tests replace it); `os._exit` by default.
    """

    def __init__(self, minutes: float | None, on_stall: Callable[[str], None] | None = None,
                 exit: Callable[[int], None] = os._exit):
        self.limit = None if minutes is None else minutes * 60.0
        self.minutes = minutes
        self.on_stall, self.exit = on_stall, exit
        self.last = time.monotonic()
        self.step = 0
        self.peers: list[dict] = []
        self.fired = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ progress

    def _progress(self, state=None) -> None:
        self.last = time.monotonic()
        if state is not None:
            self.step = state.global_step

    def on_train_begin(self, args, state, control, **kwargs):
        if self.limit is None:
            return
        self.peers = distributed.peers()   # collective: every rank is at train begin
        if DUMP_SIGNAL is not None and _stderr() is not None:
            faulthandler.register(DUMP_SIGNAL, file=_stderr(), all_threads=True)
        self._progress(state)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="tunelab-stall-watchdog", daemon=True)
        self._thread.start()

    def on_substep_end(self, args, state, control, **kwargs):
        self._progress(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._progress(state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._progress(state)

    def on_save(self, args, state, control, **kwargs):
        self._progress(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()
        if DUMP_SIGNAL is not None and self._thread is not None and _stderr() is not None:
            faulthandler.unregister(DUMP_SIGNAL)

    # ------------------------------------------------------------ the watch

    def _watch(self) -> None:
        poll = max(0.2, min(5.0, self.limit / 10))
        while not self._stop.wait(poll):
            if time.monotonic() - self.last > self.limit:
                self.fire()
                return

    def message(self) -> str:
        """What the watchdog prints when it stops the run."""
        n = world_size()
        causes = STALL_CAUSES_DISTRIBUTED if n > 1 else STALL_CAUSES_SINGLE
        who = f"rank {process_rank()} of {n}" if n > 1 else "training"
        return (f"stall watchdog: {who} made no progress for {self.minutes:g} minutes (train.stall_minutes) after "
                f"optimizer step {self.step}; stopping. The stack of every thread of "
                f"{'each process on this machine' if n > 1 else 'this process'} is printed above.\n{causes}")

    def fire(self) -> None:
        """Dump the stacks, record the stall and end the process."""
        self.fired.set()
        err = _stderr()
        if err is not None:
            err.write(f"\n--- stall watchdog: stack of rank {process_rank()} (pid {os.getpid()}, "
                      f"{socket.gethostname()}) ---\n")
            err.flush()
            faulthandler.dump_traceback(file=err, all_threads=True)
        self._signal_local_peers()
        time.sleep(1.0)   # let the peers' dumps reach the console before the launcher tears them down
        message = self.message()
        log.error(message)
        sys.stdout.flush()
        if self.on_stall is not None:
            try:
                self.on_stall(message)
            except Exception as e:  # the process ends either way; a failed record must not hide the stall
                log.error(f"could not record the stall: {e}")
        self.exit(STALL_EXIT_CODE)

    def _signal_local_peers(self) -> None:
        if DUMP_SIGNAL is None:
            return
        host, me = socket.gethostname(), os.getpid()
        for peer in self.peers:
            if peer["host"] == host and peer["pid"] != me:
                try:
                    os.kill(peer["pid"], DUMP_SIGNAL)
                except OSError:
                    pass   # already gone: that is likely the cause, and its absence says so
