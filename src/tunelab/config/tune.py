"""`tune:` — hyper-parameter search (`tunelab tune`): what is searched, what is optimised, how trials
are sampled, pruned and stored. Every trial is an ordinary run of the rest of the config with the
sampled values applied as dotted overrides (see tunelab/tune/)."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from tunelab.config._section import Section

# Sections whose leaves may be searched. Left out on purpose: which files are the data, how the
# validation and test splits are carved and the seed that carves them (changing them changes what the
# trials are compared on, or lets the test split leak into the choice), and settings that do not
# change the model (threads, device, tracking, run names, evaluation of the final model).
SEARCHABLE_SECTIONS = ("data", "model", "method", "train")
NOT_SEARCHABLE = ("data.train", "data.validation", "data.test", "data.val_fraction", "data.test_fraction",
                  "data.group_by", "data.encoding", "data.errors", "train.seed", "train.threads", "train.device",
                  "train.report_to", "train.log_every")

# Names other tools use for our fields, so the did-you-mean can point at ours.
SYNONYMS = {"learning_rate": "lr", "rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha",
            "lora_dropout": "dropout", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
            "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "scheduler"}


class Distribution(Section):
    """One searched value: a float or int range (optionally log-scaled or stepped) or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field(..., description="`float` (uniform or log-uniform between low and high), `int` (integers between low and high) or `categorical` (one of `choices`).")
    low: float | None = Field(None, description="Smallest value (float and int).")
    high: float | None = Field(None, description="Largest value, included (float and int).")
    log: bool = Field(False, description="Sample on a log scale (float and int; low must be > 0). Use it for learning rates.")
    step: float | None = Field(None, gt=0, description="Only values low + k*step (float and int; not with log).")
    choices: list[Any] | None = Field(None, description="The values to choose from (categorical): numbers, strings, booleans or lists.")

    @model_validator(mode="after")
    def _check(self) -> "Distribution":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical distribution needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical distribution takes `choices`, not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} distribution needs `low` and `high`")
        if self.choices is not None:
            raise ValueError(f"a {self.type} distribution takes low/high, not `choices`")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is greater than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0 (found {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and any(v is not None and float(v) != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int distribution needs whole-number low, high and step")
        return self


class TuneConfig(Section):
    """The search: space, objective, budget, sampler, pruner and where the study is stored."""

    space: dict[str, Distribution] = Field(default_factory=dict, description="Dotted config key -> distribution, e.g. `train.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}` or `method.r: [4, 8, 16]` (a list is a categorical). Keys may name any field of data, model, method or train except the data files, the split fractions and the seed.")
    objective: str = Field("auto", description="What a trial is judged by, on the validation split only: `auto` (the task's default: accuracy through the same constrained decoding as evaluation for label sets, ROUGE-L for free generation, validation loss otherwise), `loss` (validation loss) or a metric name such as accuracy, f1_macro, rougeL, exact_match.")
    direction: Literal["auto", "maximize", "minimize"] = Field("auto", description="Whether the objective is maximised or minimised; `auto` follows the metric (loss: minimise).")
    n_trials: int = Field(20, ge=1, description="Trials that must finish (complete or pruned) across every worker and every re-run; a re-run of a finished study only redoes the final evaluation.")
    time_budget: float | None = Field(None, gt=0, description="Seconds after which no new trial is started (running trials finish); None = no limit.")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="How the next trial's values are chosen: TPE (Bayesian, the default), random, or grid (every combination of categorical choices / stepped ranges; float ranges need a step).")
    seed: int = Field(0, description="Seed of the sampler: the same study with the same seed proposes the same first values.")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Stop unpromising trials early from the objective measured at each validation (train.eval_every): median (worse than the median of earlier trials at the same step), hyperband, or none. Ignored in multi-objective mode.")
    startup_trials: int = Field(3, ge=0, description="Median pruner: trials that always run to the end before any trial is pruned (and TPE's random start-up trials).")
    warmup_steps: int = Field(0, ge=0, description="Median pruner: training steps before which a trial is never pruned.")
    eval_examples: int | None = Field(200, ge=1, description="The objective is computed on a fixed seeded subset of at most this many validation examples (None = all); decoding every example at every validation can cost more than the training.")
    storage: str | None = Field(None, description="Where the study lives: None = SQLite in the study folder; any SQLAlchemy URL (e.g. postgresql://user:pass@host/db) lets workers on many machines share one study.")
    study_name: str | None = Field(None, description="Name of the study in the storage and of the study folder under runs_dir (default: `<name>-tune`).")
    also_minimize: list[Literal["trainable_params", "latency_ms"]] = Field(default_factory=list, description="Multi-objective mode: also minimise trainable parameters and/or validation latency (ms per example); the report shows the Pareto set and best_config.yaml is the Pareto trial with the best objective. Pruning is off in this mode.")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="Parameter sets (space key -> value) tried first when the study is created, e.g. the values of the config you have now, so the search starts from a known point and its best is at least that point's.")
    keep_weights: Literal["best", "all"] = Field("best", description="Which trials keep their trained weights (best/, last/): only the study's best trial and the starting config's (tune.enqueue[0], which the best is compared with on the test set) so disk stays bounded, or all.")
    heartbeat_s: int = Field(60, ge=1, description="Workers record a heartbeat this often; a trial whose heartbeat is 2x older (its machine died) is marked failed and retried. Dead workers on this machine are detected at once.")

    @field_validator("space", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        """`key: [a, b, c]` is a categorical distribution."""
        if isinstance(v, dict):
            return {k: {"type": "categorical", "choices": d} if isinstance(d, list) else d for k, d in v.items()}
        return v

    @model_validator(mode="after")
    def _enqueued(self) -> "TuneConfig":
        for i, point in enumerate(self.enqueue):
            unknown = sorted(set(point) - set(self.space))
            if unknown:
                raise ValueError(f"tune.enqueue[{i}]: {', '.join(unknown)} not in tune.space")
        return self


def searchable_keys(root: type[BaseModel]) -> list[str]:
    """Every dotted leaf key of `root`'s searchable sections (nested sections included)."""
    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}.{field.alias or name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key)
            elif key not in NOT_SEARCHABLE:
                keys.append(key)

    for section in SEARCHABLE_SECTIONS:
        walk(root.model_fields[section].annotation, section)
    return keys


def check_space(space: dict[str, Distribution], root: type[BaseModel]) -> None:
    """Every `tune.space` key names a searchable config field.

    Raises:
        ValueError: an unknown or unsearchable key, with a did-you-mean suggestion.
    """
    known = searchable_keys(root)
    for key in space:
        if key in known:
            continue
        if key in NOT_SEARCHABLE or key.split(".")[0] not in SEARCHABLE_SECTIONS and key.split(".")[0] in root.model_fields:
            raise ValueError(f"tune.space: '{key}' cannot be searched (searchable: the fields of "
                             f"{', '.join(SEARCHABLE_SECTIONS)} except {', '.join(NOT_SEARCHABLE)})")
        section, _, leaf = key.rpartition(".")
        leaf = SYNONYMS.get(leaf, leaf)
        close = (difflib.get_close_matches(f"{section}.{leaf}", known, n=1, cutoff=0.6)
                 or difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in known], n=1, cutoff=0.6))
        if close and "." not in close[0]:
            close = [k for k in known if k.endswith("." + close[0])]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"tune.space: '{key}' is not a config key{hint}")
