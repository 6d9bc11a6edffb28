"""Peak memory of training, by part: the process before the model, weights, gradients, optimizer state,
activations. Counted from the model's parameters (on the meta device: nothing is loaded) and the
data's longest batch; `calibrate.py` replaces the activations by a measurement when it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil
from torch import nn

from tunelab.methods._layers import split_parts

GB = 1024 ** 3
# What a CUDA process holds beyond its tensors (context, cuBLAS/cuDNN workspaces): typical, not measured.
CUDA_CONTEXT = 0.5 * GB
ADAM_STATES = 2   # AdamW keeps exp_avg and exp_avg_sq, each the size of the parameter
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)   # 4 bits, an 8-bit absmax per 64 values, an fp32 one per 256 blocks


@dataclass
class Memory:
    """Bytes of each part of the peak; `measured` when the total is a measured peak (activations: the rest)."""

    where: str            # "RAM" (peak resident set of the process) or "GPU memory"
    baseline: float       # the process before the model: Python, torch, libraries, tokenizer, data
    weights: float
    gradients: float
    optimizer: float
    activations: float    # saved for the backward pass, plus working buffers
    measured: bool = False

    @property
    def total(self) -> float:
        return self.baseline + self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def line(self) -> str:
        parts = [("process", self.baseline), ("weights", self.weights), ("gradients", self.gradients),
                 ("optimizer state", self.optimizer),
                 ("activations" + (" (measured)" if self.measured else ""), self.activations)]
        return " + ".join(f"{name} {gb(v)}" for name, v in parts)


def gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def current_rss() -> int:
    return psutil.Process().memory_info().rss


def available(device: str) -> int:
    """Memory training may use: free RAM plus what this process holds, or the GPU's total memory."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[1]
    return psutil.virtual_memory().available + current_rss()


def _linear_4bit(name: str, module: nn.Module) -> bool:
    # bitsandbytes quantises the Linear layers of the body; the output head and a new task head stay.
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in ("lm_head", "score", "classifier")


def weight_bytes(model: nn.Module, quantized_4bit: bool = False) -> float:
    """Bytes the weights take: as stored, or with the body's Linear layers in NF4 (qlora)."""
    if not quantized_4bit:
        return float(sum(p.numel() * p.element_size() for p in model.parameters()))
    in_4bit = {id(m.weight) for n, m in model.named_modules() if _linear_4bit(n, m) and not _is_adapter(n)}
    total = 0.0
    for p in model.parameters():
        # prepare_model_for_kbit_training keeps the parameters it does not quantise in fp32.
        total += p.numel() * (NF4_BYTES if id(p) in in_4bit else 4)
    return total


def _is_adapter(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name


def trainable_bytes(model: nn.Module) -> float:
    return float(sum(p.numel() * 4 for p in model.parameters() if p.requires_grad))   # fp32 master weights


def trained_layers(model: nn.Module) -> tuple[int, int]:
    """(layers the backward pass goes through, layers): from the lowest layer holding a trainable
    parameter up (everything when the embeddings train; none for a head-only method)."""
    parts = split_parts(model)
    n = len(parts.layers)
    if any(p.requires_grad for _, p in parts.embeddings):
        return n, n
    for i, layer in enumerate(parts.layers):
        if any(p.requires_grad for _, p in layer):
            return n - i, n
    return 0, n


def activation_bytes(config, tokens: int, longest_row: int, supervised: int, layers: int,
                     act_bytes: int, causal: bool) -> float:
    """Activations the backward pass keeps for one micro-batch of `tokens` tokens (rows up to `longest_row`).

    Per layer and token: the block's matmul inputs and outputs (q, k, v, attention output, MLP gate/up/down)
    in the compute dtype, the two norm inputs in fp32, and the attention scores of eager attention.
    Causal LMs add the fp32 logits (with their softmax and gradient) at supervised positions.
    """
    h = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * h)
    heads = getattr(config, "num_attention_heads", 1)
    kv = h * getattr(config, "num_key_value_heads", heads) // heads
    per_token = act_bytes * (6 * h + 2 * kv + 3 * inter) + 4 * 2 * h
    if getattr(config, "_attn_implementation", "sdpa") == "eager":
        per_token += heads * longest_row * (act_bytes + 4)   # scores and their softmax
    logits = supervised * config.vocab_size * 12 if causal else 0
    return float(tokens * layers * per_token + logits)


def analytic(model: nn.Module, config, *, tokens: int, longest_row: int, supervised: int, act_bytes: int,
             causal: bool, quantized_4bit: bool, device: str, baseline: float) -> Memory:
    """The peak, part by part, from the method-applied model (meta device is fine) and the longest batch."""
    train_bytes = trainable_bytes(model)
    layers, _ = trained_layers(model)
    return Memory(
        where="GPU memory" if device == "cuda" else "RAM", baseline=baseline,
        weights=weight_bytes(model, quantized_4bit), gradients=train_bytes, optimizer=ADAM_STATES * train_bytes,
        activations=activation_bytes(config, tokens, longest_row, supervised, layers, act_bytes, causal))
