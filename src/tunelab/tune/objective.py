"""What a trial is judged by, measured on validation data only, and the Trainer callback that reports it
to the study at every periodic validation and stops the Trainer when the pruner says so.

For label sets the objective is computed from the model's answers to a fixed seeded subset of the
validation split, decoded exactly as evaluation decodes the test set (`predictor.answer`: the same
renderer, label trie and decoder, or the classification head); ROUGE-L for free generation; the
validation loss the Trainer already computes otherwise. The test split is never touched here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from transformers import TrainerCallback

from tunelab.config import Config
from tunelab.core.errors import ConfigError, UserError
from tunelab.evaluate import metrics as M
from tunelab.evaluate.common import seeded_sample
from tunelab.evaluate.generative import is_closed_set
from tunelab.models import choose_precision
from tunelab.predictor import answer, answer_trie
from tunelab.tasks import TASKS
from tunelab.train.render import Renderer

log = logging.getLogger(__name__)

LOSS = "loss"


@dataclass(frozen=True)
class Objective:
    """The metric a study optimises and its direction."""

    name: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


def objective_for(cfg: Config, labels: list[str] | None) -> Objective:
    """`tune.objective`/`tune.direction` resolved for the task and data (`auto`: the task's default).

    Raises:
        ConfigError: an unknown metric, or one that needs generated answers the task cannot give.
    """
    task = TASKS[cfg.task]
    closed = is_closed_set(cfg, labels) if task.serving == "chat" else bool(labels)
    name = cfg.tune.objective
    if name == "auto":
        name = task.tune_objective[0 if closed else 1]
    if name != LOSS:
        known = M.scalar_names(list(M.METRICS))
        if name not in known:
            raise ConfigError(f"tune.objective: unknown metric '{name}' (known: loss, {', '.join(known)})")
        if task.serving == "score":
            raise ConfigError(f"tune.objective={name}: a {cfg.task} model scores text and gives no answers; "
                              "use tune.objective=loss")
    maximize = name != LOSS and M.METRICS[name].higher_is_better
    if cfg.tune.direction != "auto":
        maximize = cfg.tune.direction == "maximize"
    return Objective(name, maximize)


class ValidationScorer:
    """Computes the objective of a model on a fixed seeded subset of the validation split."""

    def __init__(self, cfg: Config, prepared, tokenizer, objective: Objective):
        self.cfg, self.tokenizer, self.objective = cfg, tokenizer, objective
        val = prepared.splits["validation"]
        keep = seeded_sample(len(val), cfg.tune.eval_examples or len(val), cfg.train.seed)
        self.records = [val[i] for i in keep]
        if not self.records:
            raise UserError("tune: the validation split is empty, so trials cannot be judged; give data.validation "
                            "or a larger data.val_fraction")
        self.labels = prepared.labels
        self.references = [r.get("references") or r.get("output") for r in self.records]
        self.renderer = Renderer(tokenizer, cfg)
        self.precision = choose_precision(cfg.train)
        needs_answers = objective.name != LOSS or "latency_ms" in cfg.tune.also_minimize
        self.trie = answer_trie(cfg, self.renderer, self.labels, self.records[0]) if needs_answers else None
        self.needs_answers = needs_answers
        self.latency_ms: float | None = None

    def __call__(self, model, metrics: dict) -> float:
        """The objective of `model` now (`metrics`: the Trainer's validation metrics of this step)."""
        if self.needs_answers:
            start = time.perf_counter()
            preds = answer(self.cfg, model, self.tokenizer, self.renderer, self.labels, self.trie, self.precision,
                           self.records, desc="tune objective")
            self.latency_ms = 1000 * (time.perf_counter() - start) / max(len(self.records), 1)
        if self.objective.name == LOSS:
            return float(metrics["eval_loss"])
        return float(M.compute_metrics([self.objective.name], preds, self.references)[self.objective.name])


@dataclass
class TrialCallback(TrainerCallback):
    """At each validation: compute the objective, report it to the trial, stop training when pruned.

    `trial` is an Optuna trial; `prune` is False in multi-objective mode (Optuna cannot prune those).
    """

    trial: object
    scorer: ValidationScorer
    prune: bool = True
    history: dict[int, float] = field(default_factory=dict)
    pruned_at: int | None = None
    max_steps: int | None = None   # the steps the trial runs when not pruned

    def on_train_begin(self, args, state, control, **kwargs):
        self.max_steps = state.max_steps

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        step = state.global_step
        value = self.scorer(model, metrics or {})
        self.history[step] = value
        log.info(f"trial {self.trial.number}, step {step}: validation {self.scorer.objective.name} {value:.4f}")
        if not self.prune or self.pruned_at is not None:
            return
        self.trial.report(value, step)
        if self.trial.should_prune() and step < state.max_steps:
            self.pruned_at = step
            control.should_training_stop = True
            log.info(f"trial {self.trial.number} pruned at step {step} of {state.max_steps}: "
                     f"{self.scorer.objective.name} {value:.4f} is not promising")
