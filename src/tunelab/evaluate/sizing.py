"""How many test examples the baselines see: enough to decide, within a time budget.

The whole test set when the baselines' estimated time fits `eval.baseline_budget_s` (encoder baselines
take about a second); otherwise a stratified subset of n examples, n the smallest for which the 95%
Wilson interval of an accuracy of 0.5 (the widest case) has half-width `eval.baseline_ci_width`, cut to
what the budget allows. `eval.baseline_per_class` still fixes k per class when set. The decision and
its reason are logged and returned, so the report can say why the baselines saw what they saw.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

Z95 = 1.959964


def wilson_half_width(p: float, n: int, z: float = Z95) -> float:
    """Half-width of the Wilson score interval for a proportion p observed on n examples."""
    if n <= 0:
        return 1.0
    return z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def examples_for_width(width: float, p: float = 0.5) -> int:
    """The smallest n whose Wilson half-width at proportion p is at most `width`."""
    n = max(1, math.ceil(Z95 * Z95 * p * (1 - p) / width ** 2) - 10)   # the normal approximation, a bit under
    while wilson_half_width(p, n) > width:
        n += 1
    return n


def stratified_sample(labels: list[str], n: int, seed: int) -> list[int]:
    """Indices of about n items drawn with a fixed seed, each label in proportion to its share (at
    least one per label), in order."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rng, keep = random.Random(seed), []
    for idx in by_label.values():
        take = min(len(idx), max(1, round(n * len(idx) / len(labels))))
        keep += rng.sample(idx, take)
    return sorted(keep)


def per_label(labels: list[str], k: int, seed: int) -> list[int]:
    """Indices of at most `k` items per label, drawn with a fixed seed, in order."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rng, keep = random.Random(seed), []
    for idx in by_label.values():
        keep += idx if len(idx) <= k else rng.sample(idx, k)
    return sorted(keep)


@dataclass
class Sizing:
    indices: list[int]
    reason: str
    examples: int
    test_examples: int
    estimated_seconds: float | None
    half_width: float        # the 95% interval half-width of an accuracy of 0.5 on this many examples

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "indices"}


def size_baselines(labels: list[str], closed: bool, seed: int, per_class: int | None, ci_width: float,
                   budget_s: float, seconds_per_example: float | None) -> Sizing:
    """The test examples (indices into `labels`, the test outputs) the baselines run on, and why.

    Args:
        seconds_per_example: estimated seconds per test example for all baselines together (None:
            unknown, then the interval target alone decides).
    """
    total = len(labels)

    def done(idx: list[int], reason: str) -> Sizing:
        est = None if seconds_per_example is None else round(seconds_per_example * len(idx), 1)
        s = Sizing(idx, reason, len(idx), total, est, round(wilson_half_width(0.5, len(idx)), 3))
        log.info(f"baselines on {s.examples} of {total} test examples: {reason}")
        return s

    if not closed:
        return done(list(range(total)), "open-ended outputs are compared on every test example")
    if per_class:
        idx = per_label(labels, per_class, seed)
        return done(idx, f"eval.baseline_per_class={per_class} per label (set in the config)")
    full = None if seconds_per_example is None else seconds_per_example * total
    if full is not None and full <= budget_s:
        return done(list(range(total)), f"the whole test set fits the budget (estimated {full:.0f}s <= "
                                        f"eval.baseline_budget_s={budget_s:g})")
    need = examples_for_width(ci_width)
    if need >= total:
        return done(list(range(total)), f"+-{ci_width:g} (eval.baseline_ci_width) needs {need} examples, "
                                        f"at least the whole test set")
    n, why = need, f"+-{ci_width:g} at accuracy 0.5 needs {need} (eval.baseline_ci_width)"
    if seconds_per_example is not None and need * seconds_per_example > budget_s:
        n = max(len(set(labels)), int(budget_s / seconds_per_example))
        why += (f"; cut to {n} to fit eval.baseline_budget_s={budget_s:g} (estimated "
                f"{seconds_per_example:.2f}s per example): intervals of about +-{wilson_half_width(0.5, n):.3f}")
    elif seconds_per_example is not None:
        why += f"; the whole test set would take about {full:.0f}s > eval.baseline_budget_s={budget_s:g}"
    return done(stratified_sample(labels, min(n, total), seed), why + " (stratified by label)")
