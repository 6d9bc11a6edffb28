"""What to change when a run will not fit: concrete settings, each with what it saves."""

from __future__ import annotations

import math

from tunelab.config import Config
from tunelab.estimate.memory import Memory, gb
from tunelab.methods import LORA_FAMILY


def _smaller_batch(cfg: Config, mem: Memory, excess: float) -> str | None:
    """A micro-batch whose activations fit, with gradient accumulation keeping the examples per step."""
    b = cfg.train.batch_size
    if b == 1 or mem.activations <= 0:
        return None
    keep = max(0.0, (mem.activations - excess) / mem.activations)   # share of the activations that may stay
    new_b = max(1, 2 ** int(math.log2(max(1, int(b * keep)))))
    if new_b >= b:
        new_b = max(1, b // 2)
    per_step = b * cfg.train.grad_accum
    accum = math.ceil(per_step / new_b)
    return (f"train.batch_size={new_b} train.grad_accum={accum}: {new_b * accum} examples per optimizer step as "
            f"before, with about {gb(mem.activations * new_b / b)} of activations instead of {gb(mem.activations)}")


def suggestions(cfg: Config, mem: Memory, excess: float, device: str, cuda_available: bool) -> list[str]:
    """Settings that bring the peak down by about `excess` bytes, most effective first."""
    out = []
    name = cfg.method.name
    trained_state = mem.gradients + mem.optimizer
    if name not in LORA_FAMILY and trained_state > 0.25 * excess:
        out.append(f"method.name=lora: trains adapters of about 1% of the weights instead of {name}, saving most of "
                   f"the {gb(trained_state)} of gradients and optimizer state")
    batch = _smaller_batch(cfg, mem, excess)
    if batch:
        out.append(batch)
    if cfg.data.max_length > 128:
        out.append(f"data.max_length={cfg.data.max_length // 2}: activations grow with the longest batch "
                   "(check the truncation count it prints)")
    if name in LORA_FAMILY and name != "qlora" and (device == "cuda" or cuda_available):
        out.append(f"method.name=qlora: a 4-bit NF4 base takes about {gb(mem.weights * 0.14)} instead of "
                   f"{gb(mem.weights)} of weights (CUDA only)")
    if device == "cpu" and not cuda_available:
        out.append("a machine with a GPU (where method.name=qlora also stores the base in 4 bits) or with more memory")
    return out
