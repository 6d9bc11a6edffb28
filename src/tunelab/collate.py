"""Batch tokenised examples for causal-LM training: right-padded rows, or one padding-free packed row.

Examples are `{"input_ids": list[int], "labels": list[int]}` with -100 on the prompt. The batch keys are
what `tunelab.loss.causal_lm_loss` and a transformers causal LM take.

Packed mode relies on transformers' packed-sequence support: with no `attention_mask` and `position_ids`
that restart at 0 for each example, `masking_utils.find_packed_sequence_indices` turns the causal mask
into a block-diagonal one (sdpa, eager and flex alike), so no token attends across examples.
`tests/test_invariants.py` proves it by comparing per-example losses with the padded batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

IGNORE = -100


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def collate_padded(examples: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad examples into `input_ids`, `attention_mask` and `labels` (-100 on pads), all [B, T]."""
    width = _round_up(max(len(e["input_ids"]) for e in examples), pad_to_multiple_of)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.as_tensor(e["input_ids"])
        labels[row, :n] = torch.as_tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_packed(examples: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Concatenate examples into one row [1, T] with `position_ids` restarting at 0 per example.

    The first label of every example is set to -100: in a padded row it is never a target (the loss
    shifts by one), and in a packed row it would otherwise be predicted from the previous example's last
    token. Tail padding (for `pad_to_multiple_of`) forms its own position run, so it is a separate,
    unsupervised "sequence" that nothing else attends to. No `attention_mask` is returned on purpose:
    transformers only detects packing from `position_ids` when the mask is None.
    """
    ids, labels, pos = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        ids.extend(e["input_ids"])
        labels.append(IGNORE)
        labels.extend(e["labels"][1:])
        pos.extend(range(n))
    pad = _round_up(len(ids), pad_to_multiple_of) - len(ids)
    ids.extend([pad_id] * pad)
    labels.extend([IGNORE] * pad)
    pos.extend(range(pad))
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(pos), "labels": as_row(labels)}


def make_collator(
    pad_id: int, packing: bool, pad_to_multiple_of: int | None = None
) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Return a collator: padded [B, T] batches, or (packing=True) one packed [1, T] row per batch."""
    fn = collate_packed if packing else collate_padded
    return partial(fn, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
