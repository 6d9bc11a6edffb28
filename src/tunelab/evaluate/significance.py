"""Confidence and significance: bootstrap intervals for every metric, paired tests between systems.

Resampling works on the per-example statistics of `metrics.py`: a bootstrap replicate is a vector of
multinomial counts (how often each example was drawn), and every metric of the replicate is its score
function applied to counts @ statistics. Replicates are seeded, and two systems scored with the same
seed see the same replicates, which is what makes the bootstrap *paired*.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tunelab.evaluate import metrics as M

# Paired test used for the p-value of the first scalar metric: McNemar where the metric is a
# per-example right/wrong, the paired bootstrap otherwise.
_BINARY = {"accuracy", "exact_match"}


def resample_counts(n: int, samples: int, seed: int, chunk: int = 256) -> Iterator[np.ndarray]:
    """Yield `(rows, n)` arrays of bootstrap draw counts, `samples` rows in all, reproducible by `seed`."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < samples:
        b = min(chunk, samples - done)
        idx = rng.integers(0, n, size=(b, n))
        # One bincount over row-offset indices turns b x n draws into b x n counts.
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)
        done += b


def _replicates(name: str, stats: np.ndarray, samples: int, seed: int) -> np.ndarray:
    out = []
    for counts in resample_counts(len(stats), samples, seed):
        summed = counts @ stats
        out.extend(M.score(name, row) for row in summed)
    return np.asarray(out, dtype=float)


def intervals(names: Sequence[str], stats: Mapping[str, np.ndarray], *, samples: int = 1000,
              seed: int = 0, alpha: float = 0.05) -> dict[str, list[float]]:
    """Percentile bootstrap intervals from per-example statistics (`metrics.example_stats`)."""
    out = {}
    for name in M.scalar_names(names):
        family = stats[M.METRICS[name].family]
        if not len(family):
            continue
        reps = _replicates(name, family, samples, seed)
        lo, hi = np.nanpercentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[name] = [float(lo), float(hi)]
    return out


def bootstrap_ci(names: Sequence[str], predictions: Sequence, references: Sequence, *,
                 samples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, list[float]]:
    """Percentile bootstrap interval `[lo, hi]` (1 - alpha, default 95%) for each scalar metric."""
    if len(predictions) == 0:
        return {}
    stats = M.example_stats(names, predictions, references)
    return intervals(names, stats, samples=samples, seed=seed, alpha=alpha)


def _paired_bootstrap(name: str, sa: np.ndarray, sb: np.ndarray, samples: int, seed: int) -> float:
    observed = M.score(name, sa.sum(0)) - M.score(name, sb.sum(0))
    deltas = _replicates(name, sa, samples, seed) - _replicates(name, sb, samples, seed)
    deltas = deltas[~np.isnan(deltas)]
    # Tolerance: identical systems give deltas that differ from 0 only by float rounding.
    extreme = np.abs(deltas - deltas.mean()) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + len(deltas)))


def paired_bootstrap(name: str, predictions_a: Sequence, predictions_b: Sequence, references: Sequence,
                     *, samples: int = 1000, seed: int = 0) -> float:
    """Two-sided p-value that systems A and B score the same on `name` over the same examples.

    The replicate differences are centred on zero (the null) and compared with the observed
    difference (Koehn 2004; Berg-Kirkpatrick et al. 2012). Identical systems get p = 1.
    """
    family = M.METRICS[name].family
    sa = M.example_stats([name], predictions_a, references)[family]
    sb = M.example_stats([name], predictions_b, references)[family]
    return _paired_bootstrap(name, sa, sb, samples, seed)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], exact_below: int = 25) -> float:
    """Two-sided McNemar p-value on paired right/wrong outcomes.

    Uses the exact binomial test when fewer than `exact_below` examples are discordant, else the
    chi-square statistic with continuity correction.
    """
    from scipy.stats import binomtest, chi2

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} outcomes for A but {b.size} for B")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    if discordant < exact_below:
        return float(binomtest(only_a, discordant, 0.5).pvalue)
    stat = (abs(only_a - only_b) - 1) ** 2 / discordant
    return float(chi2.sf(stat, df=1))


def _right(name: str, stats: np.ndarray) -> np.ndarray:
    """Per-example right/wrong from the statistics of accuracy (true-positive block) or exact match."""
    if M.METRICS[name].family == "classification":
        return stats[:, : stats.shape[1] // 3].sum(axis=1) > 0
    return stats[:, 0] > 0


def _paired_from_stats(name: str, sa: np.ndarray, sb: np.ndarray, samples: int, seed: int) -> dict[str, Any]:
    delta = M.score(name, sa.sum(0)) - M.score(name, sb.sum(0))
    if name in _BINARY:
        return {"test": "mcnemar", "p": mcnemar(_right(name, sa), _right(name, sb)), "delta": delta}
    return {"test": "paired_bootstrap", "p": _paired_bootstrap(name, sa, sb, samples, seed), "delta": delta}


def paired_test(name: str, predictions_a: Sequence, predictions_b: Sequence, references: Sequence,
                *, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """A vs B on `name` over the same examples: `{"test", "p", "delta"}` (delta = A minus B).

    McNemar for accuracy and exact match (per-example right/wrong), the paired bootstrap otherwise.
    """
    family = M.METRICS[name].family
    sa = M.example_stats([name], predictions_a, references)[family]
    sb = M.example_stats([name], predictions_b, references)[family]
    return _paired_from_stats(name, sa, sb, samples, seed)


def score_systems(systems: Mapping[str, Mapping[str, Any]], references: Mapping[str, Any],
                  names: Sequence[str], *, target: str = "finetuned", samples: int = 1000,
                  seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """The `test` section of metrics.json: every system's metrics with intervals, and `target`'s p-values.

    Args:
        systems: `{system: {example_id: prediction}}`; baselines may cover a subset of the ids.
        references: `{example_id: reference}` for every id any system predicted.
        names: metrics to compute (see `metrics.metrics_for`); the first scalar one gets the paired test.
        target: the system compared against each other one on their shared examples.

    Returns:
        `{system: {metric: value, ..., "n": n, "ci": {metric: [lo, hi]}}}`; the target's entry also has
        `p_value_vs: {other: p}` and `paired: {other: {"test", "metric", "n", "delta"}}`, delta being
        target minus other on the shared examples.
    """
    out: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, np.ndarray]] = {}
    for system, preds in systems.items():
        ids = list(preds)
        p, r = [preds[i] for i in ids], [references[i] for i in ids]
        stats[system] = M.example_stats(names, p, r) if ids else {}
        entry = M.compute_metrics(names, p, r, stats=stats[system])
        entry["ci"] = intervals(names, stats[system], samples=samples, seed=seed, alpha=alpha) if ids else {}
        out[system] = entry
    scalars = M.scalar_names(names)
    if target in systems and scalars:
        out[target].update(_against_others(systems, stats, target, scalars[0], samples, seed))
    return out


def _against_others(systems: Mapping[str, Mapping[str, Any]], stats: Mapping[str, Mapping[str, np.ndarray]],
                    target: str, metric: str, samples: int, seed: int) -> dict[str, Any]:
    family = M.METRICS[metric].family
    row = {system: {i: k for k, i in enumerate(preds)} for system, preds in systems.items()}
    p_values, paired = {}, {}
    for other in systems:
        shared = [i for i in systems[target] if i in row[other]]
        if other == target or not shared:
            continue
        sa = stats[target][family][[row[target][i] for i in shared]]
        sb = stats[other][family][[row[other][i] for i in shared]]
        result = _paired_from_stats(metric, sa, sb, samples, seed)
        p_values[other] = result["p"]
        paired[other] = {"test": result["test"], "metric": metric, "n": len(shared), "delta": result["delta"]}
    return {"p_value_vs": p_values, "paired": paired}
