"""Device and precision: bf16 where the hardware runs it fast, fp32 otherwise, never fp16 on CPU."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from tunelab.config import ConfigError, TrainConfig


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16 matrix instructions this CPU advertises (avx512_bf16, amx_bf16), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(sorted(flags & {"avx512_bf16", "amx_bf16"}))


@dataclass(frozen=True)
class Precision:
    device: str           # "cpu" or "cuda"
    bf16: bool            # bf16 autocast
    fp16: bool            # fp16 autocast (GPUs without bf16 only)
    reason: str

    @property
    def autocast_dtype(self):
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None

    def autocast(self):
        """A context manager running matmuls in the chosen precision (a no-op for fp32)."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device, dtype=dtype, enabled=dtype is not None)


def choose(cfg: TrainConfig) -> Precision:
    """Pick device and precision from `train.device` and `train.precision`.

    Raises:
        ConfigError: fp16 on CPU (it is emulated and slower than fp32 there), CUDA asked but absent.
    """
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    device = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and cuda)) else "cpu"
    if device == "cpu":
        flags = cpu_bf16_flags()
        if cfg.precision == "fp16":
            raise ConfigError("train.precision=fp16 is not supported on CPU; use auto, bf16 or fp32")
        if cfg.precision == "bf16" or (cfg.precision == "auto" and flags):
            why = f"CPU has {', '.join(flags)}" if flags else "asked for bf16 (this CPU has no bf16 instructions: slow)"
            return Precision("cpu", True, False, f"bf16 autocast: {why}")
        return Precision("cpu", False, False, "fp32: this CPU has no AVX512-BF16/AMX" if cfg.precision == "auto" else "fp32 as asked")
    bf16_ok = torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_ok):
        return Precision("cuda", True, False, "bf16 autocast on GPU")
    if cfg.precision == "fp16" or cfg.precision == "auto":
        return Precision("cuda", False, True, "fp16 autocast: this GPU has no bf16")
    return Precision("cuda", False, False, "fp32 as asked")
