"""Device and precision: bf16 where the hardware runs it fast, fp32 otherwise, never fp16 on CPU."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from tunelab.config import ConfigError, TrainConfig
from tunelab.core.home import tunelab_home


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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _gemm_seconds(dtype, reps: int = 7) -> float:
    # A LoRA-training-sized matmul (1024 tokens x hidden 576 -> 1536): the shape the step is made of.
    x, w = torch.randn(1024, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    torch.nn.functional.linear(x, w)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return best


def bf16_speedup() -> float:
    """Measured fp32 / bf16 matmul time on this CPU (> 1: bf16 is faster), cached per CPU model and flags.

    Why measure: AVX512-BF16 without AMX has the same FLOPs per cycle as fp32 FMA, and bf16 autocast
    adds weight casts, so bf16 can be slower than fp32 (measured 0.5x on such a CPU); with AMX it is
    several times faster. The flags alone do not tell which.
    """
    key = f"{_cpu_model()}|{','.join(cpu_bf16_flags())}|torch {torch.__version__}"
    cache = tunelab_home() / "hardware.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        ratios = []
        for _ in range(3):   # interleaved, so both dtypes see the same load on a shared machine
            ratios.append(_gemm_seconds(torch.float32) / _gemm_seconds(torch.bfloat16))
        known[key] = {"bf16_speedup": round(sorted(ratios)[1], 3)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2))
    return known[key]["bf16_speedup"]


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


def device_of(cfg: TrainConfig) -> str:
    """"cuda" or "cpu" from `train.device` (auto: CUDA when a device is visible).

    Raises:
        ConfigError: CUDA asked but absent.
    """
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    return "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and cuda)) else "cpu"


def choose(cfg: TrainConfig) -> Precision:
    """Pick device and precision from `train.device` and `train.precision`.

    Raises:
        ConfigError: fp16 on CPU (it is emulated and slower than fp32 there), CUDA asked but absent.
    """
    if device_of(cfg) == "cuda":
        return _choose_gpu(cfg)
    flags = cpu_bf16_flags()
    if cfg.precision == "fp16":
        raise ConfigError("train.precision=fp16 is not supported on CPU; use auto, bf16 or fp32")
    if cfg.precision == "bf16":
        why = f"CPU has {', '.join(flags)}" if flags else "this CPU has no bf16 instructions: slow"
        return Precision("cpu", True, False, f"bf16 autocast as asked ({why})")
    if cfg.precision == "fp32":
        return Precision("cpu", False, False, "fp32 as asked")
    if not flags:
        return Precision("cpu", False, False, "fp32: this CPU has no AVX512-BF16/AMX")
    speedup = bf16_speedup()
    if "amx_bf16" in flags or speedup >= 1.1:
        return Precision("cpu", True, False, f"bf16 autocast: CPU has {', '.join(flags)}; "
                                             f"measured bf16 matmul {speedup:.2f}x fp32")
    return Precision("cpu", False, False, f"fp32: CPU has {', '.join(flags)} but no AMX, and bf16 matmuls "
                                          f"measured {speedup:.2f}x fp32 here (train.precision=bf16 forces it)")


def _choose_gpu(cfg: TrainConfig) -> Precision:
    """bf16 on GPUs that run it (Ampere and later), fp16 with loss scaling on older ones, fp32 when asked.

    fp16 has too little range for gradients: the Trainer scales the loss dynamically (a GradScaler)
    whenever `fp16=True`, which is what Precision.fp16 turns on.
    """
    name = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    gpu = f"{name} (compute capability {major}.{minor})"
    bf16_ok = torch.cuda.is_bf16_supported()
    if cfg.precision == "fp32":
        return Precision("cuda", False, False, f"fp32 as asked on {gpu}")
    if cfg.precision == "bf16" and not bf16_ok:
        raise ConfigError(f"train.precision=bf16 but {gpu} does not support bf16; use auto (fp16 with loss "
                          "scaling) or fp32")
    if cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_ok):
        return Precision("cuda", True, False, f"bf16 autocast: {gpu} supports bf16")
    why = "as asked" if cfg.precision == "fp16" else "this GPU has no bf16"
    return Precision("cuda", False, True, f"fp16 autocast with dynamic loss scaling ({why}) on {gpu}")
