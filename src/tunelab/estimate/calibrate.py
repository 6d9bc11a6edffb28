"""A few real training steps on this machine, through the train stage's own model, Trainer and callbacks,
into a throwaway folder: how long a step, a validation pass and a save take, and how much memory the
process reaches.

With `method.freeze_below`, the frozen layers run once over the calibration's examples first, as the train
stage runs them over every example (timed per token), and the steps then train only the layers above.
The first step trains on the longest examples, so the process reaches the memory peak of the
run's largest batch (and allocates the optimizer state); it is not timed. The timed steps are drawn at
random from the training set, like the run's own batches. Then one validation pass and one save.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import psutil
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from tunelab.config import Config
from tunelab.core import memory
from tunelab.core.log import progress
from tunelab.core.rundir import RunDir
from tunelab.data import Prepared
from tunelab.estimate.memory import current_rss
from tunelab.models import Precision
from tunelab.tasks import TASKS
from tunelab.train.callbacks import BestCheckpoint, save_model
from tunelab.train.render import Renderer

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """What the calibration measured; times in seconds, memory in bytes."""

    steps: int                    # timed optimizer steps
    step_seconds: float           # mean wall time of a timed step
    tokens_per_step: float        # mean example tokens of the timed steps (step time is scaled by it)
    eval_seconds_per_token: float
    save_seconds: float
    setup_seconds: float          # process start to model ready (imports, tokenizer, model load), less data preparation
    frozen_seconds_per_token: float   # method.freeze_below: the once-per-example pass of the frozen layers (0: none)
    baseline_rss: int             # the process before the model was loaded
    peak_rss: int                 # the process's peak resident set after the steps
    peak_gpu: int | None          # the GPU memory torch's allocator reserved at most (CUDA runs)
    load_average: float           # the machine's 1-minute load average when the steps ran (others' work too)
    cores: int

    def to_dict(self) -> dict:
        return asdict(self)


class _StepClock(TrainerCallback):
    """Times each optimizer step and shows them as a progress bar (the Trainer's own bar is removed)."""

    def __init__(self, total: int):
        self.ends: list[float] = []
        self.bar = progress(total=total, desc="calibration steps", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.bar.update()

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def _tokens(examples: list[dict]) -> int:
    return sum(len(e["input_ids"]) for e in examples)


def _calibration_config(cfg: Config, steps: int) -> Config:
    """The run's config with the steps counted, no validation, logging or checkpoints during them, no
    tracking sinks."""
    train = cfg.train.model_copy(update={"max_steps": steps, "eval_every": 10 ** 9, "log_every": 10 ** 9,
                                         "patience": None, "report_to": [], "stall_minutes": None,
                                         "save_every": None})
    return cfg.model_copy(update={"train": train})


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The train stage's own messages (trainable parameters, truncation) belong to the real run."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def calibrate(cfg: Config, prepared: Prepared, tokenizer, renderer: Renderer, prec: Precision,
              train_ex: list[dict], val_ex: list[dict], steps: int = 4) -> Calibration:
    """Train `steps` + 1 optimizer steps and validate once with the run's own code; measure them."""
    from tunelab.train.stage import build_model, build_trainer, cache_lower_layers   # heavy imports

    per_step = cfg.train.batch_size * cfg.train.grad_accum
    rng = random.Random(cfg.train.seed)
    longest = sorted(train_ex, key=lambda e: -len(e["input_ids"]))[:per_step]
    timed = [train_ex[rng.randrange(len(train_ex))] for _ in range(per_step * steps)]
    val_part = val_ex[: 2 * cfg.train.batch_size] or longest[: cfg.train.batch_size]
    calib = _calibration_config(cfg, steps + 1)
    baseline = current_rss()
    started = psutil.Process().create_time()
    clock = _StepClock(steps + 1)
    if prec.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="tunelab-calibration-") as tmp, _quiet("tunelab.train", "tunelab.methods"):
        scratch = RunDir(Path(tmp))
        model, _ = build_model(calib, scratch, prepared)
        # A run that prepares its data does so before the estimate; `tunelab train` on prepared data does not.
        setup = time.time() - started - prepared.seconds
        examples, collator, frozen = longest + timed, None, 0.0
        if cfg.method.freeze_below and TASKS[cfg.task].caches_lower_layers:
            t0 = time.perf_counter()
            examples, val_part, collator = cache_lower_layers(calib, model, tokenizer, prec, examples, val_part)
            frozen = (time.perf_counter() - t0) / max(_tokens(examples) + _tokens(val_part), 1)
        trainer, _ = build_trainer(calib, scratch, model, tokenizer, renderer, prec, examples, val_part,
                                   collator=collator)
        trainer.args.train_sampling_strategy = "sequential"   # longest first, then the random ones
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(clock)
        trainer.train()
        t0 = time.perf_counter()
        save_model(trainer.model, tokenizer, scratch.last)
        save = time.perf_counter() - t0
        trainer.remove_callback(BestCheckpoint)   # its save of best/ is timed above, not as validation
        t0 = time.perf_counter()
        trainer.evaluate()
        evaluate = time.perf_counter() - t0
        # Reserved, not allocated: the caching allocator holds (and the GPU loses) its whole pool.
        peak_gpu = torch.cuda.max_memory_reserved() if prec.device == "cuda" else None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux reports KiB
        del trainer, model
    memory.release()   # the calibration never adds to the peak of the training that follows it
    durations = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    return Calibration(steps=len(durations), step_seconds=sum(durations) / max(len(durations), 1),
                       tokens_per_step=_tokens(timed) / steps, eval_seconds_per_token=evaluate / max(_tokens(val_part), 1),
                       save_seconds=save, setup_seconds=setup, frozen_seconds_per_token=frozen, baseline_rss=baseline, peak_rss=peak, peak_gpu=peak_gpu,
                       load_average=os.getloadavg()[0], cores=os.cpu_count() or 1)
