"""Fine-tuning methods: `METHODS` maps each `method.name` to `apply(model, cfg, task) -> model`.

That dict is the only place a method is registered. PEFT supplies LoRA, DoRA, rsLoRA, QLoRA, (IA)^3
and prompt tuning; tunelab writes only what no maintained library offers: freezing by layers or
regex, ULMFiT-style gradual unfreezing (a `TrainerCallback`), layer-wise lr decay and bottleneck
adapters (`_adapters.py`).

The train stage uses it as:

    model = apply_method(model, cfg.method, cfg.task)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.method, cfg.train.lr, cfg.train.weight_decay))
    Trainer(model, ..., optimizers=(optimizer, None), callbacks=method_callbacks(model, cfg.method))
"""

from __future__ import annotations

import importlib.util
import re
from typing import Callable

import torch
from peft import (IA3Config, LoraConfig, PeftModel, PromptTuningConfig, PromptTuningInit, TaskType,
                  get_peft_model, prepare_model_for_kbit_training)
from torch import nn
from transformers import TrainerCallback

from tunelab.config import MethodConfig
from tunelab.core.errors import UserError
from tunelab.core.ranks import local_rank
from tunelab.methods._adapters import add_adapters
from tunelab.methods._layers import depth_of, find_layer_stack, split_parts, task_head_names
from tunelab.tasks import TASKS

QLORA_NO_CUDA = ("method.name=qlora needs a CUDA GPU: its 4-bit base model is quantised by bitsandbytes, "
                 "which does not run on this machine (no CUDA device found). "
                 "Use `method.name: lora` instead: the same LoRA adapter on a full-precision base.")


class MethodError(UserError, ValueError):
    """A method that cannot be applied as configured; the message says what to change."""


# ---------------------------------------------------------------- methods tunelab writes


def _set_all(model: nn.Module, trainable: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(trainable)


def _has_new_head(task: str) -> bool:
    """A *ForSequenceClassification head starts random: it must train whatever the method."""
    return TASKS[task].head == "sequence_classification"


def _train_task_head(model: nn.Module, task: str) -> None:
    if _has_new_head(task):
        for name in task_head_names(model):
            getattr(model, name).requires_grad_(True)


def apply_full(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """Train every parameter."""
    _set_all(model, True)
    return model


def apply_freeze(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """Train the head plus the top `trainable_layers` layers, or exactly the params matching `trainable_regex`."""
    _set_all(model, False)
    if cfg.trainable_regex:
        pattern = re.compile(cfg.trainable_regex)
        matched = [p for n, p in model.named_parameters() if pattern.search(n)]
        if not matched:
            names = [n for n, _ in model.named_parameters()][:5]
            raise MethodError(f"method.trainable_regex={cfg.trainable_regex!r} matches no parameter "
                              f"(names look like: {', '.join(names)}, ...)")
        for p in matched:
            p.requires_grad_(True)
        return model
    parts = split_parts(model)
    k = cfg.trainable_layers or 0
    if k > len(parts.layers):
        raise MethodError(f"method.trainable_layers={k} but the model has {len(parts.layers)} layers "
                          "(use method.name: full to train everything)")
    for _, p in parts.head + [x for layer in parts.layers[len(parts.layers) - k:] for x in layer]:
        p.requires_grad_(True)
    return model


def apply_gradual_unfreeze(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """Start with the head trainable; `GradualUnfreeze` (see `method_callbacks`) opens the rest on schedule."""
    _set_all(model, False)
    for _, p in split_parts(model).head:
        p.requires_grad_(True)
    return model


def apply_adapter(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """Freeze the base and insert trainable Houlsby or Pfeiffer bottleneck adapters of `adapter_size`."""
    _set_all(model, False)
    try:
        add_adapters(model, cfg.adapter_kind, cfg.adapter_size)
    except ValueError as e:
        raise MethodError(str(e)) from None
    _train_task_head(model, task)
    return model


class GradualUnfreeze(TrainerCallback):
    """ULMFiT gradual unfreezing: head first, then one more layer group (top down) every N steps or epochs.

    Groups are: head, top layer, ..., bottom layer, embeddings. The optimizer must already hold every
    group's parameters (build it from `param_groups`): frozen ones get no gradient, so AdamW leaves
    them bit-identical until their group opens. `history` records (global_step, groups open).
    """

    def __init__(self, model: nn.Module, every: int, unit: str = "steps"):
        self.groups = split_parts(model).groups_top_down()
        self.every, self.unit = every, unit
        self.history: list[tuple[int, int]] = []

    def open_groups(self, n: int) -> None:
        """Make the first `n` groups trainable and the rest frozen."""
        n = max(1, min(n, len(self.groups)))
        for i, group in enumerate(self.groups):
            for _, p in group:
                p.requires_grad_(i < n)

    def _open_for(self, state) -> None:
        count = state.global_step if self.unit == "steps" else round(state.epoch or 0)
        n = min(1 + count // self.every, len(self.groups))
        if not self.history or self.history[-1][1] != n:
            self.history.append((state.global_step, n))
        self.open_groups(n)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            missing = [n for g in self.groups for n, p in g if id(p) not in held]
            if missing:
                raise MethodError(f"gradual_unfreeze: the optimizer does not hold {len(missing)} parameters "
                                  f"(e.g. {missing[0]}), so they could never train once unfrozen; build it "
                                  "from tunelab.methods.param_groups(model, cfg.method, lr, weight_decay)")
        self._open_for(state)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.unit == "steps":
            self._open_for(state)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.unit == "epochs":
            self._open_for(state)


# ---------------------------------------------------------------- methods PEFT provides


def _peft(model: nn.Module, config, task: str) -> PeftModel:
    peft_model = get_peft_model(model, config)
    if _has_new_head(task):
        # PEFT puts `classifier`/`score` in modules_to_save for SEQ_CLS; refuse a model where it found none.
        heads = [n for n, p in peft_model.named_parameters() if p.requires_grad and "modules_to_save" in n]
        if not heads:
            raise MethodError(f"{type(model).__name__}: no `classifier` or `score` head found to train")
    return peft_model


# The methods that take `method.freeze_below` (an adapter on the upper layers only).
FREEZE_BELOW_METHODS = ("lora", "dora", "rslora")


def _adapted_layers(model: nn.Module, cfg: MethodConfig) -> dict:
    """LoraConfig kwargs for `freeze_below`: adapters on layers K.. only (PEFT's layers_to_transform).

    Raises:
        MethodError: K leaves no layer to adapt.
    """
    if not cfg.freeze_below:
        return {}
    pattern, stack = find_layer_stack(model)
    if cfg.freeze_below >= len(stack):
        raise MethodError(f"method.freeze_below={cfg.freeze_below} but the model has {len(stack)} layers: "
                          f"nothing would be adapted (use at most {len(stack) - 1})")
    targets = cfg.target_modules
    if isinstance(targets, str):   # PEFT takes layers_to_transform only with a list of module names
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in stack[0].named_modules() if isinstance(m, nn.Linear)})
    return {"layers_to_transform": list(range(cfg.freeze_below, len(stack))),
            "layers_pattern": pattern.rsplit(".", 1)[-1], "target_modules": targets}


def _lora_config(model: nn.Module, cfg: MethodConfig, task: str, **extra) -> LoraConfig:
    layers = {"target_modules": cfg.target_modules, **_adapted_layers(model, cfg)}
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      task_type=TaskType[TASKS[task].peft_task_type], **layers, **extra)


def apply_lora(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """LoRA (Hu et al. 2021): rank-`r` updates scaled by alpha/r on `target_modules`."""
    return _peft(model, _lora_config(model, cfg, task), task)


def apply_dora(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """DoRA (Liu et al. 2024): LoRA on the direction plus a trained per-output magnitude."""
    return _peft(model, _lora_config(model, cfg, task, use_dora=True), task)


def apply_rslora(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/sqrt(r), stable at high rank."""
    return _peft(model, _lora_config(model, cfg, task, use_rslora=True), task)


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise MethodError(QLORA_NO_CUDA)


QLORA_NO_BITSANDBYTES = ("method.name=qlora quantises the base model with bitsandbytes, which is not installed: "
                         "pip install 'tunelab[gpu]'")


def load_kwargs(cfg: MethodConfig) -> dict:
    """Extra `models.load_model` kwargs the method needs (qlora: the base in 4-bit NF4 with double
    quantization, computing in bf16 where the GPU has it, fp16 otherwise, on this process's GPU).

    Raises:
        MethodError: qlora without a CUDA device, or without bitsandbytes installed.
    """
    if cfg.name != "qlora":
        return {}
    _require_cuda()
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MethodError(QLORA_NO_BITSANDBYTES)
    from transformers import BitsAndBytesConfig  # bitsandbytes is a CUDA-only optional dependency

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute),
            # The 4-bit layers live on the GPU they were quantised on: one process, one GPU.
            "dtype": compute, "device_map": {"": torch.device("cuda", local_rank())}}


def apply_qlora(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """QLoRA (Dettmers et al. 2023): LoRA on a 4-bit NF4 base; CUDA only."""
    _require_cuda()
    if not getattr(model, "is_loaded_in_4bit", False):
        raise MethodError("method.name=qlora needs the base model loaded in 4-bit: pass "
                          "tunelab.methods.load_kwargs(cfg.method) to the model loader")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _peft(model, _lora_config(model, cfg, task), task)


def apply_ia3(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """(IA)^3 (Liu et al. 2022): learned scaling vectors; `all-linear` means PEFT's per-architecture default."""
    if cfg.target_modules == "all-linear":
        targets, feedforward = None, None  # PEFT's defaults: keys, values and the MLP output
    else:
        targets = list(cfg.target_modules)
        # The MLP output projection is scaled on its input (the paper's l_ff), the rest on their output.
        feedforward = [t for t in targets if t in ("down_proj", "fc2", "c_proj", "output.dense", "lin2")]
    return _peft(model, IA3Config(target_modules=targets, feedforward_modules=feedforward,
                                  task_type=TaskType[TASKS[task].peft_task_type]), task)


def apply_prompt_tuning(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """Prompt tuning (Lester et al. 2021): `num_virtual_tokens` trained input embeddings; causal LMs only."""
    check_method(cfg, task)
    # SAMPLE_VOCAB starts from real token embeddings: no tokenizer download, and on the embedding manifold.
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                                prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    return _peft(model, config, task)


METHODS: dict[str, Callable[[nn.Module, MethodConfig, str], nn.Module]] = {
    "full": apply_full,
    "freeze": apply_freeze,
    "gradual_unfreeze": apply_gradual_unfreeze,
    "lora": apply_lora,
    "dora": apply_dora,
    "rslora": apply_rslora,
    "qlora": apply_qlora,
    "adapter": apply_adapter,
    "ia3": apply_ia3,
    "prompt_tuning": apply_prompt_tuning,
}


# ---------------------------------------------------------------- the train stage's entry points


def check_method(cfg: MethodConfig, task: str) -> None:
    """Refuse a method that cannot run for `task` (before any data is prepared or model loaded).

    Raises:
        MethodError: prompt tuning of a model with a classification head; qlora without a CUDA device;
            freeze_below with a method that does not take it.
    """
    if cfg.name == "qlora":
        _require_cuda()
    if task not in TASKS:
        raise MethodError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if cfg.name == "prompt_tuning" and TASKS[task].head != "causal_lm":
        causal = ", ".join(t for t, spec in TASKS.items() if spec.head == "causal_lm")
        raise MethodError(f"method.name=prompt_tuning needs a causal LM task ({causal}), not task={task}")
    if cfg.freeze_below and cfg.name not in FREEZE_BELOW_METHODS:
        raise MethodError(f"method.freeze_below works with method.name {', '.join(FREEZE_BELOW_METHODS)}, not "
                          f"{cfg.name} (for freezing by layers use method.name: freeze with trainable_layers)")


def apply_method(model: nn.Module, cfg: MethodConfig, task: str) -> nn.Module:
    """Apply `cfg.name` to `model` for `task` (sft | classification | pretrain) and return the model to train.

    Raises:
        MethodError: the method cannot run here as configured (qlora without CUDA, a bad regex, ...).
    """
    check_method(cfg, task)
    return METHODS[cfg.name](model, cfg, task)


def param_groups(model: nn.Module, cfg: MethodConfig, lr: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: what the method trains, no decay on 1-D params, lr * layer_lr_decay**depth.

    gradual_unfreeze includes its still-frozen parameters so they can train once `GradualUnfreeze`
    opens them. Depth counts from the top: head 0, top layer 1, ..., embeddings last.
    """
    params = [(n, p) for n, p in model.named_parameters()
              if p.requires_grad or cfg.name == "gradual_unfreeze"]
    depth = depth_of(split_parts(model)) if cfg.layer_lr_decay < 1.0 else {}
    groups: dict[tuple[int, bool], dict] = {}
    for _, p in params:
        d = depth.get(id(p), 0)
        # Biases, norms, DoRA magnitudes and (IA)^3 vectors are 1-D: decaying them towards 0 is harmful.
        decay = p.ndim >= 2
        group = groups.setdefault((d, decay), {"params": [], "lr": lr * cfg.layer_lr_decay ** d,
                                              "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
    if not groups:
        raise MethodError(f"method.name={cfg.name}: no parameter is trainable")
    return [groups[k] for k in sorted(groups)]


def method_callbacks(model: nn.Module, cfg: MethodConfig) -> list[TrainerCallback]:
    """Trainer callbacks the method needs (gradual_unfreeze: its `GradualUnfreeze` schedule)."""
    if cfg.name == "gradual_unfreeze":
        return [GradualUnfreeze(model, cfg.unfreeze_every, cfg.unfreeze_unit)]
    return []
