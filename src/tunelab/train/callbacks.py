"""Trainer callbacks: the NaN/inf gradient guard, the metrics.jsonl log, and `best/` with early stopping."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from tunelab.core.ranks import is_main_process
from tunelab.core.rundir import RunDir, atomic_folder
from tunelab.methods import save_trained
from tunelab.train.trainer import DIVERGENCE_CAUSES, TrainingStopped

log = logging.getLogger(__name__)


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


class BestCheckpoint(TrainerCallback, ExportableState):
    """Keep `best/` at the lowest validation loss and stop after `patience` validations without improvement.

    Written here rather than with the stock EarlyStoppingCallback + load_best_model_at_end because that
    pair writes a full checkpoint (optimizer and RNG state) at every validation; we only need the
    adapter/weights + tokenizer in `best/`, and the step it came from. Its state (best loss and step,
    validations without improvement) goes into every resumable checkpoint through the Trainer's
    `ExportableState` and is taken back when training resumes from one.
    """

    def __init__(self, out: Path, tokenizer, patience: int | None, min_delta: float):
        self.out, self.tokenizer = out, tokenizer
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_step, self.bad = math.inf, None, 0
        self.accelerator = None   # the Trainer's, set once it exists: sharded weights are gathered through it

    def state(self) -> dict:
        # No "args": the stock restore (restore_callback_states_from_checkpoint) would rebuild the
        # callback from them; tunelab leaves that off and restores the attributes in on_train_begin.
        return {"args": {}, "attributes": {"best_loss": None if math.isinf(self.best_loss) else self.best_loss,
                                           "best_step": self.best_step, "bad": self.bad}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step and isinstance(saved, dict):   # resumed from a checkpoint
            a = saved.get("attributes", {})
            self.best_loss = math.inf if a.get("best_loss") is None else float(a["best_loss"])
            self.best_step, self.bad = a.get("best_step"), int(a.get("bad", 0))

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        # Every process takes the same decision (the validation loss is summed across processes): an
        # early stop on rank 0 alone would leave the others waiting in the next step's all-reduce.
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad = loss, state.global_step, 0
            save_model(model, self.tokenizer, self.out, step=state.global_step, accelerator=self.accelerator)
        else:
            self.bad += 1
            if self.patience is not None and self.bad >= self.patience:
                log.info(f"early stopping at step {state.global_step}: validation loss has not improved for "
                         f"{self.bad} validations (best {self.best_loss:.4f} at step {self.best_step})")
                control.should_training_stop = True


def save_model(model, tokenizer, out: Path, step: int | None = None, accelerator=None) -> None:
    """Save adapter or weights (safetensors) + tokenizer with its chat template to `out`, atomically.

    In a multi-process run every process calls it: weights sharded across processes (FSDP, DeepSpeed)
    are gathered first through the Trainer's `accelerator` (a collective), and rank 0 alone writes.
    """
    state = None
    if accelerator is not None and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        state = accelerator.get_state_dict(model)
        model = accelerator.unwrap_model(model)
    if not is_main_process():
        return
    with atomic_folder(out, {"step": step}) as tmp:
        save_trained(model, tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
