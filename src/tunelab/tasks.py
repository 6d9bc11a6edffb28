"""TASKS: everything that differs between tasks, in one place.

Each entry says which head the base model gets, how records become training features, how they are
batched, which objective trains them, which module evaluates them and how the server answers with
them. Adding a task is one entry here (and its name in `config.schema.Config.task`; a test checks
that the two agree).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from tunelab.train.collate import PAD_MULTIPLE, make_collator
from tunelab.train.loss import CausalLMObjective, ClassificationObjective
from tunelab.train.render import encode_labels, encode_split


def _lm_collator(tokenizer, batching: str):
    return make_collator(tokenizer.pad_token_id, packing=batching != "padded", share_prefix=batching == "shared_prefix")


def _classification_collator(tokenizer, batching: str):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=PAD_MULTIPLE)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    head: Literal["causal_lm", "sequence_classification"]   # what `models.load_model` puts on the base model
    peft_task_type: str             # PEFT's TaskType name for adapters on this head
    labels: Literal["required", "optional", "none"]   # does the task need a closed label set?
    supervision: Literal["completion", "all_tokens", "label"]  # what the loss is computed on
    encode: Callable[..., tuple[list[dict], Any]]      # (renderer, records, split, labels) -> features, stats
    collator: Callable[[Any, str], Callable]            # (tokenizer, train.batching) -> collator
    objective: Any                  # loss, token counts and validation (train/loss.py)
    evaluator: str                  # module with `evaluate(cfg, rd, prepared, tokenizer)`, imported when used
    serving: Literal["chat", "classify", "score"]       # how `tunelab serve` answers with a model of this task
    # `tune.objective: auto` -> (when outputs form a label set, when they do not): a metric name of
    # evaluate/metrics.py computed on validation predictions, or `loss` (validation loss).
    tune_objective: tuple[str, str] = ("loss", "loss")
    chunks_documents: bool = False  # the data stage cuts documents into token windows
    # method.freeze_below: the frozen layers' output is computed once per example and cached (train/lower_cache.py);
    # only where an example's loss depends on nothing but its own tokens and one label.
    caches_lower_layers: bool = False

    def evaluate_fn(self) -> Callable:
        """The evaluator (named, not imported at load: evaluators load models, and model loading consults TASKS)."""
        return importlib.import_module(self.evaluator).evaluate


TASKS: dict[str, Task] = {
    "sft": Task(
        "sft", "causal LM trained on the completion only (chat template, label set or free text)",
        head="causal_lm", peft_task_type="CAUSAL_LM", labels="optional", supervision="completion",
        encode=encode_split, collator=_lm_collator, objective=CausalLMObjective(),
        evaluator="tunelab.evaluate.generative", serving="chat", tune_objective=("accuracy", "rougeL")),
    "classification": Task(
        "classification", "a sequence-classification head on the base model (encoder or decoder)",
        head="sequence_classification", peft_task_type="SEQ_CLS", labels="required", supervision="label",
        encode=encode_labels, collator=_classification_collator, objective=ClassificationObjective(),
        evaluator="tunelab.evaluate.classifier", serving="classify", tune_objective=("accuracy", "accuracy"),
        caches_lower_layers=True),
    "pretrain": Task(
        "pretrain", "continued pretraining: plain LM loss on raw text chunks",
        head="causal_lm", peft_task_type="CAUSAL_LM", labels="none", supervision="all_tokens",
        encode=encode_split, collator=_lm_collator, objective=CausalLMObjective(),
        evaluator="tunelab.evaluate.lm", serving="score", chunks_documents=True),
}
