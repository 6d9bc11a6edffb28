"""Decoding: constrained output is always a label; shared-prefix batching changes nothing."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny import SENTENCES, tiny_llama, tiny_tokenizer
from tunelab.config import TrainConfig, config_from_dict
from tunelab.evaluate.decoding import Decoder, LabelTrie, common_prefix
from tunelab.models.precision import choose
from tunelab.train.render import Renderer

LABELS = ["card_arrival", "card_linking", "transfer_fee", "top_up_failed", "exchange_rate", "pin_blocked"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tiny_llama(tmp_path_factory.mktemp("m") / "llama", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = tiny_tokenizer()
    cfg = config_from_dict({"data": {"train": "x", "template": "Classify: {text}", "system": "You label banking queries."}})
    r = Renderer(tok, cfg)
    prompts = [r.prompt_ids(r.prompt_messages({"input": {"text": s}})) for s in SENTENCES]
    trie = LabelTrie.build({l: r.completion_ids(r.prompt_messages({"input": {"text": "x"}}), l) for l in LABELS})
    prec = choose(TrainConfig(precision="fp32"))
    return model, tok, r, prompts, trie, prec


def reference_constrained(model, prompt, trie):
    """Naive reference: full forward without cache at every step, argmax over allowed tokens."""
    ids, node = list(prompt), trie.root
    while None not in node:
        logits = model(torch.tensor([ids])).logits[0, -1]
        allowed = [t for t in node if t is not None]
        t = allowed[int(logits[allowed].argmax())]
        ids.append(t)
        node = node[t]
    return node[None]


def test_common_prefix_leaves_a_token():
    assert common_prefix([[1, 2, 3], [1, 2, 4, 5]]) == [1, 2]
    assert common_prefix([[1, 2], [1, 2, 3]]) == [1]


@torch.no_grad()
def test_constrained_decoding_returns_only_labels_and_matches_reference(setup):
    model, tok, r, prompts, trie, prec = setup
    out = Decoder(model, prec, tok.pad_token_id, r.end_ids, batch_size=5).run(prompts, trie)
    assert all(d.label is not None and 0 <= d.label < len(LABELS) for d in out)
    assert [d.label for d in out] == [reference_constrained(model, p, trie) for p in prompts]
    # A random model's preference is arbitrary, yet every answer decodes to one of the labels.
    for d in out:
        assert tok.decode(d.tokens).replace("<|im_end|>", "") == LABELS[d.label]


@torch.no_grad()
def test_batching_and_prefix_sharing_do_not_change_results(setup):
    model, tok, r, prompts, trie, prec = setup
    one = Decoder(model, prec, tok.pad_token_id, r.end_ids, batch_size=1).run(prompts, None, max_new_tokens=6)
    many = Decoder(model, prec, tok.pad_token_id, r.end_ids, batch_size=4).run(prompts, None, max_new_tokens=6)
    assert [d.tokens for d in one] == [d.tokens for d in many]


@torch.no_grad()
def test_free_generation_matches_transformers_generate(setup):
    model, tok, r, prompts, trie, prec = setup
    ours = Decoder(model, prec, tok.pad_token_id, r.end_ids, batch_size=3).run(prompts[:3], None, max_new_tokens=5)
    for p, d in zip(prompts[:3], ours):
        ref = model.generate(torch.tensor([p]), max_new_tokens=5, do_sample=False,
                             eos_token_id=list(r.end_ids), pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        ref = [t for t in ref if t not in r.end_ids and t != tok.pad_token_id]
        assert d.tokens == ref[: len(d.tokens)] and len(d.tokens) == len(ref)


def test_labels_that_tokenize_identically_are_refused():
    with pytest.raises(ValueError, match="tokenize identically"):
        LabelTrie.build({"a": [1, 2], "b": [1, 2]})


@torch.no_grad()
def test_a_long_shared_prefix_cuts_the_batch_to_its_memory_budget(setup, monkeypatch):
    from tunelab.evaluate import decoding

    model, tok, r, prompts, trie, prec = setup
    decoder = Decoder(model, prec, tok.pad_token_id, r.end_ids, batch_size=8)
    prefix_kv = decoder._prefill(common_prefix(prompts))
    row = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in prefix_kv)
    assert decoder.rows_per_batch(prefix_kv) == 8 and decoder.rows_per_batch(None) == 8
    monkeypatch.setattr(decoding, "PREFIX_KV_BUDGET", 3 * row)   # room for three copies of the prefix
    assert decoder.rows_per_batch(prefix_kv) == 3
    monkeypatch.setattr(decoding, "PREFIX_KV_BUDGET", row // 2)  # not even one: one row at a time
    assert decoder.rows_per_batch(prefix_kv) == 1
    cut = decoder.run(prompts, trie)
    monkeypatch.setattr(decoding, "PREFIX_KV_BUDGET", 2**40)
    assert [d.label for d in cut] == [d.label for d in decoder.run(prompts, trie)]
