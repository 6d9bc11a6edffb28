"""Training in several processes (DDP through accelerate): the process group, barriers, sums across
processes, and who the other processes are (for the stall watchdog).

accelerate owns the process group. `setup` initialises its `PartialState` before the Trainer does,
telling it whether this is a CPU run (gloo) or a GPU run (NCCL, one GPU per process), so data
preparation can already wait at a barrier. Every helper is a no-op in a single process, so the
stages call them unconditionally.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator, Sequence

from tunelab.core.ranks import launched, process_rank

# How long a collective (a barrier while rank 0 prepares data, a gradient all-reduce) may wait before
# torch gives up; transformers' own default. Hangs inside training are caught sooner by the watchdog.
DDP_TIMEOUT_S = 1800


def setup(device: str) -> None:
    """Join the process group of a launched run (gloo on CPU, NCCL on GPU); nothing in a single process."""
    if not launched():
        return
    from accelerate import PartialState

    PartialState(cpu=device == "cpu", timeout=timedelta(seconds=DDP_TIMEOUT_S))


def _state():
    from accelerate import PartialState

    return PartialState()


def barrier() -> None:
    """Wait until every process reaches this point."""
    if launched():
        _state().wait_for_everyone()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first; the other processes run it after rank 0 has left it."""
    if not launched():
        yield
        return
    with _state().main_process_first():
        yield


def sum_across(values: Sequence[float]) -> list[float]:
    """Element-wise sums of `values` over every process (the values themselves in a single process)."""
    if not launched():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=_state().device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def peers() -> list[dict]:
    """Every process's rank, host and pid (a collective: every process must call it at the same point)."""
    me = {"rank": process_rank(), "host": socket.gethostname(), "pid": os.getpid()}
    if not launched():
        return [me]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, me)
    return out
