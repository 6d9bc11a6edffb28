"""Calibration of the drift checks (acceptance): at alpha = 0.05, at most 5% false alarms over 20 seeded
same-distribution splits of Banking77, with the documented window (200) and defaults, through the
benchmark's trial (benchmarks/monitor_drift.py, which checks each window with the product's code).

Whether a test holds its level does not depend on the encoder's quality (any fixed embedding gives an
exact permutation test), so a tiny random BERT stands in for MiniLM here; power needs a real encoder
and is measured by the benchmark (docs/monitoring.md has its figures). The statistics themselves are
checked on Gaussian noise, where their null distributions are known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.monitor_drift import Trials, banking77, run
from tiny import tiny_bert_classifier
from tunelab.config.monitor import MonitorConfig
from tunelab.monitor import stats
from tunelab.monitor.embed import Encoder

SEEDS = 20


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    encoder = Encoder(str(tiny_bert_classifier(tmp_path_factory.mktemp("enc") / "bert")), 64, batch_size=256)
    return Trials(banking77(1900), [], 1500, MonitorConfig(), encoder)


def test_false_alarms_at_most_alpha_over_20_same_distribution_splits(trials):
    result = run(trials, ("same",), range(SEEDS))["same"]
    print(f"same-distribution windows flagged: {result['flagged']}/{SEEDS}; per check {result['checks']}")
    assert set(result["checks"]) == {"embedding_mmd", "domain_classifier", "vocabulary", "length", "labels"}
    assert result["rate"] <= 0.05


@pytest.mark.slow
def test_power_and_calibration_with_minilm():
    """The acceptance figures with the embedded encoder (a few minutes on 2 cores): same-distribution
    windows flagged <= 5%, DialogSum and the label-mix shift >= 95%."""
    from benchmarks.monitor_drift import dialogues

    cfg = MonitorConfig()
    t = Trials(banking77(2500), dialogues(), 1500, cfg, Encoder(cfg.encoder, cfg.max_length, batch_size=128))
    result = run(t, ("same", "dialogsum", "label_mix"), range(SEEDS))
    assert result["same"]["rate"] <= 0.05, result
    assert result["dialogsum"]["rate"] >= 0.95 and result["label_mix"]["rate"] >= 0.95, result


def test_statistics_hold_their_level_on_noise_and_detect_a_shift():
    rng = np.random.default_rng(0)
    p = {"mmd": [], "auc": [], "binned": [], "binned_ties": []}
    for s in range(60):
        r = np.random.default_rng(s)
        x, y = r.normal(size=(300, 8)), r.normal(size=(100, 8))
        p["mmd"].append(stats.mmd(x, y, 100, r).p)
        p["auc"].append(stats.domain_classifier(x, y, s).p)
        p["binned"].append(stats.binned_shift(x[:, 0], y[:, 0], r).p)
        # Token counts: a few distinct integers, so many ties at the bin edges.
        p["binned_ties"].append(stats.binned_shift(r.poisson(12, 1500), r.poisson(12, 200), r).p)
    for name, values in p.items():
        assert np.mean(np.array(values) < 0.05) <= 0.1, name    # 6 of 60 at most, at level 0.05
    x, y = rng.normal(size=(300, 8)), rng.normal(0.5, 1.0, size=(100, 8))
    assert stats.mmd(x, y, 100, rng).p < 0.02 and stats.domain_classifier(x, y, 0).p < 0.01
    ref = np.array([50, 30, 20]) * 10
    assert stats.label_shift(ref, np.array([50, 30, 20]), rng).p > 0.5
    assert stats.label_shift(ref, np.array([20, 30, 50]), rng).p < 0.01
