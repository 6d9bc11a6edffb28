"""The Compare page's data: a config diff that keeps only the keys that differ, and the metrics table with
the paired tests `tunelab compare` computes (report/compare.py, reused as is)."""

from __future__ import annotations

import itertools
from typing import Any

from tunelab.core.rundir import RunDir
from tunelab.report import compare as paired_compare

MISSING = "(absent)"


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys -> leaf values (lists are leaves)."""
    if not isinstance(doc, dict):
        return {prefix: doc}
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def config_diff(configs: dict[str, dict]) -> list[dict[str, Any]]:
    """Rows `{key, values: [one per run]}` for the dotted keys whose values are not all equal.

    `name` is left out (every run has its own); a key one run lacks shows as "(absent)".
    """
    flat = {run: flatten(cfg) for run, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f} - {"name"})
    rows = []
    for key in keys:
        values = [flat[run].get(key, MISSING) for run in configs]
        if any(v != values[0] for v in values[1:]):
            rows.append({"key": key, "values": values})
    return rows


def load(runs: list[RunDir]) -> tuple[list[paired_compare.Evaluated], list[str]]:
    """The evaluated runs (fine-tuned metrics and predictions) and, for the others, why they cannot be compared."""
    loaded, problems = [], []
    for rd in runs:
        try:
            loaded.append(paired_compare.load(rd.path))
        except paired_compare.CompareError as e:
            problems.append(str(e))
    return loaded, problems


def metrics_rows(loaded: list[paired_compare.Evaluated]) -> tuple[list[str], list[dict]]:
    """The fine-tuned headline metrics per run with their intervals (report/compare.py's columns)."""
    from tunelab.report.markdown import HEADLINE

    cols = [m for m in HEADLINE if any(m in r.metrics for r in loaded)]
    rows = [{"label": r.label, "method": r.method, "model": r.model, "n": r.metrics.get("n"),
             "cells": [(r.metrics.get(m), (r.metrics.get("ci") or {}).get(m)) for m in cols]} for r in loaded]
    return cols, rows


def comparison(runs: list[RunDir]) -> dict[str, Any]:
    """Everything the Compare page shows for `runs`: config diff, metrics, paired tests for every pair."""
    loaded, problems = load(runs)
    cols, rows = metrics_rows(loaded)
    paired = [paired_compare.paired(a, b) for a, b in itertools.combinations(loaded, 2)]
    return {"runs": [rd.name for rd in runs], "diff": config_diff({rd.name: rd.raw_config() for rd in runs}),
            "metric_names": cols, "metrics": rows, "paired": paired, "problems": problems}
