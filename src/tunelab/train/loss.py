"""Training objectives: the loss, token counts and validation of each kind of task.

`CausalLMObjective` (sft and pretrain): the next-token loss at supervised positions, with the LM head
run only where a token is supervised. `ClassificationObjective`: cross-entropy of a classification
head. Both normalise by the supervised items of the whole accumulation window (what the Trainer
passes as `num_items_in_batch`), so batch 8 x 1 and batch 1 x 8 give the same gradients.

Why the selective head: on Banking77 prompts under 10% of positions are supervised, and the full-vocabulary head
(49,152 x 576 for SmolLM2) plus its fp32 logits and their gradient is the largest single cost of a
LoRA step when computed everywhere (see benchmarks/README.md for the measured effect). transformers 5
causal LMs take a boolean `logits_to_keep` [B, T] and apply `lm_head` to the kept hidden states only,
returning logits [n_kept, V]; PEFT passes the argument through, so no library code is patched.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from tunelab.core.records import IGNORE
from tunelab.train.collate import token_counts
from tunelab.train.lower_cache import cached_logits

_MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel (which neither forwards attributes nor has a `config`)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _base_forward_params(model: torch.nn.Module) -> set[str]:
    """Parameter names of the innermost causal LM's forward (through DDP and PEFT wrappers)."""
    inner = unwrap_ddp(model)
    # DDP's `module` is itself callable, so the wrapper is unwrapped by type first, never called.
    while callable(getattr(inner, "get_base_model", None)):
        base = inner.get_base_model()
        if base is inner:
            break
        inner = unwrap_ddp(base)
    return set(inspect.signature(inner.forward).parameters)


def _prompt_learning(model: torch.nn.Module) -> bool:
    """True for PEFT prompt learning (prompt tuning etc.), which prepends virtual tokens to every row."""
    return bool(getattr(getattr(unwrap_ddp(model), "active_peft_config", None), "is_prompt_learning", False))


def _selective_ok(model: torch.nn.Module) -> bool:
    """True when the model takes a boolean `logits_to_keep` and the sequence is not prefixed by PEFT."""
    if _prompt_learning(model):
        return False  # virtual tokens are prepended, so a [B, T] mask would not line up
    cached = getattr(model, "_tunelab_selective_head", None)
    if cached is None:
        cached = "logits_to_keep" in _base_forward_params(model)
        try:
            model._tunelab_selective_head = cached  # plain attribute, read only by this module
        except AttributeError:
            pass
    return cached


def _model_inputs(model: torch.nn.Module, inputs: dict) -> dict:
    """The batch keys the model takes; a boolean 4D mask (shared-prefix rows) made additive for eager attention."""
    out = {k: inputs[k] for k in _MODEL_KEYS if k in inputs}
    mask = out.get("attention_mask")
    if mask is not None and mask.dim() == 4 and mask.dtype == torch.bool:
        impl = getattr(getattr(unwrap_ddp(model), "config", None), "_attn_implementation", None) or "sdpa"
        if impl == "eager":  # eager adds the mask to the scores; sdpa takes booleans as they are
            out["attention_mask"] = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        elif impl != "sdpa":
            raise ValueError(f"shared-prefix batches need sdpa or eager attention, not {impl!r}")
    return out


def causal_lm_loss(
    model: torch.nn.Module, inputs: dict, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of next-token cross-entropies at supervised positions / `num_items_in_batch`.

    Args:
        model: a transformers causal LM, optionally wrapped by PEFT.
        inputs: `input_ids`, `labels` (-100 = not supervised, unshifted) and `attention_mask` (padded
            batches), `position_ids` (packed rows) or both (shared-prefix rows), as made by `tunelab.collate`.
        num_items_in_batch: supervised tokens across the whole accumulation window (what
            `transformers.Trainer` passes), or None to normalise by this batch's own supervised count.

    Returns:
        A scalar fp32 loss; 0 (with a graph) when nothing is supervised.
    """
    labels = inputs["labels"]
    targets = labels[:, 1:]
    supervised = targets != IGNORE
    model_inputs = _model_inputs(model, inputs)
    if _selective_ok(model):
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = supervised
        logits = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits
    else:
        if "position_ids" in model_inputs and _prompt_learning(model):
            raise ValueError("packed batches cannot be used with prompt tuning (its virtual tokens are prepended "
                             "to the row); use make_collator(..., packing=False)")
        logits = model(**model_inputs, use_cache=False).logits
        logits = logits[:, -labels.shape[1] :][:, :-1][supervised]
    total = F.cross_entropy(logits.float(), targets[supervised], reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = supervised.sum()
    if torch.is_tensor(num_items_in_batch):
        return total / num_items_in_batch.to(total.device).clamp(min=1)
    return total / max(num_items_in_batch, 1)


class CausalLMObjective:
    """Next-token cross-entropy where `labels` != IGNORE (completion-only for sft, every token for pretrain)."""

    def loss(self, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        return causal_lm_loss(model, inputs, num_items_in_batch)

    def counts(self, inputs: dict) -> tuple[int, int]:
        """(non-padding tokens trained on, supervised targets) of a batch."""
        return token_counts(inputs)

    def validation(self, model, batch: dict) -> tuple[float, int, int | None]:
        """(summed loss, supervised targets, correct predictions or None) of one validation batch."""
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        return float(causal_lm_loss(model, batch, None)) * n, n, None


def classifier_logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The head's logits; from the cached lower layers when the batch carries them (`hidden`)."""
    if "hidden" in inputs:
        return cached_logits(model, inputs)
    return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


class ClassificationObjective:
    """Cross-entropy of a sequence-classification head; `labels` holds one class index per example."""

    def loss(self, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        labels = inputs["labels"]
        logits = classifier_logits(model, inputs)
        total = F.cross_entropy(logits.float(), labels, reduction="sum")
        n = labels.numel() if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(n):
            return total / n.to(total.device).clamp(min=1)
        return total / max(int(n), 1)

    def counts(self, inputs: dict) -> tuple[int, int]:
        return int(inputs["attention_mask"].sum()), inputs["labels"].numel()

    def validation(self, model, batch: dict) -> tuple[float, int, int | None]:
        labels = batch["labels"]
        logits = classifier_logits(model, batch).float()
        correct = int((logits.argmax(-1) == labels).sum())
        return float(F.cross_entropy(logits, labels, reduction="sum")), labels.numel(), correct
