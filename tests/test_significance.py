"""Bootstrap intervals and paired tests: coverage, narrowing, seeding, clear wins and ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tunelab.evaluate import metrics as M
from tunelab.evaluate import significance as S


def _labelled(n: int, accuracy: float, seed: int, labels=("a", "b", "c", "d")):
    rng = np.random.default_rng(seed)
    refs = [labels[i] for i in rng.integers(0, len(labels), n)]
    preds = [r if rng.random() < accuracy else labels[rng.integers(0, len(labels))] for r in refs]
    return preds, refs


def test_interval_contains_point_estimate_and_narrows_with_more_data():
    names = ["accuracy", "f1_macro", "f1_weighted"]
    widths = {}
    for n in (60, 2000):
        preds, refs = _labelled(n, 0.7, seed=n)
        point = M.compute_metrics(names, preds, refs)
        ci = S.bootstrap_ci(names, preds, refs, samples=500, seed=0)
        for name in names:
            lo, hi = ci[name]
            assert lo <= point[name] <= hi, (name, n, lo, point[name], hi)
        widths[n] = ci["accuracy"][1] - ci["accuracy"][0]
    assert widths[2000] < widths[60] / 3  # width shrinks like 1/sqrt(n): sqrt(2000/60) ~ 5.8


def test_interval_is_seeded():
    preds, refs = _labelled(100, 0.6, seed=3)
    a = S.bootstrap_ci(["accuracy"], preds, refs, samples=200, seed=7)
    b = S.bootstrap_ci(["accuracy"], preds, refs, samples=200, seed=7)
    c = S.bootstrap_ci(["accuracy"], preds, refs, samples=200, seed=8)
    assert a == b and a != c


def test_replicate_scores_equal_scikit_learn_on_the_resampled_examples():
    preds, refs = _labelled(80, 0.5, seed=5)
    stats = M.example_stats(["f1_macro"], preds, refs)["classification"]
    counts = next(S.resample_counts(len(preds), samples=5, seed=0))
    for row in counts:
        take = np.repeat(np.arange(len(preds)), row.astype(int))
        expected = f1_score([refs[i] for i in take], [preds[i] for i in take], average="macro", zero_division=0)
        assert M.score("f1_macro", row @ stats) == pytest.approx(expected)


def test_mcnemar_exact_and_chi_square_branches():
    # 10 discordant pairs all favouring A: exact two-sided binomial p = 2 * 0.5**10.
    a = [True] * 10 + [True] * 5 + [False] * 5
    b = [False] * 10 + [True] * 5 + [False] * 5
    assert S.mcnemar(a, b) == pytest.approx(2 * 0.5 ** 10)
    # 30 vs 10 discordant: chi-square with continuity correction, (|30-10|-1)^2/40 on 1 df.
    a = [True] * 30 + [False] * 10
    b = [False] * 30 + [True] * 10
    stat = 19 ** 2 / 40
    assert S.mcnemar(a, b) == pytest.approx(math.erfc(math.sqrt(stat / 2)))
    assert S.mcnemar([True, False], [True, False]) == 1.0


def test_paired_tests_detect_a_clear_win_and_not_a_tie():
    preds_good, refs = _labelled(150, 0.9, seed=11)
    preds_bad, _ = _labelled(150, 0.3, seed=11)
    win = S.paired_test("accuracy", preds_good, preds_bad, refs)
    assert win["test"] == "mcnemar" and win["p"] < 0.05 and win["delta"] > 0.4
    tie = S.paired_test("accuracy", preds_good, list(preds_good), refs)
    assert tie["p"] > 0.05 and tie["delta"] == 0
    assert S.paired_bootstrap("f1_macro", preds_good, preds_bad, refs, samples=500) < 0.05
    assert S.paired_bootstrap("f1_macro", preds_good, list(preds_good), refs, samples=500) == 1.0


def test_paired_bootstrap_on_generation():
    refs = [f"the {w} sat on the mat near the door" for w in ("cat", "dog", "bird", "fox", "cow", "pig") * 8]
    good = [r.replace("near", "by") for r in refs]
    bad = ["a completely different sentence" for _ in refs]
    assert S.paired_bootstrap("rougeL", good, bad, refs, samples=300) < 0.05
    assert S.paired_bootstrap("rougeL", bad, list(bad), refs, samples=300) > 0.05
    assert S.paired_bootstrap("bleu", good, bad, refs, samples=300) < 0.05


def test_score_systems_builds_the_test_section_with_subsets():
    preds_ft, refs = _labelled(120, 0.9, seed=2)
    preds_zs, _ = _labelled(120, 0.3, seed=2)
    ids = [f"test:{i}" for i in range(120)]
    references = dict(zip(ids, refs))
    systems = {"finetuned": dict(zip(ids, preds_ft)),
               "zero_shot": dict(zip(ids[:40], preds_zs[:40])),   # baseline on a subset only
               "few_shot": {}}                                    # baseline not run
    test = S.score_systems(systems, references, M.metrics_for("classification"), samples=300)
    ft = test["finetuned"]
    assert ft["n"] == 120 and test["zero_shot"]["n"] == 40 and test["few_shot"] == {"n": 0, "ci": {}}
    assert ft["accuracy"] == pytest.approx(M.compute_metrics(["accuracy"], preds_ft, refs)["accuracy"])
    assert set(ft["ci"]) == set(M.scalar_names(M.metrics_for("classification")))
    assert ft["ci"]["accuracy"][0] <= ft["accuracy"] <= ft["ci"]["accuracy"][1]
    assert list(ft["p_value_vs"]) == ["zero_shot"] and ft["p_value_vs"]["zero_shot"] < 0.05
    assert ft["paired"]["zero_shot"]["n"] == 40 and ft["paired"]["zero_shot"]["test"] == "mcnemar"
    assert "confusion_matrix" in ft and "p_value_vs" not in test["zero_shot"]
