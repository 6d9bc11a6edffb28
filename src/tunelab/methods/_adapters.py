"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), which PEFT does not offer.

Each adapter is a small residual MLP `h + up(act(down(h)))` registered as a child of the projection
it follows (so it is saved, moved and counted with the model) and applied by a forward hook on that
projection. Hooks leave the base modules' own parameter names and code untouched, so base
checkpoints still load and no library code is patched.
Houlsby: after the attention output projection and after the MLP output projection of every layer.
Pfeiffer: after the MLP output projection only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.methods._layers import find_layer_stack, task_head_names

ADAPTERS_FILE = "adapters.safetensors"
ADAPTERS_CONFIG = "tunelab_adapters.json"

# Output projections, relative to one transformer layer, in the architectures tunelab supports:
# Llama/Mistral/Qwen/SmolLM, BERT/MiniLM/RoBERTa, GPT-2, DistilBERT, OPT/BART-style.
ATTN_OUT = ("self_attn.o_proj", "attention.output.dense", "attn.c_proj", "attention.out_lin",
            "self_attn.out_proj", "attn.out_proj")
MLP_OUT = ("mlp.down_proj", "output.dense", "mlp.c_proj", "ffn.lin2", "fc2")
PLACES = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}


class Bottleneck(nn.Module):
    """Residual bottleneck `h + up(gelu(down(h)))`; `up` starts at zero so a new adapter is the identity."""

    def __init__(self, hidden: int, size: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.down = nn.Linear(hidden, size, dtype=dtype, device=device)
        self.up = nn.Linear(size, hidden, dtype=dtype, device=device)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(nn.functional.gelu(self.down(h)))


def _projection(layer: nn.Module, candidates: tuple[str, ...]) -> nn.Module:
    modules = dict(layer.named_modules())
    for name in candidates:
        if name in modules:
            return modules[name]
    raise ValueError(f"{type(layer).__name__}: no output projection among {candidates}; "
                     "bottleneck adapters do not know this architecture (use method.name: lora)")


def _out_features(proj: nn.Module) -> int:
    # nn.Linear exposes out_features; GPT-2's Conv1D stores it as nf.
    return getattr(proj, "out_features", None) or proj.nf


CHILD = "bottleneck_adapter"


def _apply_adapter(module: nn.Module, args: tuple, output):
    # Looked up on the hooked module at call time (not captured in a closure), so a deep-copied
    # model runs its own copy of the adapter.
    adapter = getattr(module, CHILD)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def add_adapters(model: nn.Module, kind: str, size: int) -> nn.Module:
    """Insert one bottleneck adapter per place of `kind` in every layer; returns `model` (modified in place)."""
    _, stack = find_layer_stack(model)
    for layer in stack:
        for place in PLACES[kind]:
            proj = _projection(layer, ATTN_OUT if place == "attn" else MLP_OUT)
            if hasattr(proj, CHILD):
                raise ValueError("bottleneck adapters are already present on this model")
            weight = next(proj.parameters())
            proj.add_module(CHILD, Bottleneck(_out_features(proj), size, weight.dtype, weight.device))
            proj.register_forward_hook(_apply_adapter)
    model.tunelab_adapters = {"kind": kind, "size": size}
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changed: adapter parameters and the classification head (if any), keyed by name."""
    heads = tuple(f"{h}." for h in task_head_names(model))
    return {n: p.detach().contiguous() for n, p in model.named_parameters()
            if f".{CHILD}." in n or (heads and n.startswith(heads))}


def save_adapters(model: nn.Module, path: Path) -> None:
    """Write `adapters.safetensors` (weights) and `tunelab_adapters.json` (kind, size) to `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(path / ADAPTERS_FILE))
    (path / ADAPTERS_CONFIG).write_text(json.dumps(model.tunelab_adapters), encoding="utf-8")


def load_adapters(model: nn.Module, path: Path) -> nn.Module:
    """Insert the adapters saved in `path` into a freshly loaded base `model` and load their weights."""
    meta = json.loads((Path(path) / ADAPTERS_CONFIG).read_text(encoding="utf-8"))
    add_adapters(model, meta["kind"], meta["size"])
    state = load_file(str(Path(path) / ADAPTERS_FILE))
    expected = set(adapter_state(model))
    if set(state) != expected:
        raise ValueError(f"{path}: adapter weights do not fit this base model "
                         f"(missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]})")
    model.load_state_dict(state, strict=False)
    return model
