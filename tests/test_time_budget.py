"""train.time_budget: training ends at the last step that fits, and the schedule ends there too (fake clock)."""

from __future__ import annotations

import torch
from transformers import TrainerControl, TrainerState, get_scheduler

from tunelab.train.budget import TimeBudget


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(budget_s: float, seconds_per_step: float, planned: int = 100, kind: str = "cosine"):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(kind, opt, num_warmup_steps=5, num_training_steps=planned)
    clock = Clock()
    cb = TimeBudget(budget_s, probe_steps=10, every=50, clock=clock)
    state, control = TrainerState(max_steps=planned), TrainerControl()
    cb.on_train_begin(None, state, control, lr_scheduler=sched)
    lrs = []
    for step in range(1, planned + 1):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
        clock.now += seconds_per_step
        state.global_step = step
        cb.on_step_end(None, state, control)
        if control.should_training_stop:
            break
    return cb, state.global_step, lrs


def test_training_stops_where_the_budget_ends_and_the_cosine_reaches_zero_there():
    cb, steps, lrs = _run(budget_s=40.0, seconds_per_step=1.0)
    assert steps == 40 and cb.decisions[0]["stop_at"] == 40 and cb.decisions[0]["planned_steps"] == 100
    assert lrs[-1] < 1e-6                       # the schedule ended at the new last step
    assert max(lrs) == 1.0 and lrs[20] > 0.4    # warm-up, then a decay stretched over 40 steps, not 100


def test_a_budget_that_fits_changes_nothing():
    cb, steps, lrs = _run(budget_s=500.0, seconds_per_step=1.0)
    assert steps == 100 and cb.stop_at is None and cb.decisions == []
    assert lrs[-1] < 1e-6


def test_a_constant_schedule_still_stops_in_time():
    cb, steps, lrs = _run(budget_s=30.0, seconds_per_step=1.0, kind="constant")
    assert steps == 30 and set(lrs) == {1.0}
