"""Prompts for the three systems compared on every test example: fine-tuned, zero-shot, few-shot.

All three share the user's template, so the baselines see exactly the instruction the fine-tuned
model was trained with; the baselines add what a prompt engineer would: the list of allowed labels
(zero-shot) and k solved training examples as earlier chat turns (few-shot). The fixed parts come
first so that every prompt of a system shares one long prefix (see decoding.py).
"""

from __future__ import annotations

import random

from tunelab.core.records import prompt_text
from tunelab.train.render import Renderer


def label_instruction(labels: list[str] | None) -> str:
    if not labels:
        return ""
    return "Answer with exactly one of these labels: " + ", ".join(labels) + ".\n\n"


class ShotPicker:
    """The k training examples shown to the few-shot baseline.

    `fixed`: one seeded sample for every test example (with labels: each shot a different label where
    possible), so all few-shot prompts share one prefix. `similar`: the k training examples closest to
    the test input by TF-IDF cosine similarity, most similar last (nearest the question).
    """

    def __init__(self, train: list[dict], k: int, seed: int, labels: list[str] | None, selection: str = "fixed"):
        self.pool = [r for r in train if r.get("output") is not None or r.get("messages")]
        self.k, self.selection = k, selection
        self.fixed = self._fixed(seed, labels)
        self._index = None

    def _fixed(self, seed: int, labels) -> list[dict]:
        pool = list(self.pool)
        random.Random(seed).shuffle(pool)
        if not labels:
            return pool[: self.k]
        shots, seen = [], set()
        for r in pool:
            if r["output"] not in seen:
                shots.append(r)
                seen.add(r["output"])
            if len(shots) == self.k:
                break
        return shots

    def for_record(self, rec: dict) -> list[dict]:
        if self.selection == "fixed":
            return self.fixed
        from sklearn.feature_extraction.text import TfidfVectorizer

        if self._index is None:
            vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
            self._index = (vec, vec.fit_transform([prompt_text(r) for r in self.pool]))
        vec, matrix = self._index
        sims = (matrix @ vec.transform([prompt_text(rec)]).T).toarray().ravel()
        best = sims.argsort()[::-1][: self.k]
        return [self.pool[i] for i in reversed(best)]


class PromptBuilder:
    """Token ids of the prompt each system sees for a record."""

    def __init__(self, renderer: Renderer, labels: list[str] | None, shots: ShotPicker):
        self.r, self.labels, self.shots = renderer, labels, shots

    def finetuned(self, rec: dict) -> list[int]:
        return self.r.prompt_ids(self.r.prompt_messages(rec))

    def zero_shot(self, rec: dict) -> list[int]:
        return self.r.prompt_ids(self._with_instruction(self.r.prompt_messages(rec)))

    def few_shot(self, rec: dict) -> list[int]:
        turns = []
        for shot in self.shots.for_record(rec):
            turns += self.r.prompt_messages(shot)[-1:]
            turns.append({"role": "assistant", "content": self.r.completion_text(shot) or ""})
        msgs = self.r.prompt_messages(rec)
        head, last = msgs[:-1], msgs[-1]
        return self.r.prompt_ids(self._with_instruction(head + turns + [last]))

    def _with_instruction(self, msgs: list[dict]) -> list[dict]:
        """Put the label list at the start of the first user turn."""
        text = label_instruction(self.labels)
        if not text:
            return msgs
        out, placed = [], False
        for m in msgs:
            if m["role"] == "user" and not placed:
                m, placed = {**m, "content": text + m["content"]}, True
            out.append(m)
        return out
