"""FLOP accounting for a LoRA training step (the formula is stated in train_throughput.py's docstring)."""

from __future__ import annotations

import torch

from tunelab.train.collate import token_counts


def flop_terms(cfg, r: int) -> tuple[float, float, float]:
    """(FLOPs per computed token for the linear layers, per attended (query, key) pair, per supervised token)."""
    d, layers, heads, hd = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    kv, ff = cfg.num_key_value_heads * hd, cfg.intermediate_size
    shapes = [(d, heads * hd), (d, kv), (d, kv), (heads * hd, d), (d, ff), (d, ff), (ff, d)]
    n_lin = layers * sum(i * o for i, o in shapes)        # frozen: fwd 2N + grads to activations 2N
    n_lora = layers * sum(r * (i + o) for i, o in shapes)  # trained: fwd 2N + input grads 2N + weight grads 2N
    # QK^T and AV: 2 matmuls x 2 FLOPs per MAC forward, twice that backward -> 12 per head dim per pair
    return 4 * n_lin + 6 * n_lora, 12 * layers * heads * hd, 4 * cfg.vocab_size * d


def model_flops(examples: list[dict], cfg, r: int) -> float:
    """FLOPs of training on `examples` one by one: each token computed once per example, causal attention."""
    tok, pair, head = flop_terms(cfg, r)
    total = 0.0
    for e in examples:
        n = len(e["input_ids"])
        sup = sum(1 for t in e["labels"][1:] if t != -100)
        total += n * tok + pair * n * (n + 1) / 2 + head * sup
    return total


def layout_counts(batch: dict) -> dict:
    """Tokens trained on, supervised targets, tokens actually computed and attended pairs of one batch."""
    trained, supervised = token_counts(batch)
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 4:  # shared-prefix row: the mask lists every attended pair
        computed, pairs = batch["input_ids"].numel(), int(mask.sum())
    elif mask is not None:  # padded rows: count each row's real tokens (padding is waste, not credited)
        lengths = mask.sum(-1)
        computed, pairs = int(lengths.sum()), int((lengths * (lengths + 1) // 2).sum())
    else:  # packed row: segments start where position_ids restart at 0
        pos = batch["position_ids"][0]
        starts = torch.nonzero(pos == 0).flatten().tolist() + [pos.numel()]
        lengths = torch.tensor([b - a for a, b in zip(starts, starts[1:])])
        computed, pairs = pos.numel(), int((lengths * (lengths + 1) // 2).sum())
    return {"tokens": trained, "supervised": supervised, "computed": computed, "pairs": pairs}


def executed_flops(counts: list[dict], cfg, r: int) -> float:
    """FLOPs the batches' layout needs (shared prefixes computed once; padding not credited)."""
    tok, pair, head = flop_terms(cfg, r)
    return sum(c["computed"] * tok + c["pairs"] * pair + c["supervised"] * head for c in counts)
