"""Leakage: training examples whose prompt also appears, exactly or nearly, in validation or test."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data import dedup
from tunelab.data.problems import DataError, Problem
from tunelab.core.records import prompt_text


@dataclass
class Leak:
    """One train example matching a held-out example."""

    train: dict
    other: dict
    split: str          # "validation" or "test"
    kind: str           # "exact" or "near"
    similarity: float

    def to_dict(self) -> dict:
        return {"train": self.train["id"], "other": self.other["id"], "split": self.split, "kind": self.kind,
                "similarity": round(self.similarity, 3), "train_text": prompt_text(self.train)[:160],
                "other_text": prompt_text(self.other)[:160]}


def find(train: list[dict], held: dict[str, list[dict]], near: bool = True, threshold: float = 0.85,
         num_perm: int = 128, n: int = 5, kind: str = "char") -> list[Leak]:
    """Every (train, held-out) pair sharing a prompt: exact after normalisation, else near (MinHash LSH)."""
    train_texts = [prompt_text(r) for r in train]
    leaks: list[Leak] = []
    for split, others in held.items():
        index = {}
        for j, r in enumerate(others):
            index.setdefault(dedup.normalise(prompt_text(r)), j)
        exact = set()
        for i, t in enumerate(train_texts):
            j = index.get(dedup.normalise(t))
            if j is not None:
                leaks.append(Leak(train[i], others[j], split, "exact", 1.0))
                exact.add(i)
        if near and others:
            rest = [i for i in range(len(train)) if i not in exact]
            seen = set()
            for qi, j, sim in dedup.near_pairs([train_texts[i] for i in rest], [prompt_text(r) for r in others],
                                               threshold, num_perm, n, kind):
                if rest[qi] not in seen:  # one finding per train example is enough to act on
                    seen.add(rest[qi])
                    leaks.append(Leak(train[rest[qi]], others[j], split, "near", sim))
    return leaks


def summary(leaks: list[Leak]) -> dict:
    """Counts by held-out split and kind, e.g. {"test": {"exact": 27, "near": 4}}."""
    out: dict[str, dict[str, int]] = {}
    for lk in leaks:
        out.setdefault(lk.split, {"exact": 0, "near": 0})[lk.kind] += 1
    return out


def apply(policy: str, train: list[dict], leaks: list[Leak]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Enforce the leakage policy: `refuse` raises DataError, `drop` removes the leaked train examples,
    `warn` keeps them (the report shows the findings). Returns (train kept, dropped with reasons)."""
    if not leaks:
        return train, []
    if policy == "refuse":
        counts = "; ".join(f"{s}: {c['exact']} exact, {c['near']} near" for s, c in summary(leaks).items())
        problems = [_problem(lk) for lk in leaks]
        raise DataError(problems, f"leakage: {len({id(lk.train) for lk in leaks})} training example(s) also "
                        f"appear in held-out data ({counts}); set data.leakage: drop to remove them from "
                        f"train, or warn to continue")
    if policy == "warn":
        return train, []
    reason = {id(lk.train): f"leaked_{lk.kind}_{lk.split}" for lk in reversed(leaks)}  # first finding wins
    kept = [r for r in train if id(r) not in reason]
    return kept, [(r, reason[id(r)]) for r in train if id(r) in reason]


def _problem(lk: Leak) -> Problem:
    src = lk.train["source"]
    found = f"{lk.other['id']} ({lk.kind}, similarity {lk.similarity:.2f}): {prompt_text(lk.other)[:60]!r}"
    return Problem(f"leakage_{lk.kind}", src["file"], src.get("line"), None,
                   expected=f"no copy in {lk.split}", found=found)
