"""Invariants that keep the training speed-ups honest, on a tiny random Llama (no downloads).

(1) the supervised-only head gives the full-logit loss and gradients; (2) a packed row, and a row whose
shared prompt prefix is computed once, give the same per-example losses (and gradients) as a padded
batch (no cross-example attention). Gradient accumulation (batch 8 x 1 = batch 1 x 8) is tested through
`TunelabTrainer` itself in test_trainer.py. Each speed-up also has a control showing the test would fail
without it.
"""

from __future__ import annotations

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.train.collate import make_collator
from tunelab.train.loss import causal_lm_loss

PAD = 2
VOCAB = 96


def tiny_llama(attn: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama, fp32, eval mode, tied embeddings like SmolLM2; init 0.2 so logits are far from uniform."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, initializer_range=0.2, pad_token_id=PAD, eos_token_id=PAD, bos_token_id=1,
    )
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def make_examples(n: int, seed: int = 0) -> list[dict]:
    """Variable-length examples: a prompt (labels -100) then a supervised completion ending in PAD (=eos)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 17))]
        completion = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 6))] + [PAD]
        out.append({"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion})
    return out


def reference_loss(model, batch, num_items=None) -> torch.Tensor:
    """transformers' own full-logit loss (shifted CE over labels != -100)."""
    kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], **kwargs).loss


# ---------------------------------------------------------------- (1) supervised-only head


@pytest.mark.parametrize("num_items", [None, 50])
def test_supervised_head_matches_full_logits(num_items):
    model = tiny_llama()
    batch = make_collator(PAD, packing=False)(make_examples(6))
    ours = causal_lm_loss(model, batch, num_items)
    ref = reference_loss(model, batch, num_items)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_supervised_head_gradients_through_peft():
    """Same loss and LoRA gradients through a PeftModel wrapper (the path the trainer uses)."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(tiny_llama(), lora)
    batch = make_collator(PAD, packing=False, pad_to_multiple_of=8)(make_examples(5, seed=1))
    grads = []
    for loss_fn in (lambda: causal_lm_loss(model, batch, None), lambda: reference_loss(model, batch)):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    assert len(grads[0][1]) > 0
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_no_supervised_tokens_gives_zero_not_nan():
    model = tiny_llama()
    ex = make_examples(2)
    for e in ex:
        e["labels"] = [-100] * len(e["labels"])
    loss = causal_lm_loss(model, make_collator(PAD, packing=False)(ex), None)
    assert loss.item() == 0.0


# ---------------------------------------------------------------- (2) packing


def test_packed_collator_layout():
    ex = make_examples(3)
    batch = make_collator(PAD, packing=True, pad_to_multiple_of=16)(ex)
    n = sum(len(e["input_ids"]) for e in ex)
    assert batch["input_ids"].shape == batch["position_ids"].shape == batch["labels"].shape
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] % 16 == 0
    assert "attention_mask" not in batch  # transformers detects packing only without a mask
    starts = [0]
    for e in ex:
        starts.append(starts[-1] + len(e["input_ids"]))
    assert all(batch["position_ids"][0, s].item() == 0 for s in starts)
    assert (batch["labels"][0, n:] == -100).all()
    supervised = sum(sum(1 for t in e["labels"][1:] if t != -100) for e in ex)
    assert (batch["labels"] != -100).sum().item() == supervised


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_unpacked_per_example(attn):
    """Each example's loss inside a packed row equals its loss alone; fails if attention leaks across examples."""
    model = tiny_llama(attn)
    examples = make_examples(5, seed=2)
    packed = make_collator(PAD, packing=True, pad_to_multiple_of=8)(examples)
    padded = make_collator(PAD, packing=False)(examples)
    torch.testing.assert_close(causal_lm_loss(model, packed, None), causal_lm_loss(model, padded, None), rtol=1e-5, atol=1e-6)
    start = 0
    for e in examples:
        n = len(e["input_ids"])
        only = dict(packed, labels=torch.full_like(packed["labels"], -100))
        only["labels"][0, start + 1 : start + n] = packed["labels"][0, start + 1 : start + n]
        alone = make_collator(PAD, packing=False)([e])
        torch.testing.assert_close(causal_lm_loss(model, only, None), causal_lm_loss(model, alone, None), rtol=1e-5, atol=1e-6)
        start += n


def test_packing_without_position_ids_would_leak():
    """Control: the same packed row with plain 0..T-1 positions gives different losses (the test above can fail)."""
    model = tiny_llama()
    examples = make_examples(4, seed=3)
    packed = make_collator(PAD, packing=True)(examples)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
    padded = make_collator(PAD, packing=False)(examples)
    assert not torch.allclose(causal_lm_loss(model, leaky, None), causal_lm_loss(model, padded, None), rtol=1e-3)


# ---------------------------------------------------------------- (2b) shared prompt prefix


def shared_prefix_examples(n: int, seed: int = 5, prefix_len: int = 12) -> list[dict]:
    """Examples that start with the same unsupervised prefix (a system prompt + instruction template)."""
    rng = random.Random(seed)
    prefix = [rng.randrange(3, VOCAB) for _ in range(prefix_len)]
    out = []
    for e in make_examples(n, seed):
        out.append({"input_ids": prefix + e["input_ids"], "labels": [-100] * prefix_len + e["labels"]})
    return out


def test_shareable_prefix_stops_before_targets():
    from tunelab.train.collate import shareable_prefix

    ex = shared_prefix_examples(4)
    assert shareable_prefix(ex) >= 12  # the shared prefix, plus any shared prompt tokens after it
    ex[0] = {"input_ids": ex[0]["input_ids"], "labels": [-100] * 5 + ex[0]["input_ids"][5:]}
    assert shareable_prefix(ex) == 4  # the target at position 5 must not be predicted from a shared state


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_equals_unpacked_per_example(attn):
    from tunelab.train.collate import token_counts

    model = tiny_llama(attn)
    examples = shared_prefix_examples(5)
    shared = make_collator(PAD, packing=True, share_prefix=True)(examples)
    padded = make_collator(PAD, packing=False)(examples)
    assert shared["attention_mask"].dim() == 4  # the shared layout was used, not the packed fallback
    assert shared["input_ids"].shape[1] < sum(len(e["input_ids"]) for e in examples) - 3 * 12
    assert token_counts(shared) == token_counts(padded)
    torch.testing.assert_close(causal_lm_loss(model, shared, None), causal_lm_loss(model, padded, None), rtol=1e-5, atol=1e-6)
    supervised = (shared["labels"] != -100).nonzero()[:, 1].tolist()
    for e in examples:  # each example's targets, alone, against the same targets inside the shared row
        alone = make_collator(PAD, packing=False)([e])
        n_sup = sum(1 for t in e["labels"][1:] if t != -100)
        only = dict(shared, labels=torch.full_like(shared["labels"], -100))
        mine, supervised = supervised[:n_sup], supervised[n_sup:]
        only["labels"][0, mine] = shared["labels"][0, mine]
        torch.testing.assert_close(causal_lm_loss(model, only, None), causal_lm_loss(model, alone, None), rtol=1e-5, atol=1e-6)


def test_shared_prefix_gradients_equal_padded():
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(tiny_llama(), lora)
    examples = shared_prefix_examples(6, seed=6)
    grads = []
    for batch in (make_collator(PAD, packing=True, share_prefix=True)(examples), make_collator(PAD, packing=False)(examples)):
        model.zero_grad()
        causal_lm_loss(model, batch, 40).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
