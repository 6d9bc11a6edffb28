"""What a method will train, in numbers, with warnings for settings known to go wrong.

The train stage prints this before training and writes it to the run folder, so a user sees
"0.3% of parameters, LoRA scale 2.0, lr 2e-4" before spending an hour on a bad setting.
"""

from __future__ import annotations

import math

from torch import nn

from tunelab.methods._layers import task_head_names
from tunelab.config import MethodConfig, TrainConfig

LORA_FAMILY = ("lora", "dora", "rslora", "qlora")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as the values they hold, not bytes."""
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT knows how to count packed 4-bit weights
        return model.get_nb_trainable_parameters()
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def lora_scale(cfg: MethodConfig) -> float | None:
    """The factor the LoRA update is multiplied by: alpha/r, or alpha/sqrt(r) for rslora."""
    if cfg.name not in LORA_FAMILY:
        return None
    return cfg.alpha / (math.sqrt(cfg.r) if cfg.name == "rslora" else cfg.r)


def _frozen_task_head(model: nn.Module) -> bool:
    heads = [getattr(model, n) for n in task_head_names(model)]
    return bool(heads) and not any(p.requires_grad for h in heads for p in h.parameters())


def _warnings(model: nn.Module, cfg: MethodConfig, train: TrainConfig, trainable: int, total: int) -> list[str]:
    lr, out = train.lr, []
    if trainable == 0:
        out.append("no parameter is trainable: training would change nothing")
    if _frozen_task_head(model):
        out.append("the classification head is frozen: it starts random, so the model cannot learn the labels "
                   "(include `classifier`/`score` in method.trainable_regex)")
    if cfg.name in LORA_FAMILY and lr > 1e-3:
        out.append(f"train.lr={lr:g} is high for {cfg.name} (usual: 1e-4 to 5e-4); expect loss spikes or divergence")
    scale = lora_scale(cfg)
    if scale is not None and scale > 4:
        out.append(f"effective LoRA scale {scale:g} (alpha/r) is large; with lr={lr:g} updates may blow up "
                   "(usual alpha = r to 2r)")
    if cfg.name in ("full", "gradual_unfreeze") and lr > 5e-5:
        out.append(f"train.lr={lr:g} is high for full fine-tuning of a pretrained model (usual: 1e-5 to 5e-5); "
                   "it risks catastrophic forgetting")
    if cfg.name == "freeze" and trainable > total / 2 and lr > 5e-5:
        out.append(f"train.lr={lr:g} with {trainable / total:.0%} of parameters trainable is high "
                   "(usual for most-of-the-model training: 1e-5 to 5e-5)")
    if cfg.name == "adapter" and lr > 1e-2:
        out.append(f"train.lr={lr:g} is high for bottleneck adapters (usual: 1e-4 to 1e-3)")
    if cfg.name in ("ia3", "prompt_tuning") and lr < 1e-4:
        out.append(f"train.lr={lr:g} is low for {cfg.name}, whose few parameters usually need 1e-3 to 3e-2")
    if cfg.name in LORA_FAMILY and cfg.dropout > 0:
        out.append(f"method.dropout={cfg.dropout:g} costs a masked copy of every adapted input (with dora also a "
                   "second pass through the base layer); 0 trains faster")
    return out


def describe_trainable(model: nn.Module, cfg: MethodConfig, train_cfg: TrainConfig) -> dict:
    """Trainable/total parameters, LoRA scale, learning rates and risk warnings for `model` as prepared.

    Returns a JSON-ready dict: method, trainable, total (parameter counts), trainable_percent,
    lora_scale (None outside the LoRA family), lr, warnings; plus lowest_layer_lr with
    layer_lr_decay < 1 and trainable_when_all_open for gradual_unfreeze.
    """
    trainable, total = count_parameters(model)
    out = {
        "method": cfg.name,
        "trainable": int(trainable),
        "total": int(total),
        "trainable_percent": round(100.0 * trainable / total, 4) if total else 0.0,
        "lora_scale": lora_scale(cfg),
        "lr": train_cfg.lr,
        "warnings": _warnings(model, cfg, train_cfg, trainable, total),
    }
    if cfg.name == "gradual_unfreeze":
        out["trainable_when_all_open"] = int(total)  # the schedule opens every group in the end
    if cfg.layer_lr_decay < 1.0:
        from tunelab.methods._layers import split_parts  # only layer-wise decay needs the layer structure

        depth = len(split_parts(model).groups_top_down()) - 1
        out["lowest_layer_lr"] = train_cfg.lr * cfg.layer_lr_decay ** depth
    return out
