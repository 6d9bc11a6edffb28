"""Metrics against hand-computed values on small inputs, and against scikit-learn on random ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from tunelab.evaluate import metrics as M

Y_TRUE = ["a", "b", "b", "b"]
Y_PRED = ["a", "b", "a", "c"]


def test_classification_hand_computed():
    # Per label (tp, predicted, true): a (1, 2, 1), b (1, 1, 3), c (0, 1, 0).
    # F1 = 2tp / (pred + true): a 2/3, b 1/2, c 0.
    out = M.compute_metrics(M.metrics_for("classification"), Y_PRED, Y_TRUE)
    assert out["n"] == 4
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["f1_macro"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert out["f1_micro"] == pytest.approx(0.5)
    assert out["f1_weighted"] == pytest.approx((2 / 3 * 1 + 1 / 2 * 3 + 0 * 0) / 4)
    assert out["precision_macro"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert out["recall_macro"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert out["f1_per_class"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 0.0})
    assert out["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[1, 0, 0], [1, 1, 1], [0, 0, 0]]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = [f"intent_{i}" for i in range(9)]
    y_true = [labels[i] for i in rng.integers(0, 7, 200)]         # two labels never true ...
    y_pred = [labels[i] for i in rng.integers(0, 9, 200)]         # ... but sometimes predicted
    out = M.compute_metrics(M.metrics_for("classification"), y_pred, y_true)
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for avg in ("macro", "micro", "weighted"):
        assert out[f"f1_{avg}"] == pytest.approx(f1_score(y_true, y_pred, average=avg, zero_division=0))
    assert out["precision_macro"] == pytest.approx(precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert out["recall_macro"] == pytest.approx(recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert np.mean(list(out["f1_per_class"].values())) == pytest.approx(out["f1_macro"])
    assert np.array(out["confusion_matrix"]["matrix"]).tolist() == confusion_matrix(
        y_true, y_pred, labels=out["confusion_matrix"]["labels"]).tolist()


def test_rouge_hand_computed_and_best_reference():
    # "the cat sat" vs "the cat sat on the mat": unigrams P 3/3 R 3/6; bigrams P 2/2 R 2/5; LCS 3.
    out = M.compute_metrics(["rouge1", "rouge2", "rougeL"], ["the cat sat"], ["the cat sat on the mat"])
    assert out["rouge1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert out["rouge2"] == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert out["rougeL"] == pytest.approx(2 / 3)
    # Several references: each example takes its best one; the corpus value is the mean over examples.
    multi = M.compute_metrics(["rouge1"], ["the cat sat", "dogs bark"],
                              [["a dog ran", "the cat sat on the mat"], ["dogs bark", "no"]])
    assert multi["rouge1"] == pytest.approx((2 / 3 + 1.0) / 2)


def test_bleu_hand_computed_and_multiple_references():
    # 1..4-gram precisions 4/6, 3/5, 2/4, 1/3 and equal lengths (brevity penalty 1).
    out = M.compute_metrics(["bleu"], ["a b c d e f"], ["a b c d x y"])
    assert out["bleu"] == pytest.approx((4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-6)
    # A second reference equal to the hypothesis makes every n-gram match.
    both = M.compute_metrics(["bleu"], ["a b c d e f"], [["a b c d x y", "a b c d e f"]])
    assert both["bleu"] == pytest.approx(1.0)
    # Examples with different numbers of references are accepted.
    mixed = M.compute_metrics(["bleu", "chrf"], ["a b c d e f", "g h i j"], [["a b c d e f", "z"], "g h i j"])
    assert mixed["bleu"] == pytest.approx(1.0) and mixed["chrf"] == pytest.approx(1.0)


def test_chrf_hand_computed():
    # Character n-grams of "abc" vs "abd": 1-grams 2/3 match, 2-grams 1/2, 3-grams 0; orders 4-6 have
    # no n-grams and do not count. Precision equals recall, so each order's F equals it.
    out = M.compute_metrics(["chrf"], ["abc"], ["abd"])
    assert out["chrf"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3, abs=1e-6)


def test_exact_match_normalises_case_and_whitespace():
    out = M.compute_metrics(["exact_match"], ["Hello  World ", "yes", "no"], ["hello world", ["nope", "YES"], "No."])
    assert out["exact_match"] == pytest.approx(2 / 3)


def test_perplexity_from_summed_nll_and_tokens():
    assert M.perplexity(30.0, 15) == pytest.approx(math.e ** 2)
    assert M.perplexity(1.0, 0) == math.inf
    out = M.compute_metrics(["perplexity"], [10.0, 20.0], [5, 10])
    assert out["perplexity"] == pytest.approx(math.e ** 2)


def test_metrics_for_defaults_override_and_typos():
    assert M.metrics_for("generation") == ["rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match"]
    assert M.metrics_for("lm") == ["perplexity"]
    assert M.metrics_for("classification", ["accuracy", "f1_macro"]) == ["accuracy", "f1_macro"]
    with pytest.raises(ValueError, match="did you mean 'f1_macro'"):
        M.metrics_for("classification", ["f1macro"])
    with pytest.raises(ValueError, match="unknown task kind"):
        M.metrics_for("regression")


def test_empty_and_mismatched_inputs():
    assert M.compute_metrics(["accuracy"], [], []) == {"n": 0}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        M.compute_metrics(["accuracy"], ["a", "b"], ["a"])


def test_per_example_values():
    assert M.per_example("accuracy", Y_PRED, Y_TRUE) == [1.0, 1.0, 0.0, 0.0]
    assert M.per_example("rougeL", ["the cat sat", "x"], ["the cat sat", "y"]) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="corpus-level"):
        M.per_example("bleu", ["a"], ["a"])
