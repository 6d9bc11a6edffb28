"""The `evaluate` stage: fine-tuned vs zero-shot and few-shot prompting of the same base model.

Same test examples, same decoding, same metrics for every system, with bootstrap intervals and a
paired test of fine-tuned vs each baseline. Baselines may run on a fixed, seeded, stratified subset
of the test set (`eval.baseline_per_class`); the fine-tuned model is then reported on that subset
(the like-for-like comparison, `finetuned`) and on the whole test set (`finetuned_full_test`).
Then the forgetting probe: perplexity and KL(base || tuned) on general English text.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager

from tunelab import metrics as M
from tunelab.config import Config
from tunelab.decoding import Decoder, LabelTrie
from tunelab.models import load_model, load_trained
from tunelab.precision import Precision, choose
from tunelab.prompts import PromptBuilder, ShotPicker
from tunelab.render import Renderer
from tunelab.rundir import RunDir
from tunelab.significance import score_systems


class EvaluationFailed(RuntimeError):
    """A gate of the evaluation failed (e.g. eval.forgetting_max); metrics are still written."""


def stratified_subset(records: list[dict], per_class: int, seed: int) -> list[int]:
    """Indices of at most `per_class` records per output value, drawn with a fixed seed, in file order."""
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(str(r.get("output")), []).append(i)
    rng = random.Random(seed)
    keep = []
    for idx in by_label.values():
        keep += idx if len(idx) <= per_class else rng.sample(idx, per_class)
    return sorted(keep)


def seeded_sample(n: int, k: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(n), k)) if k < n else list(range(n))


@contextmanager
def base_model_of(cfg: Config, model, labels=None):
    """The untuned base model: the same object with its PEFT adapter disabled, or a fresh load."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield load_model(cfg.model, cfg.task, labels=labels)


def is_closed_set(cfg: Config, labels: list[str] | None) -> bool:
    return cfg.eval.constrained == "on" or (cfg.eval.constrained == "auto" and bool(labels))


class Systems:
    """Decodes test examples for named systems and keeps every prediction, keyed by example index."""

    def __init__(self, cfg: Config, test: list[dict], renderer: Renderer, trie, tokenizer, prec: Precision, log):
        self.cfg, self.test, self.r, self.trie, self.tok, self.prec, self.log = cfg, test, renderer, trie, tokenizer, prec, log
        self.predictions: dict[str, dict[str, str]] = {}
        self.seconds: dict[str, float] = {}

    def run(self, name: str, model, build, idx: list[int]) -> None:
        start = time.time()
        dec = Decoder(model, self.prec, self.tok.pad_token_id, self.r.end_ids, self.cfg.eval.batch_size)
        out = dec.run([build(self.test[i]) for i in idx], self.trie, self.cfg.eval.max_new_tokens)
        if self.trie is not None:
            texts = [self.trie.labels[d.label] for d in out]
        else:
            texts = [self.tok.decode(d.tokens, skip_special_tokens=True).strip() for d in out]
        self.seconds[name] = round(time.time() - start, 1)
        rate = len(idx) / max(self.seconds[name], 1e-9)
        self.log(f"evaluated {name} on {len(idx)} test examples in {self.seconds[name]}s ({rate:.1f}/s)")
        self.predictions[name] = {str(i): t for i, t in zip(idx, texts)}


def budget_subset(cfg: Config, rd: RunDir, test: list[dict], systems: Systems, model, build, log) -> list[dict]:
    """Honour eval.time_budget_s: time one batch, then keep a seeded subset that fits; record the decision."""
    if not cfg.eval.time_budget_s:
        return test
    probe = seeded_sample(len(test), min(len(test), cfg.eval.batch_size), cfg.train.seed)
    start = time.time()
    systems.run("calibration", model, build, probe)
    per_example = (time.time() - start) / len(probe)
    systems.predictions.pop("calibration", None)
    runs = 1 + len(cfg.eval.baselines)        # the fine-tuned model and each baseline
    fits = int(cfg.eval.time_budget_s / (per_example * runs))
    keep = seeded_sample(len(test), max(fits, 1), cfg.train.seed)
    note = {"time_budget_s": cfg.eval.time_budget_s, "seconds_per_example": round(per_example, 3),
            "evaluated": len(keep), "test_examples": len(test)}
    rd.update_metrics("evaluation", note)
    if len(keep) < len(test):
        log(f"time budget {cfg.eval.time_budget_s:g}s: evaluating a fixed seeded subset of {len(keep)} of "
            f"{len(test)} test examples ({per_example:.2f}s per example per system)")
    return [test[i] for i in keep]


def evaluate(cfg: Config, rd: RunDir, prepared, tokenizer, log=print) -> dict:
    """Decode the test set with each system, score it, write predictions.jsonl and metrics.json `test`.

    Raises:
        EvaluationFailed: the forgetting probe exceeded eval.forgetting_max (after writing metrics).
    """
    if cfg.task == "classification":
        from tunelab.eval_classifier import evaluate_classifier
        return evaluate_classifier(cfg, rd, prepared, tokenizer, log)
    if cfg.task == "pretrain":
        from tunelab.eval_lm import evaluate_lm
        return evaluate_lm(cfg, rd, prepared, tokenizer, log)
    prec = choose(cfg.train)
    test = prepared.splits["test"]
    if cfg.eval.max_test and len(test) > cfg.eval.max_test:
        test = [test[i] for i in seeded_sample(len(test), cfg.eval.max_test, cfg.train.seed)]
    labels, closed = prepared.labels, is_closed_set(cfg, prepared.labels)
    renderer = Renderer(tokenizer, cfg)
    trie = None
    if closed:
        probe = renderer.prompt_messages(test[0])
        trie = LabelTrie.build({l: renderer.completion_ids(probe, l) for l in labels})
    shots = ShotPicker(prepared.splits["train"], cfg.eval.few_shot_k, cfg.train.seed,
                       labels if closed else None, cfg.eval.few_shot_selection)
    prompts = PromptBuilder(renderer, labels if closed else None, shots)
    model = load_trained(cfg.model, rd.best, cfg.task, labels=labels)
    systems = Systems(cfg, test, renderer, trie, tokenizer, prec, log)
    test = systems.test = budget_subset(cfg, rd, test, systems, model, prompts.finetuned, log)
    subset = (stratified_subset(test, cfg.eval.baseline_per_class, cfg.train.seed)
              if cfg.eval.baseline_per_class and closed else list(range(len(test))))

    systems.run("finetuned", model, prompts.finetuned, list(range(len(test))))
    with base_model_of(cfg, model, labels) as base:
        for name in cfg.eval.baselines:
            systems.run(name, base, getattr(prompts, name), subset)
    results = score(cfg, test, systems, subset, closed)
    write_predictions(rd, test, systems)
    rd.update_metrics("eval_seconds", systems.seconds)
    rd.update_metrics("test", results)
    if cfg.eval.forgetting:
        forgetting_gate(cfg, rd, model, tokenizer, prec, labels, log)
    return results


def score(cfg: Config, test: list[dict], systems: Systems, subset: list[int], closed: bool) -> dict:
    """metrics.json `test`: each system on the shared subset with intervals and p-values, plus the full test set."""
    names = M.metrics_for("classification" if closed else "generation", cfg.eval.metrics)
    refs = {str(i): (r.get("references") or r.get("output")) for i, r in enumerate(test)}
    finetuned = systems.predictions["finetuned"]
    on_subset = {"finetuned": {str(i): finetuned[str(i)] for i in subset},
                 **{b: systems.predictions[b] for b in cfg.eval.baselines}}
    results = score_systems(on_subset, refs, names, samples=cfg.eval.bootstrap_samples, seed=cfg.train.seed)
    if len(subset) < len(test):
        results["finetuned_full_test"] = score_systems({"finetuned_full_test": finetuned}, refs, names,
                                                       target="none", samples=cfg.eval.bootstrap_samples,
                                                       seed=cfg.train.seed)["finetuned_full_test"]
    for name, entry in results.items():
        entry["examples"] = "full_test" if entry.get("n") == len(test) else "baseline_subset"
    return results


def write_predictions(rd: RunDir, test: list[dict], systems: Systems) -> None:
    with (rd.path / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for name, preds in systems.predictions.items():
            for i, p in preds.items():
                rec = test[int(i)]
                ref = rec.get("references") or rec.get("output")
                f.write(json.dumps({"system": name, "id": rec.get("id"), "prompt": systems.r.user_text(rec)
                                    if not rec.get("messages") else rec["messages"][-2:],
                                    "prediction": p, "reference": ref}) + "\n")


def forgetting_gate(cfg: Config, rd: RunDir, model, tokenizer, prec: Precision, labels, log) -> dict:
    """Run the forgetting probe, record it, and fail when it exceeds eval.forgetting_max."""
    from tunelab import forgetting

    base = None if hasattr(model, "disable_adapter") else load_model(cfg.model, cfg.task, labels=labels)
    result = forgetting.forgetting_probe(model, tokenizer, max_tokens=cfg.eval.forgetting_tokens, base=base,
                                         autocast_dtype=prec.autocast_dtype)
    rd.update_metrics("forgetting", result)
    if result.get("perplexity_base") is not None:
        log(f"forgetting probe: perplexity {result['perplexity_base']:.2f} -> {result['perplexity']:.2f} "
            f"({result['perplexity_change']:+.1%}), mean KL(base || tuned) {result['kl_mean']:.4f} nats/token")
    failure = forgetting.check(result, cfg.eval.forgetting_max)
    if failure:
        raise EvaluationFailed(failure)
    return result
