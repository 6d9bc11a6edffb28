"""Evaluate a `task: sft` run: the fine-tuned model vs zero-shot and few-shot prompting of the same base model.

Same test examples, same decoding (constrained to the label set when outputs form one), same metrics
for every system, with bootstrap intervals and a paired test of fine-tuned vs each baseline; then
the forgetting probe: perplexity and KL(base || tuned) on general English text.
"""

from __future__ import annotations

import logging
import time

from tunelab.config import Config
from tunelab.core.rundir import RunDir
from tunelab.evaluate.common import (Systems, base_model_of, baseline_subset, forgetting_gate, prediction_rows,
                                     score, seeded_sample, test_records, write_results)
from tunelab.evaluate.decoding import Decoder, LabelTrie
from tunelab.evaluate.prompts import PromptBuilder, ShotPicker
from tunelab.methods import load_trained
from tunelab.models import Precision, choose_precision
from tunelab.train.render import Renderer

log = logging.getLogger(__name__)


def is_closed_set(cfg: Config, labels: list[str] | None) -> bool:
    """Whether outputs are decoded under the label-set constraint (eval.constrained)."""
    return cfg.eval.constrained == "on" or (cfg.eval.constrained == "auto" and bool(labels))


def label_trie(renderer: Renderer, labels: list[str], probe: dict) -> LabelTrie:
    """The prefix trie over every label's completion ids, as the chat template renders them after `probe`."""
    messages = renderer.prompt_messages(probe)
    return LabelTrie.build({label: renderer.completion_ids(messages, label) for label in labels})


class Generator:
    """Decodes test examples with one model for one kind of prompt, and turns the output into text."""

    def __init__(self, cfg: Config, tokenizer, renderer: Renderer, trie: LabelTrie | None, prec: Precision):
        self.cfg, self.tok, self.r, self.trie, self.prec = cfg, tokenizer, renderer, trie, prec

    def predict(self, model, prompts: list[list[int]], desc: str) -> list[str]:
        dec = Decoder(model, self.prec, self.tok.pad_token_id, self.r.end_ids, self.cfg.eval.batch_size)
        out = dec.run(prompts, self.trie, self.cfg.eval.max_new_tokens, desc=desc)
        if self.trie is not None:
            return [self.trie.labels[d.label] for d in out]
        return [self.tok.decode(d.tokens, skip_special_tokens=True).strip() for d in out]


def budget_subset(cfg: Config, rd: RunDir, test: list[dict], gen: Generator, model, build) -> list[dict]:
    """Honour eval.time_budget_s: time one batch, then keep a seeded subset that fits; record the decision."""
    if not cfg.eval.time_budget_s:
        return test
    probe = seeded_sample(len(test), min(len(test), cfg.eval.batch_size), cfg.train.seed)
    start = time.time()
    gen.predict(model, [build(test[i]) for i in probe], desc="calibrating the time budget")
    per_example = (time.time() - start) / len(probe)
    runs = 1 + len(cfg.eval.baselines)        # the fine-tuned model and each baseline
    fits = int(cfg.eval.time_budget_s / (per_example * runs))
    keep = seeded_sample(len(test), max(fits, 1), cfg.train.seed)
    rd.set_metrics("evaluation", {"time_budget_s": cfg.eval.time_budget_s, "seconds_per_example": round(per_example, 3),
                                  "evaluated": len(keep), "test_examples": len(test)})
    if len(keep) < len(test):
        log.info(f"time budget {cfg.eval.time_budget_s:g}s: evaluating a fixed seeded subset of {len(keep)} of "
                 f"{len(test)} test examples ({per_example:.2f}s per example per system)")
    return [test[i] for i in keep]


def prompting(cfg: Config, tokenizer, prepared, test: list[dict], prec: Precision) -> tuple[Generator, PromptBuilder]:
    """The decoder and the prompts of each system (fine-tuned, zero-shot, few-shot) for these test examples."""
    labels, closed = prepared.labels, is_closed_set(cfg, prepared.labels)
    renderer = Renderer(tokenizer, cfg)
    trie = label_trie(renderer, labels, test[0]) if closed else None
    shots = ShotPicker(prepared.splits["train"], cfg.eval.few_shot_k, cfg.train.seed,
                       labels if closed else None, cfg.eval.few_shot_selection)
    return Generator(cfg, tokenizer, renderer, trie, prec), PromptBuilder(renderer, labels if closed else None, shots)


def prompted_baselines(cfg: Config, systems: Systems, gen: Generator, prompts: PromptBuilder, base,
                       subset: list[int]) -> None:
    """Predict the `subset` of the test examples with each baseline in `eval.baselines`: the untuned `base`
    causal LM prompted zero-/few-shot, decoded as the fine-tuned model is (constrained to the label set
    when outputs form one)."""
    for name in cfg.eval.baselines:
        build = getattr(prompts, name)
        systems.record(name, subset, lambda: gen.predict(base, [build(systems.test[i]) for i in subset],
                                                         desc=name.replace("_", "-")))


def baseline_cost(cfg: Config, test: list[dict], prompts: PromptBuilder, finetuned_seconds: float) -> float:
    """Estimated seconds per test example for all baselines together: the fine-tuned model's measured
    time per example, scaled by each baseline's prompt length over the fine-tuned prompt's (a fixed
    seeded sample of 32 test examples; decoding cost grows with the prompt)."""
    sample = [test[i] for i in seeded_sample(len(test), min(32, len(test)), cfg.train.seed)]
    own = sum(len(prompts.finetuned(r)) for r in sample)
    per_example = finetuned_seconds / max(len(test), 1)
    return sum(per_example * sum(len(getattr(prompts, b)(r)) for r in sample) / max(own, 1)
               for b in cfg.eval.baselines)


def prompted_cost(cfg: Config, test: list[dict], gen: Generator, prompts: PromptBuilder, base) -> float:
    """Measured seconds per test example for all prompted baselines together: each one timed on one
    batch of a fixed seeded sample (for a base model whose cost the fine-tuned model's time does not
    predict, e.g. a classification head on a few of its layers)."""
    sample = [test[i] for i in seeded_sample(len(test), min(len(test), cfg.eval.batch_size), cfg.train.seed)]
    total = 0.0
    for name in cfg.eval.baselines:
        build = getattr(prompts, name)
        start = time.time()
        gen.predict(base, [build(r) for r in sample], desc=f"timing {name.replace('_', '-')}")
        total += (time.time() - start) / max(len(sample), 1)
    return total


def evaluate(cfg: Config, rd: RunDir, prepared, tokenizer) -> dict:
    """Decode the test set with each system, score it, write predictions.jsonl and metrics.json `test`.

    Raises:
        EvaluationFailed: the forgetting probe exceeded eval.forgetting_max (after writing metrics).
    """
    prec = choose_precision(cfg.train)
    test = test_records(cfg, prepared)
    labels, closed = prepared.labels, is_closed_set(cfg, prepared.labels)
    gen, prompts = prompting(cfg, tokenizer, prepared, test, prec)
    model = load_trained(cfg.model, rd.best, cfg.task, labels=labels, method=cfg.method)
    test = budget_subset(cfg, rd, test, gen, model, prompts.finetuned)
    systems = Systems(test)
    everything = list(range(len(test)))

    systems.record("finetuned", everything, lambda: gen.predict(
        model, [prompts.finetuned(r) for r in test], desc="fine-tuned"))
    cost = baseline_cost(cfg, test, prompts, systems.seconds["finetuned"])
    subset = baseline_subset(cfg, test, closed, cost, rd)
    with base_model_of(cfg, model, labels) as base:
        prompted_baselines(cfg, systems, gen, prompts, base, subset)
    results = score(cfg, test, systems, subset, closed)
    write_results(rd, results, systems.seconds, prediction_rows(test, systems, cfg.data.template))
    if cfg.eval.forgetting:
        forgetting_gate(cfg, rd, model, tokenizer, prec, labels)
    return results
