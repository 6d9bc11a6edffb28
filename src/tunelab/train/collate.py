"""Batch tokenised examples for causal-LM training: right-padded rows, or one padding-free packed row.

Examples are `{"input_ids": list[int], "labels": list[int]}` with -100 on the prompt. Batches are meant
for `tunelab.loss.causal_lm_loss` (which picks the keys the model takes); count their tokens with
`token_counts`.

Shared-prefix mode (packing with `share_prefix=True`) is the layout that pays on CPU: when every example
of the batch starts with the same tokens (system prompt + instruction template: 53 of 81 tokens on
Banking77) and none of them is a target, the prefix is computed once and each example's remainder
attends to it through an explicit 4D mask. Loss and gradients are those of the padded batch (tested);
the work per batch drops from B*L to P + B*(L-P) tokens (648 -> 271 for 8 Banking77 examples), measured
2.2-2.5x more tokens/s than padded batches. Plain packing alone measured no faster than padding here
(the masked T x T attention over a long row costs what the padding saved); see benchmarks/README.md.

Packed mode relies on transformers' packed-sequence support: with no `attention_mask` and `position_ids`
that restart at 0 for each example, `masking_utils.find_packed_sequence_indices` turns the causal mask
into a block-diagonal one (sdpa, eager and flex alike), so no token attends across examples.
`tests/test_invariants.py` proves it by comparing per-example losses with the padded batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from tunelab.core.records import IGNORE


def round_up(n: int, multiple: int | None) -> int:
    """`n` rounded up to a multiple of `multiple` (unchanged when it is None or 0)."""
    return n if not multiple else -(-n // multiple) * multiple


# Classification batches (training, the frozen-layer pass, evaluation) are padded to a multiple of this many
# tokens. oneDNN keeps the kernels it built for every distinct tensor shape until the process ends, so each
# batch width seen for the first time costs memory for the rest of the run: on the Banking77 demo (250
# steps, 2 cores) padding to 8 took the peak RSS from 3.20 GB to 1.88 GB, at 726 tokens/s against 700.
PAD_MULTIPLE = 8
def collate_padded(examples: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad examples into `input_ids`, `attention_mask` and `labels` (-100 on pads), all [B, T]."""
    width = round_up(max(len(e["input_ids"]) for e in examples), pad_to_multiple_of)
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
    pad = round_up(len(ids), pad_to_multiple_of) - len(ids)
    ids.extend([pad_id] * pad)
    labels.extend([IGNORE] * pad)
    pos.extend(range(pad))
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(pos), "labels": as_row(labels)}


def shareable_prefix(examples: list[dict]) -> int:
    """Length P of the token prefix common to all examples such that no target lies in 1..P.

    Targets at positions 1..P-1 would be computed once instead of once per example, and the target at P
    is predicted from the prefix's last state, which is shared; both must be unsupervised (-100).
    """
    first = examples[0]["input_ids"]
    p = min(len(e["input_ids"]) for e in examples) - 1
    for e in examples:
        ids, labels = e["input_ids"], e["labels"]
        supervised = next((i for i, t in enumerate(labels) if t != IGNORE and i > 0), len(labels))
        p = min(p, supervised - 1)
        p = next((i for i in range(p) if ids[i] != first[i]), p)
    return max(p, 0)


def collate_shared_prefix(examples: list[dict], pad_id: int, pad_to_multiple_of: int | None = None,
                          min_prefix: int = 8) -> dict[str, torch.Tensor]:
    """One row: the shared prefix once, then each example's remainder; a 4D mask lets each remainder see
    the prefix and itself (causally) only, and `position_ids` continue from the prefix length.

    Falls back to `collate_packed` when fewer than two examples share `min_prefix` tokens. Returns
    `input_ids`, `position_ids`, `labels` [1, T], a boolean `attention_mask` [1, 1, T, T] (True = may
    attend) and `num_tokens`, the non-padding tokens the examples hold (what the batch trains on).
    """
    p = shareable_prefix(examples) if len(examples) > 1 else 0
    if p < min_prefix:
        return collate_packed(examples, pad_id, pad_to_multiple_of)
    ids, labels, pos = list(examples[0]["input_ids"][:p]), [IGNORE] * p, list(range(p))
    segment = [0] * p
    for i, e in enumerate(examples, start=1):
        n = len(e["input_ids"])
        ids.extend(e["input_ids"][p:])
        labels.extend(e["labels"][p:])  # labels[p] is -100 by construction of p
        pos.extend(range(p, n))
        segment.extend([i] * (n - p))
    pad = round_up(len(ids), pad_to_multiple_of) - len(ids)
    ids.extend([pad_id] * pad)
    labels.extend([IGNORE] * pad)
    pos.extend(range(p, p + pad))
    segment.extend([len(examples) + 1] * pad)
    seg = torch.tensor(segment)
    causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    mask = causal & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(pos), "labels": as_row(labels),
            "attention_mask": mask[None, None], "num_tokens": torch.tensor(sum(len(e["input_ids"]) for e in examples))}


def token_counts(batch: dict) -> tuple[int, int]:
    """(non-padding tokens the batch trains on, supervised targets) for any layout of this module."""
    if "num_tokens" in batch:
        total = int(batch["num_tokens"])
    elif batch.get("attention_mask") is not None:
        total = int(batch["attention_mask"].sum())
    else:
        total = int(batch["input_ids"].numel())  # packed: tail padding (pad_to_multiple_of) included
    return total, int((batch["labels"][:, 1:] != IGNORE).sum())


def make_collator(
    pad_id: int, packing: bool, pad_to_multiple_of: int | None = None, share_prefix: bool = False
) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Return a collator: padded [B, T] batches, or (packing=True) one packed [1, T] row per batch,
    with the batch's common prompt prefix computed once when `share_prefix` is also set."""
    fn = (collate_shared_prefix if share_prefix else collate_packed) if packing else collate_padded
    return partial(fn, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
