"""Give memory a finished stage freed back to the operating system before the next stage starts.

A stage's objects (a Trainer with its optimizer and callbacks, a calibration model, a frozen-layer pass)
form reference cycles, and glibc keeps freed heap pages mapped: without this, one process running
estimate -> train -> evaluate carries each stage's leftovers into the next (measured on the Banking77
demo: peak RSS 4.99 GB without this, 3.96 GB with it; its evaluation alone peaks at 2.21 GB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None   # glibc only


def release() -> None:
    """Collect unreachable objects, empty torch's CUDA cache when a GPU is in use, then return the C heap's
    free pages to the OS (glibc's `malloc_trim`; elsewhere only the collection)."""
    gc.collect()
    torch = sys.modules.get("torch")   # never imported here: core stays light
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
