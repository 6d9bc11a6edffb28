"""Seeded, reproducible splits: stratified by label when outputs form a closed label set, and
group-aware when records carry a group (one group never spans two splits)."""

from __future__ import annotations

import random
from collections import defaultdict


def _quotas(counts: dict[str, int], n: int, lo: dict[str, int], hi: dict[str, int]) -> dict[str, int]:
    """Split `n` across labels in proportion to `counts` (largest remainder), within [lo, hi] per label."""
    total = sum(counts.values())
    q = {k: min(hi[k], max(lo[k], int(n * c / total))) for k, c in counts.items()}
    # Hand out (or take back) the rounding remainder by largest fractional part, respecting bounds.
    order = sorted(counts, key=lambda k: (-(n * counts[k] / total - int(n * counts[k] / total)), k))
    while sum(q.values()) < n and any(q[k] < hi[k] for k in order):
        for k in order:
            if sum(q.values()) >= n:
                break
            if q[k] < hi[k]:
                q[k] += 1
    while sum(q.values()) > n and any(q[k] > lo[k] for k in order):
        for k in reversed(order):
            if sum(q.values()) <= n:
                break
            if q[k] > lo[k]:
                q[k] -= 1
    return q


def take(records: list[dict], n: int, seed: int, stratify: bool, keep_each: bool) -> tuple[list[dict], list[dict]]:
    """Pick `n` records (taken, rest), keeping input order within each.

    Args:
        stratify: allocate per label (`output`) in proportion to its frequency.
        keep_each: carving a held-out split: every label keeps at least one example in `rest`.
            Otherwise (subsampling train) every label gets at least one in `taken` when n allows.
    """
    n = max(0, min(n, len(records)))
    if any(r.get("group") is not None for r in records):
        return _take_groups(records, n, seed, stratify)
    rng = random.Random(seed)
    if not stratify:
        chosen = set(rng.sample(range(len(records)), n))
    else:
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            by_label[str(r.get("output"))].append(i)
        counts = {k: len(v) for k, v in by_label.items()}
        if keep_each:
            lo, hi = {k: 0 for k in counts}, {k: c - 1 for k, c in counts.items()}
        else:
            floor = 1 if n >= len(counts) else 0
            lo, hi = {k: min(floor, c) for k, c in counts.items()}, dict(counts)
        chosen = set()
        for label, q in sorted(_quotas(counts, n, lo, hi).items()):
            chosen.update(rng.sample(by_label[label], q))
    taken = [r for i, r in enumerate(records) if i in chosen]
    rest = [r for i, r in enumerate(records) if i not in chosen]
    return taken, rest


def _take_groups(records: list[dict], n: int, seed: int, stratify: bool) -> tuple[list[dict], list[dict]]:
    """Whole groups, shuffled, taken while they fit in `n`; with `stratify`, a group is first taken
    only while its majority label still needs examples, then any group that fits fills the rest."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r["group"] if r.get("group") is not None else f"\0{i}"].append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    need: dict[str, float] = defaultdict(float)
    if stratify:
        for r in records:
            need[str(r.get("output"))] += n / len(records)
    chosen: set[int] = set()
    for pass_ in ("stratified", "fill") if stratify else ("fill",):
        for g in keys:
            members = groups[g]
            if members[0] in chosen or len(chosen) + len(members) > n:
                continue
            if pass_ == "stratified":
                labels = [str(records[i].get("output")) for i in members]
                major = max(set(labels), key=labels.count)
                if need[major] < len(members) / 2:
                    continue
                for lab in labels:
                    need[lab] -= 1
            chosen.update(members)
    taken = [r for i, r in enumerate(records) if i in chosen]
    rest = [r for i, r in enumerate(records) if i not in chosen]
    return taken, rest


def carve(train: list[dict], fraction: float, seed: int, stratify: bool, of: int | None = None
          ) -> tuple[list[dict], list[dict]]:
    """Carve a held-out split of `fraction` of `of` records (default: all of train), keeping at least one
    example of every label in train: returns (train_rest, held_out)."""
    held, rest = take(train, round(fraction * (len(train) if of is None else of)), seed, stratify, keep_each=True)
    return rest, held
