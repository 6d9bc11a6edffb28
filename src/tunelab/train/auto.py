"""`train.epochs: auto` and `train.eval_every: auto`: the length of training and how often it is
validated, decided from the data so that a config copied to another data set still trains well.

Measured on the embedded SmolLM2 recipe (examples/banking77/RESULTS.md, HWU64 and SNIPS): validation
loss stops improving after about 20,000-27,000 examples seen (Banking77 8,887 queries: best at 834 steps
of 32; HWU64 8,886 queries: best at 600 of 834), whatever the data set's size. So `auto` trains the whole
number of epochs nearest to `AUTO_EXAMPLES` examples seen, more when there are many classes (each class
seen about `AUTO_PER_CLASS` times), never less than one epoch nor more than `AUTO_MAX_EPOCHS`: a small
data set gets more passes, a large one fewer; `train.time_budget` can still end it sooner.
`eval_every: auto` validates about `AUTO_VALIDATIONS` times in the run. Each decision is logged with its
numbers and kept in metrics.json `train.auto`.
"""

from __future__ import annotations

import logging
import math

from tunelab.config import Config

log = logging.getLogger(__name__)

AUTO_EXAMPLES = 27_000
AUTO_PER_CLASS = 300
AUTO_MAX_EPOCHS = 10
AUTO_VALIDATIONS = 8


def steps_per_epoch(cfg: Config, examples: int, nproc: int) -> int:
    """Optimizer steps of one pass, counted like the Trainer: batches dealt to the processes in turn,
    then grouped by gradient accumulation."""
    t = cfg.train
    per_process = math.ceil(math.ceil(examples / t.batch_size) / max(nproc, 1))
    return max(per_process // t.grad_accum + int(per_process % t.grad_accum > 0), 1)


def resolve(cfg: Config, examples: int, classes: int, nproc: int = 1, quiet: bool = False) -> tuple[Config, dict]:
    """`cfg` with `epochs: auto` turned into a whole number of epochs and `eval_every: auto` into a step
    count, and the decisions (empty when nothing was `auto`). `classes`: labels of a label-set task, 0
    otherwise."""
    t, decided, update = cfg.train, {}, {}
    per_epoch = steps_per_epoch(cfg, examples, nproc)
    steps = t.max_steps or math.ceil((t.epochs if t.epochs != "auto" else 1) * per_epoch)
    per_step = t.batch_size * t.grad_accum * max(nproc, 1)
    if t.epochs == "auto" and not t.max_steps:
        wanted = max(AUTO_EXAMPLES, AUTO_PER_CLASS * classes)
        passes = wanted / max(examples, 1)
        # Whole epochs: every example is seen equally often.
        epochs = min(max(math.floor(passes + 0.5), 1), AUTO_MAX_EPOCHS)
        steps = epochs * per_epoch
        why = f"the larger of {AUTO_EXAMPLES:,} and {AUTO_PER_CLASS} per class x {classes} classes" if classes else \
            f"{AUTO_EXAMPLES:,}"
        bound = " (at least one)" if passes < 0.5 else f" (at most {AUTO_MAX_EPOCHS})" if passes >= AUTO_MAX_EPOCHS + 0.5 else ""
        decided["epochs"] = {"examples": examples, "classes": classes, "examples_wanted": wanted,
                             "epochs": epochs, "steps": steps}
        update["epochs"] = float(epochs)
        if not quiet:
            log.info(f"train.epochs auto: {examples:,} training examples; about {wanted:,} examples seen ({why}) is "
                     f"{passes:.2f} passes -> {epochs} epoch{'s' if epochs > 1 else ''}{bound}, {steps:,} steps of "
                     f"{per_step}")
    elif t.epochs == "auto":
        update["epochs"] = 1.0   # max_steps decides; the Trainer still wants a number
    if t.eval_every == "auto":
        every = steps / AUTO_VALIDATIONS   # round numbers from 10 steps up
        every = max(10, round(every / 10) * 10) if every >= 10 else max(1, int(every))
        decided["eval_every"] = every
        update["eval_every"] = every
        if not quiet:
            log.info(f"train.eval_every auto: validation every {every} steps (about {AUTO_VALIDATIONS} times in "
                     f"{steps:,} steps)")
    if not update:
        return cfg, {}
    return cfg.model_copy(update={"train": t.model_copy(update=update)}), decided
