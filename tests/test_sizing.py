"""How many test examples the baselines see: the whole test set when it is cheap, else a stratified
subset sized for the interval width asked, cut to the time budget, with the reason said."""

from __future__ import annotations

from collections import Counter

import pytest

from capture import captured
from tunelab.evaluate.sizing import examples_for_width, size_baselines, wilson_half_width

LABELS = [f"intent{i % 77}" for i in range(3080)]           # Banking77-sized, balanced
SKEWED = ["big"] * 900 + ["small"] * 100


def size(labels=LABELS, closed=True, per_class=None, width=0.05, budget=600.0, cost=None):
    return size_baselines(labels, closed, 0, per_class, width, budget, cost)


def test_width_and_examples_agree_with_the_wilson_interval():
    n = examples_for_width(0.05)
    assert 370 <= n <= 390                                   # the textbook 1.96^2/4/0.05^2 = 384
    assert wilson_half_width(0.5, n) <= 0.05 < wilson_half_width(0.5, n - 1)
    assert examples_for_width(0.15) < 50                     # what 10 per class on 4 classes bought


def test_cheap_baselines_see_the_whole_test_set():
    s = size(cost=0.001)                                     # an encoder: ~3 s for all of it
    assert s.examples == 3080 and "fits the budget" in s.reason


def test_slow_baselines_get_the_subset_the_interval_needs_stratified():
    with captured() as lines:
        s = size(cost=1.0)                                   # 3080 s > 600 s; 385 examples fit
    assert abs(s.examples - examples_for_width(0.05)) <= 77  # rounding per label, at least one each
    assert s.half_width <= 0.052
    counts = Counter(LABELS[i] for i in s.indices)
    assert len(counts) == 77 and max(counts.values()) - min(counts.values()) <= 1
    assert any(line.startswith(f"baselines on {s.examples} of 3080") and "baseline_ci_width" in line
               for line in lines), lines
    skewed = Counter(SKEWED[i] for i in size(SKEWED, width=0.1, cost=None).indices)
    assert skewed["big"] == pytest.approx(9 * skewed["small"], rel=0.1)   # in proportion


def test_the_budget_cuts_the_subset_and_says_how_wide_it_leaves_the_intervals():
    s = size(cost=5.0, budget=600.0)                         # 120 examples fit, 385 wanted
    assert s.examples <= 120 + 77 and "cut to 120" in s.reason and "intervals of about +-0.0" in s.reason


def test_a_fixed_per_class_count_and_open_outputs_keep_their_rules():
    assert size(per_class=2).examples == 154 and "baseline_per_class=2" in size(per_class=2).reason
    assert size(closed=False, cost=100.0).examples == 3080
