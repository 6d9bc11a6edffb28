"""Our `transformers.Trainer` subclass: what the stock Trainer does not do for us.

Subclassed for four measured needs, each said where it lives:
- `compute_loss`: the task's objective (`loss.py`): for causal LMs the completion-only loss that runs
  the LM head only at supervised positions (benchmarks/train_throughput.py measures the speed-up);
- `get_batch_samples`: counts the supervised items of the whole accumulation window for every task
  (the stock count runs only for models that take loss kwargs, so classification heads with
  gradient accumulation were mis-scaled);
- `training_step`: the divergence guards need every micro-batch's loss, not only logged ones;
- `evaluate`: validation loss weighted by supervised tokens (the stock loop averages per-batch means,
  which over-weights short batches), without gathering logits; under DDP each process evaluates its
  share and the sums are reduced across processes;
- `counters` / `restore_counters` / `log`: a resumed run reports whole-run figures (tokens seen, mean
  training loss, wall time); the stock Trainer restarts those sums at the resumed step.
Everything else (optimizer, schedule, accumulation, precision, progress bar with ETA) is the Trainer's.
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from tunelab.core.errors import UserError
from tunelab.core.ranks import is_main_process
from tunelab.train import distributed

DIVERGENCE_CAUSES = """likely causes:
  - learning rate too high for this method (try train.lr 10x smaller; LoRA usually 1e-4..5e-4, full fine-tuning 1e-5..5e-5)
  - fp16 overflow (use train.precision: bf16 or fp32)
  - broken examples: empty or extremely long texts, or labels outside the vocabulary (run `tunelab validate`)
  - gradient clipping disabled or too loose (train.max_grad_norm)"""

ZERO_LOSS_CAUSES = """likely causes:
  - no token is supervised in these batches (labels all masked: check the completion column and the template)
  - the answer is trivially copied from the prompt (leakage between input and output columns)
  - the model collapsed after a too-high learning rate"""


class TrainingStopped(UserError, RuntimeError):
    """Training was stopped by a guard; the message says why and what to check."""


class TunelabTrainer(Trainer):
    """Trainer with the task's objective, divergence guards and token-weighted validation.

    Args:
        objective: the task's `loss.CausalLMObjective` or `loss.ClassificationObjective`.
        zero_loss_steps: stop after this many consecutive optimizer steps with a loss of exactly 0.
    """

    # Our objectives already normalise by the supervised items of the accumulation window.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, objective, zero_loss_steps: int = 20, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.zero_loss_steps = zero_loss_steps
        self._zero_run = 0
        self.tokens_seen = 0        # non-padding tokens trained on
        self.supervised_seen = 0    # of which carry a label
        self.earlier = {"loss_sum": 0.0, "wall_seconds": 0.0}   # from before a resume
        self._started = time.time()

    def train(self, *args, **kwargs):
        self._started = time.time()
        return super().train(*args, **kwargs)

    def counters(self) -> dict:
        """What a checkpoint records beyond the Trainer's state: sums the stock Trainer restarts on resume,
        the token counts summed over every process (a collective under DDP: every process calls it)."""
        tokens, supervised = self.token_totals()
        return {"tokens_seen": tokens, "supervised_seen": supervised,
                "loss_sum": self.earlier["loss_sum"] + self._total_loss_scalar + float(self._tr_loss),
                "wall_seconds": self.wall_seconds()}

    def restore_counters(self, counters: dict) -> None:
        """Continue the sums of a checkpoint's `counters()` (call before `train(resume_from_checkpoint=...)`)."""
        # The sums over every process go to rank 0 alone: token_totals() adds the processes' counts again.
        mine = is_main_process()
        self.tokens_seen = counters["tokens_seen"] if mine else 0
        self.supervised_seen = counters["supervised_seen"] if mine else 0
        self.earlier = {"loss_sum": counters["loss_sum"], "wall_seconds": counters["wall_seconds"], "resumed": True}

    def wall_seconds(self) -> float:
        """Training time of the whole run, across resumes."""
        return self.earlier["wall_seconds"] + time.time() - self._started

    def run_loss(self) -> float:
        """Mean training loss over every step of the run, across resumes (after `train()`)."""
        return (self.earlier["loss_sum"] + self._total_loss_scalar) / max(self.state.global_step, 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs and self.earlier.get("resumed"):
            logs = {**logs, "train_loss": self.run_loss()}   # the stock value covers only the resumed steps
        super().log(logs, start_time)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        items = torch.tensor(sum(self.objective.counts(b)[1] for b in batches), device=device)
        if self.args.world_size > 1:   # every process divides by the global count (see compute_loss)
            items = self.accelerator.gather(items).sum()
        return batches, items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.objective.loss(model, inputs, num_items_in_batch)
        if self.args.world_size > 1:
            # Each process's loss is its share of the global sum; DDP averages gradients over processes.
            loss = loss * self.args.world_size
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        tokens, supervised = self.objective.counts(inputs)
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

    def token_totals(self) -> tuple[int, int]:
        """(tokens trained on, supervised tokens) summed over every process (a collective under DDP)."""
        tokens, supervised = distributed.sum_across([self.tokens_seen, self.supervised_seen])
        return int(tokens), int(supervised)

    def _eval_shard(self, eval_dataset) -> DataLoader:
        """This process's share of the validation set: every world_size-th example, no padding.

        Not the stock sharded loader: accelerate evens out the shards by repeating examples, which a
        summed loss would count twice (the stock loop drops them again after gathering logits).
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        rank, world = self.args.process_index, self.args.world_size
        part = [dataset[i] for i in range(rank, len(dataset), world)]
        return DataLoader(part, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Validation loss = summed loss / supervised items over the whole validation set, summed over
        every process (each evaluates its own share), so all processes see the same numbers."""
        model = self.model
        model.eval()
        total, count, correct, with_accuracy, start = 0.0, 0, 0, 0, time.time()
        for batch in self._eval_shard(eval_dataset):
            batch = self._prepare_inputs(batch)
            with self.autocast_smart_context_manager():
                loss_sum, n, right = self.objective.validation(model, batch)
            total, count = total + loss_sum, count + n
            if right is not None:
                correct, with_accuracy = correct + right, 1
        total, count, correct, with_accuracy = distributed.sum_across([total, count, correct, with_accuracy])
        metrics = {f"{metric_key_prefix}_loss": total / max(count, 1),
                   f"{metric_key_prefix}_runtime": round(time.time() - start, 3)}
        if with_accuracy:
            metrics[f"{metric_key_prefix}_accuracy"] = correct / max(count, 1)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
