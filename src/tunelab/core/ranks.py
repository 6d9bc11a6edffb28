"""Which process of a multi-process run this is, read from the launcher's environment (no torch import).

`accelerate launch` (through torchrun) sets RANK, LOCAL_RANK and WORLD_SIZE in every process it
starts; a plain `tunelab run` has none of them and is rank 0 of 1. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
from typing import Mapping


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """Global rank from the launcher's environment (torchrun / accelerate set RANK); 0 when alone."""
    environ = os.environ if environ is None else environ
    return int(environ.get("RANK", environ.get("LOCAL_RANK", "0")) or 0)


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """Rank of this process on its machine (selects its GPU); 0 when alone."""
    environ = os.environ if environ is None else environ
    return int(environ.get("LOCAL_RANK", "0") or 0)


def world_size(environ: Mapping[str, str] | None = None) -> int:
    """Number of processes in the run (1 when not launched by a distributed launcher)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("WORLD_SIZE", "1") or 1)


def local_world_size(environ: Mapping[str, str] | None = None) -> int:
    """Number of processes of the run on this machine (they share its cores)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("LOCAL_WORLD_SIZE", environ.get("WORLD_SIZE", "1")) or 1)


def is_main_process() -> bool:
    """True in the one process that writes the run folder (global rank 0)."""
    return process_rank() == 0


def launched() -> bool:
    """True inside a process started by a distributed launcher with more than one process."""
    return world_size() > 1
