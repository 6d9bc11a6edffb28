"""Duplicates (exact and MinHash LSH near-duplicates), leakage between splits, and seeded splits."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tunelab.data import dedup, leakage, split
from tunelab.data.problems import DataError

from conftest import CARD, FEES, TOPUP

import pytest


def recs(texts, labels=None, groups=None):
    return [{"id": f"f:{i}", "source": {"file": "f", "line": i, "page": None}, "input": {"text": t},
             "output": labels[i] if labels else None, "messages": None, "text": None,
             "group": groups[i] if groups else None} for i, t in enumerate(texts)]


def test_signature_agreement_estimates_jaccard():
    a, b = dedup.normalise(CARD[0]), dedup.normalise(CARD[0].replace("week", "month"))
    sig = dedup.signatures([a, b], num_perm=256)
    true = dedup.jaccard(dedup.ngrams(a), dedup.ngrams(b))
    assert abs(float((sig[0] == sig[1]).mean()) - true) < 0.1 and 0.6 < true < 0.95


def test_exact_after_normalising_and_near_with_small_edits():
    texts = CARD + ["i am still waiting on my card -- it has been more than a week now, and nothing arrived!",
                    CARD[1].replace("fortnight", "fortnite"), CARD[2].replace("usually", "normally"),
                    TOPUP[0]]
    res = dedup.dedup(recs(texts), texts, threshold=0.8)
    assert [(r["id"], why) for r, why in res.dropped] == [("f:5", "exact_duplicate"), ("f:6", "near_duplicate"),
                                                         ("f:7", "near_duplicate")]
    kinds = sorted((c["kind"], c["kept"], tuple(c["dropped"])) for c in res.clusters)
    assert kinds == [("exact", "f:0", ("f:5",)), ("near", "f:1", ("f:6",)), ("near", "f:2", ("f:7",))]
    strict = dedup.dedup(recs(texts), texts, threshold=0.99)
    assert [why for _, why in strict.dropped] == ["exact_duplicate"]


def test_leakage_policies():
    train = recs(CARD + FEES)
    test = recs(["How long does delivery of a replacement card usually take to my home address?",
                 FEES[3].replace("pounds", "pound"), "completely unrelated question about mortgages"])
    leaks = leakage.find(train, {"test": test}, threshold=0.8)
    assert [(lk.train["id"], lk.other["id"], lk.kind) for lk in leaks] == [("f:2", "f:0", "exact"), ("f:8", "f:1", "near")]
    with pytest.raises(DataError) as e:
        leakage.apply("refuse", train, leaks)
    msg = str(e.value)
    assert msg.startswith("leakage: 2 training example(s) also appear in held-out data (test: 1 exact, 1 near)")
    assert "f:2: leakage_exact: expected no copy in test, found f:0 (exact, similarity 1.00)" in msg
    kept, dropped = leakage.apply("drop", train, leaks)
    assert len(kept) == 8 and [why for _, why in dropped] == ["leaked_exact_test", "leaked_near_test"]
    assert leakage.apply("warn", train, leaks) == (train, [])


def test_stratified_carve_is_seeded_and_keeps_proportions():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    data = recs([f"t{i}" for i in range(100)], labels)
    rest, held = split.carve(data, 0.2, seed=3, stratify=True)
    assert Counter(r["output"] for r in held) == {"a": 12, "b": 6, "c": 2} and len(rest) == 80
    assert [r["id"] for r in split.carve(data, 0.2, seed=3, stratify=True)[1]] == [r["id"] for r in held]
    assert [r["id"] for r in split.carve(data, 0.2, seed=4, stratify=True)[1]] != [r["id"] for r in held]


def test_subsample_keeps_every_label_and_carving_keeps_singletons_in_train():
    labels = ["a"] * 50 + ["b"] * 2 + ["c"]
    data = recs([f"t{i}" for i in range(53)], labels)
    taken, _ = split.take(data, 5, seed=0, stratify=True, keep_each=False)
    assert {r["output"] for r in taken} == {"a", "b", "c"} and len(taken) == 5
    rest, held = split.carve(data, 0.45, seed=0, stratify=True)
    assert {r["output"] for r in rest} == {"a", "b", "c"}


def test_groups_never_span_two_splits():
    groups = [f"customer{i // 4}" for i in range(80)]
    labels = ["x" if i % 2 else "y" for i in range(80)]
    data = recs([f"t{i}" for i in range(80)], labels, groups)
    rest, held = split.carve(data, 0.25, seed=1, stratify=True)
    assert not {r["group"] for r in rest} & {r["group"] for r in held}
    assert len(held) == 20 and len(rest) == 60


def test_benchmark_script_writes_its_json(tmp_path):
    out = tmp_path / "b.json"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "dedup_throughput.py"), "--n", "2000",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["n"] == 2000 and doc["seconds_100k"] > 0 and doc["near_dropped"] > 0
    assert "per 100k" in proc.stdout
