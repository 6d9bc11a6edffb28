"""Prompts for the three systems compared on every test example: fine-tuned, zero-shot, few-shot.

All three share the user's template, so the baselines see exactly the instruction the fine-tuned
model was trained with; the baselines add what a prompt engineer would: the list of allowed labels
(zero-shot) and k solved training examples as earlier chat turns (few-shot). The fixed parts come
first so that every prompt of a system shares one long prefix (see decoding.py).
"""

from __future__ import annotations

import random

from tunelab.render import Renderer


def label_instruction(labels: list[str] | None) -> str:
    if not labels:
        return ""
    return "Answer with exactly one of these labels: " + ", ".join(labels) + ".\n\n"


def pick_shots(train: list[dict], k: int, seed: int, labels: list[str] | None) -> list[dict]:
    """k fixed training examples (seeded); with labels, each shot from a different label where possible."""
    rng = random.Random(seed)
    pool = [r for r in train if r.get("output") is not None or r.get("messages")]
    rng.shuffle(pool)
    if not labels:
        return pool[:k]
    shots, seen = [], set()
    for r in pool:
        if r["output"] not in seen:
            shots.append(r)
            seen.add(r["output"])
        if len(shots) == k:
            break
    return shots


class PromptBuilder:
    """Token ids of the prompt each system sees for a record."""

    def __init__(self, renderer: Renderer, labels: list[str] | None, shots: list[dict]):
        self.r, self.labels, self.shots = renderer, labels, shots

    def finetuned(self, rec: dict) -> list[int]:
        return self.r.prompt_ids(self.r.prompt_messages(rec))

    def zero_shot(self, rec: dict) -> list[int]:
        return self.r.prompt_ids(self._with_instruction(self.r.prompt_messages(rec)))

    def few_shot(self, rec: dict) -> list[int]:
        turns = []
        for shot in self.shots:
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
