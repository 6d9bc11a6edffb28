"""Our `transformers.Trainer` subclass and callbacks: what the stock Trainer does not do for us.

Subclassed for three measured needs, each said where it lives:
- `compute_loss`: the completion-only loss that runs the LM head only at supervised positions
  (`tunelab.loss`; benchmarks/train_throughput.py measures the speed-up);
- `training_step`: the divergence guards need every micro-batch's loss, not only logged ones;
- `evaluate`: validation loss weighted by supervised tokens (the stock loop averages per-batch means,
  which over-weights short batches), without gathering logits.
Everything else (optimizer, schedule, accumulation, precision, progress bar with ETA) is the Trainer's.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from tunelab.collate import token_counts
from tunelab.loss import causal_lm_loss
from tunelab.methods import save_trained
from tunelab.rundir import RunDir

DIVERGENCE_CAUSES = """likely causes:
  - learning rate too high for this method (try train.lr 10x smaller; LoRA usually 1e-4..5e-4, full fine-tuning 1e-5..5e-5)
  - fp16 overflow (use train.precision: bf16 or fp32)
  - broken examples: empty or extremely long texts, or labels outside the vocabulary (run `tunelab validate`)
  - gradient clipping disabled or too loose (train.max_grad_norm)"""

ZERO_LOSS_CAUSES = """likely causes:
  - no token is supervised in these batches (labels all masked: check the completion column and the template)
  - the answer is trivially copied from the prompt (leakage between input and output columns)
  - the model collapsed after a too-high learning rate"""


class TrainingStopped(RuntimeError):
    """Training was stopped by a guard; the message says why and what to check."""


class TunelabTrainer(Trainer):
    """Trainer with the completion-only loss, divergence guards and token-weighted validation."""

    # Our loss is already normalised by supervised tokens across the accumulation window.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, task: str = "sft", zero_loss_steps: int = 20, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task
        self.zero_loss_steps = zero_loss_steps
        self._zero_run = 0
        self.tokens_seen = 0        # non-padding tokens trained on
        self.supervised_seen = 0    # of which carry a label

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.task == "classification":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = causal_lm_loss(model, inputs, num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.task == "classification":
            self.tokens_seen += int(inputs["attention_mask"].sum())
            self.supervised_seen += inputs["labels"].numel()
        else:
            tokens, supervised = token_counts(inputs)
            self.tokens_seen += tokens
            self.supervised_seen += supervised
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = float(loss)
        step = self.state.global_step + 1
        if not math.isfinite(value):
            raise TrainingStopped(f"step {step}: the training loss is {value}; stopping.\n{DIVERGENCE_CAUSES}")
        self._zero_run = self._zero_run + 1 if value == 0.0 else 0
        if self._zero_run >= self.zero_loss_steps * self.args.gradient_accumulation_steps:
            raise TrainingStopped(f"step {step}: the loss has been exactly 0 for {self.zero_loss_steps} steps; "
                                  f"stopping.\n{ZERO_LOSS_CAUSES}")
        return loss

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Validation loss = summed token NLL / supervised tokens over the whole validation set."""
        loader = self.get_eval_dataloader(eval_dataset)
        model = self.model
        model.eval()
        total, count, correct, start = 0.0, 0, 0, time.time()
        for batch in loader:
            batch = self._prepare_inputs(batch)
            with self.autocast_smart_context_manager():
                if self.task == "classification":
                    out = model(**batch)
                    n = batch["labels"].numel()
                    total += float(out.loss) * n
                    correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
                else:
                    n = int((batch["labels"][:, 1:] != -100).sum())
                    total += float(causal_lm_loss(model, batch, None)) * n
            count += n
        metrics = {f"{metric_key_prefix}_loss": total / max(count, 1),
                   f"{metric_key_prefix}_runtime": round(time.time() - start, 3)}
        if self.task == "classification":
            metrics[f"{metric_key_prefix}_accuracy"] = correct / max(count, 1)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class GradientGuard(TrainerCallback):
    """Stop before the optimizer step when a gradient is NaN/inf: the step would corrupt the weights."""

    def __init__(self, model):
        self.params = list(model.parameters())   # all: gradual unfreezing opens more of them later

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            raise TrainingStopped(f"step {state.global_step + 1}: a gradient is NaN or infinite; "
                                  f"stopping before it reaches the weights.\n{DIVERGENCE_CAUSES}")


class RunLog(TrainerCallback):
    """Append every logged step (train loss, lr, grad norm, validation loss) to metrics.jsonl."""

    def __init__(self, rd: RunDir):
        self.rd = rd

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.rd.log({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs})


class BestCheckpoint(TrainerCallback):
    """Keep `best/` at the lowest validation loss and stop after `patience` validations without improvement.

    Written here rather than with the stock EarlyStoppingCallback + load_best_model_at_end because that
    pair writes a full checkpoint (optimizer and RNG state) at every validation; we only need the
    adapter/weights + tokenizer in `best/`, and the step it came from.
    """

    def __init__(self, out: Path, tokenizer, patience: int | None, min_delta: float):
        self.out, self.tokenizer = out, tokenizer
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_step, self.bad = math.inf, None, 0

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not state.is_world_process_zero:
            return
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad = loss, state.global_step, 0
            save_model(model, self.tokenizer, self.out)
        else:
            self.bad += 1
            if self.patience is not None and self.bad >= self.patience:
                print(f"early stopping at step {state.global_step}: validation loss has not improved for "
                      f"{self.bad} validations (best {self.best_loss:.4f} at step {self.best_step})", flush=True)
                control.should_training_stop = True


def save_model(model, tokenizer, out: Path) -> None:
    """Save adapter or weights (safetensors) + tokenizer with its chat template to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    save_trained(model, out)
    tokenizer.save_pretrained(out)
