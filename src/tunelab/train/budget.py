"""`train.time_budget`: fit training into a wall-clock budget by measurement, with the schedule intact.

The planned steps (epochs x data) may take far longer on a slow or busy machine than the user can
wait. `TimeBudget` times the first steps (validation and saves included, as they come), projects the
whole run, and when it would overrun, moves the end of training to the last step that fits: the
learning-rate schedule is re-aimed at that step (a cosine still decays to zero there) and training
stops there. The projection is renewed as steps go by, since the load on a shared machine changes;
it never extends training beyond the plan. Every decision is logged with its numbers.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable

from transformers import TrainerCallback

log = logging.getLogger(__name__)


def retarget_schedule(scheduler, total_steps: int) -> bool:
    """Make a transformers LambdaLR schedule (warm-up + linear/cosine decay) end at `total_steps`.

    Returns False when the schedule is not one whose length can be changed (e.g. constant).
    """
    changed = False
    for i, fn in enumerate(getattr(scheduler, "lr_lambdas", [])):
        if isinstance(fn, partial) and "num_training_steps" in fn.keywords:
            scheduler.lr_lambdas[i] = partial(fn.func, *fn.args, **{**fn.keywords, "num_training_steps": total_steps})
            changed = True
    return changed


class TimeBudget(TrainerCallback):
    """Stop training at the last step that fits in `budget_s` seconds, with the schedule ending there.

    Args:
        budget_s: seconds for the training loop (from its first step).
        probe_steps: steps timed before the first decision.
        every: re-decide every this many steps after that.
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, budget_s: float, probe_steps: int = 10, every: int = 50,
                 clock: Callable[[], float] = time.monotonic):
        self.budget_s, self.probe_steps, self.every, self.clock = budget_s, probe_steps, every, clock
        self.scheduler = None
        self.stop_at: int | None = None
        self.decisions: list[dict] = []
        self._start = 0.0

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self._start, self.scheduler, self.planned = self.clock(), lr_scheduler, state.max_steps

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step >= self.probe_steps and (step == self.probe_steps or step % self.every == 0):
            self._decide(step)
        if self.stop_at is not None and step >= self.stop_at:
            control.should_training_stop = True

    def _decide(self, step: int) -> None:
        per_step = (self.clock() - self._start) / step
        fits = max(step, int(self.budget_s / per_step))
        stop_at = fits if fits < self.planned else None
        if stop_at == self.stop_at:
            return
        self.stop_at = stop_at
        end = stop_at or self.planned
        retargeted = self.scheduler is not None and retarget_schedule(self.scheduler, end)
        decision = {"step": step, "seconds_per_step": round(per_step, 3), "planned_steps": self.planned,
                    "stop_at": end, "budget_s": self.budget_s}
        self.decisions.append(decision)
        if stop_at is None:
            log.info(f"train.time_budget {self.budget_s:g}s: at {per_step:.2f}s per step the planned "
                     f"{self.planned} steps fit; training runs them all")
        else:
            log.info(f"train.time_budget {self.budget_s:g}s: at {per_step:.2f}s per step (measured over {step} "
                     f"steps) the planned {self.planned} steps would take {per_step * self.planned:.0f}s; "
                     f"training stops at step {stop_at}"
                     + (" with the learning-rate schedule ending there" if retargeted else
                        " (the schedule is constant: nothing to re-aim)"))
