"""What every evaluator shares: which test examples are scored, the systems' predictions, scoring with
intervals and paired tests, predictions.jsonl, the untuned base model, and the forgetting gate.

Baselines may run on a seeded, stratified subset of the test set, sized to decide within a time budget
(`sizing.py`: eval.baseline_ci_width, eval.baseline_budget_s, or a fixed eval.baseline_per_class); the
fine-tuned model is then reported on that subset (the like-for-like comparison, `finetuned`) and on the
whole test set (`finetuned_full_test`).
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from typing import Callable, Sequence

from tunelab.config import Config
from tunelab.core.errors import UserError
from tunelab.core.log import rate
from tunelab.core.records import prompt_text
from tunelab.core.rundir import RunDir
from tunelab.evaluate import metrics as M
from tunelab.evaluate.significance import score_systems
from tunelab.models import Precision, load_model

log = logging.getLogger(__name__)


class EvaluationFailed(UserError, RuntimeError):
    """A gate of the evaluation failed (e.g. eval.forgetting_max); metrics are still written."""


def seeded_sample(n: int, k: int, seed: int) -> list[int]:
    """Indices of a seeded sample of `k` of `n` items, in order (all of them when k >= n)."""
    return sorted(random.Random(seed).sample(range(n), k)) if k < n else list(range(n))


def test_records(cfg: Config, prepared) -> list[dict]:
    """The test examples to score: the test split, or a seeded sample of `eval.max_test` of them."""
    test = prepared.splits["test"]
    if cfg.eval.max_test and len(test) > cfg.eval.max_test:
        test = [test[i] for i in seeded_sample(len(test), cfg.eval.max_test, cfg.train.seed)]
    return test


def baseline_subset(cfg: Config, test: list[dict], closed: bool, seconds_per_example: float | None = None,
                    rd: RunDir | None = None) -> list[int]:
    """Indices of the test examples the baselines see (`sizing.size_baselines`); the decision is logged
    and, given `rd`, recorded in metrics.json `baseline_sizing`.

    Args:
        seconds_per_example: estimated seconds per test example for all baselines together.
    """
    from tunelab.evaluate.sizing import size_baselines

    e = cfg.eval
    sizing = size_baselines([str(r.get("output")) for r in test], closed, cfg.train.seed, e.baseline_per_class,
                            e.baseline_ci_width, e.baseline_budget_s, seconds_per_example)
    if rd is not None:
        rd.set_metrics("baseline_sizing", sizing.describe())
    return sizing.indices


@contextmanager
def base_model_of(cfg: Config, model, labels=None):
    """The untuned base model: the same object with its PEFT adapter disabled, or a fresh load."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield load_model(cfg.model, cfg.task, labels=labels)


class Systems:
    """The predictions of each evaluated system on the test examples, keyed by example index."""

    def __init__(self, test: list[dict]):
        self.test = test
        self.predictions: dict[str, dict[str, str]] = {}
        self.seconds: dict[str, float] = {}

    def record(self, name: str, idx: Sequence[int], predict: Callable[[], list]) -> None:
        """Run `predict()` for the examples `idx` and keep its predictions and its time under `name`."""
        start = time.time()
        preds = predict()
        self.seconds[name] = round(time.time() - start, 2)
        self.predictions[name] = {str(i): p for i, p in zip(idx, preds)}
        log.info(f"evaluated {name} on {len(idx)} test examples in {self.seconds[name]}s"
                 f"{rate(len(idx), self.seconds[name], 'examples')}")


def score(cfg: Config, test: list[dict], systems: Systems, subset: list[int], closed: bool) -> dict:
    """metrics.json `test`: each system on the shared subset with intervals and p-values, plus the full test set."""
    names = M.metrics_for("classification" if closed else "generation", cfg.eval.metrics)
    refs = {str(i): (r.get("references") or r.get("output")) for i, r in enumerate(test)}
    finetuned = systems.predictions["finetuned"]
    on_subset = {"finetuned": {str(i): finetuned[str(i)] for i in subset},
                 **{b: systems.predictions[b] for b in cfg.eval.baselines if b in systems.predictions}}
    results = score_systems(on_subset, refs, names, samples=cfg.eval.bootstrap_samples, seed=cfg.train.seed)
    if len(subset) < len(test):
        results["finetuned_full_test"] = score_systems({"finetuned_full_test": finetuned}, refs, names,
                                                       target="none", samples=cfg.eval.bootstrap_samples,
                                                       seed=cfg.train.seed)["finetuned_full_test"]
    for entry in results.values():
        entry["examples"] = "full_test" if entry.get("n") == len(test) else "baseline_subset"
    return results


def prediction_rows(test: list[dict], systems: Systems, template: str | None) -> list[dict]:
    """predictions.jsonl rows: one per system and example, with the prompt the model saw and the reference."""
    rows = []
    for name, preds in systems.predictions.items():
        for i, p in preds.items():
            rec = test[int(i)]
            ref = rec.get("references") or rec.get("output")
            prompt = rec["messages"][-2:] if rec.get("messages") else prompt_text(rec, template)
            rows.append({"system": name, "id": rec.get("id"), "prompt": prompt, "prediction": p, "reference": ref})
    return rows


def write_results(rd: RunDir, results: dict, seconds: dict, rows: list[dict]) -> None:
    """Replace the run's test metrics, evaluation times and predictions with this evaluation's."""
    rd.write_predictions(rows)
    rd.set_metrics("eval_seconds", seconds)
    rd.set_metrics("test", results)


def forgetting_gate(cfg: Config, rd: RunDir, model, tokenizer, prec: Precision, labels) -> dict:
    """Run the forgetting probe, record it, and fail when it exceeds eval.forgetting_max."""
    from tunelab.evaluate import forgetting

    base = None if hasattr(model, "disable_adapter") else load_model(cfg.model, cfg.task, labels=labels)
    result = forgetting.forgetting_probe(model, tokenizer, max_tokens=cfg.eval.forgetting_tokens, base=base,
                                         autocast_dtype=prec.autocast_dtype)
    rd.set_metrics("forgetting", result)
    if result.get("perplexity_base") is not None:
        log.info(f"forgetting probe: perplexity {result['perplexity_base']:.2f} -> {result['perplexity']:.2f} "
                 f"({result['perplexity_change']:+.1%}), mean KL(base || tuned) {result['kl_mean']:.4f} nats/token")
    failure = forgetting.check(result, cfg.eval.forgetting_max)
    if failure:
        raise EvaluationFailed(failure)
    return result
