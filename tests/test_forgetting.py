"""The forgetting probe on a tiny random Llama: perplexity, KL against a base, PEFT adapter toggling."""

from __future__ import annotations

import copy
import math
from importlib import resources

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.tiny import tiny_llama
from tunelab.evaluate import forgetting as F

TEXT = ["Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
        "nothing to do: once or twice she had peeped into the book her sister was reading."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_llama(tmp_path_factory.mktemp("forgetting") / "llama")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_bundled_text_is_general_english_with_its_sources():
    (text,) = F.probe_texts()
    assert 3000 <= len(text.split()) <= 5000
    assert "Alice was beginning to get very tired" in text and "Four score and seven years ago" in text
    sources = resources.files("tunelab").joinpath("resources", "SOURCES.md").read_text(encoding="utf-8")
    assert "general_english.txt" in sources and "public domain" in sources


def test_token_windows_respect_the_budget(tiny):
    _, tok = tiny
    windows = F.token_windows(tok, F.probe_texts(), max_tokens=100, seq_len=32)
    assert windows.shape == (4, 32)
    assert int((windows >= 0).sum()) == 100          # 3 full rows + 4 tokens, the rest is padding
    assert (windows[3, 4:] == -1).all()


def test_perplexity_equals_the_model_loss_and_ignores_padding(tiny):
    model, tok = tiny
    ids = torch.tensor([tok(TEXT[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert F.perplexity(model, tok, TEXT, max_tokens=10_000, seq_len=ids.shape[1]) == pytest.approx(math.exp(loss), rel=1e-5)
    # Several windows, the last one padded: batching must not change the number.
    one = F.perplexity(model, tok, TEXT, max_tokens=10_000, seq_len=7, batch_size=1)
    many = F.perplexity(model, tok, TEXT, max_tokens=10_000, seq_len=7, batch_size=3)
    assert one == pytest.approx(many, rel=1e-5)


def test_peft_probe_uses_the_disabled_adapter_as_base(tiny):
    model, tok = tiny
    base_ppl = F.perplexity(model, tok, max_tokens=256, seq_len=64)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    fresh = F.forgetting_probe(peft, tok, max_tokens=256, seq_len=64)
    # LoRA starts with B = 0: the tuned model is the base model, so nothing is forgotten.
    assert fresh["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert fresh["perplexity"] == pytest.approx(base_ppl, rel=1e-5) == fresh["perplexity_base"]
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    moved = F.forgetting_probe(peft, tok, max_tokens=256, seq_len=64)
    assert moved["kl_mean"] > 1e-3 and moved["tokens"] == 4 * 63  # each window scores all but its first token
    assert moved["perplexity_base"] == pytest.approx(base_ppl, rel=1e-5)
    assert moved["perplexity_change"] == pytest.approx(moved["perplexity"] / base_ppl - 1)
    assert peft.training is True  # the probe restores the caller's train/eval mode
    # The same figures with a merged copy against a separate base model object.
    merged = copy.deepcopy(peft).merge_and_unload()
    assert F.mean_kl(merged, tok, max_tokens=256, seq_len=64, base=model) == pytest.approx(moved["kl_mean"], rel=1e-4)


def test_kl_is_base_to_tuned_averaged_over_scored_tokens(tiny):
    base, tok = tiny
    tuned = copy.deepcopy(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([tok(TEXT[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        log_p = torch.log_softmax(base(input_ids=ids).logits[0, :-1], -1)    # base
        log_q = torch.log_softmax(tuned(input_ids=ids).logits[0, :-1], -1)   # tuned
    expected = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()        # KL(base || tuned)
    reverse = (log_q.exp() * (log_q - log_p)).sum(-1).mean().item()
    got = F.mean_kl(tuned, tok, TEXT, max_tokens=10_000, seq_len=ids.shape[1], base=base)
    assert got == pytest.approx(expected, rel=1e-4) and got != pytest.approx(reverse, rel=1e-3)


def test_no_base_reports_perplexity_only(tiny):
    model, tok = tiny
    result = F.forgetting_probe(model, tok, TEXT, max_tokens=64)
    assert result["perplexity"] > 1 and result["kl_mean"] is None and result["perplexity_base"] is None
    with pytest.raises(ValueError, match="needs a base model"):
        F.mean_kl(model, tok, TEXT)


def test_bf16_autocast_stays_close_to_fp32(tiny):
    model, tok = tiny
    fp32 = F.perplexity(model, tok, TEXT)
    bf16 = F.perplexity(model, tok, TEXT, autocast_dtype=torch.bfloat16)
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_check_fails_only_above_the_bound():
    result = {"perplexity": 13.0, "perplexity_base": 10.0, "perplexity_change": 0.3}
    assert F.check(result, None) is None
    assert F.check(result, 0.5) is None
    assert "rose +30.0%" in F.check(result, 0.2)
    assert F.check({"perplexity_change": None}, 0.1) is None
