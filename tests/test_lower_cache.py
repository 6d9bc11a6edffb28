"""method.freeze_below caches the frozen layers' output once; model.layers keeps the first M layers.

The cached path must be the same computation as the uncached one: same logits, same loss, same
gradients for every trained parameter, on a tiny random Llama classifier with LoRA on the upper layers.
"""

from __future__ import annotations

import pytest
import torch

from tiny import INTENTS, LABELS, tiny_llama
from tunelab.config import MethodConfig, ModelConfig
from tunelab.core.errors import UserError
from tunelab.methods import MethodError, apply_method, check_method
from tunelab.models import load_model, load_tokenizer
from tunelab.models.precision import Precision
from tunelab.train.loss import ClassificationObjective
from tunelab.train.lower_cache import add_lower_hidden, cached_collator, cached_logits

FP32 = Precision("cpu", False, False, "fp32 (test)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama4") / "m", num_labels=len(LABELS), layers=4)


def _model(folder, layers=3, below=1, pooling="last"):
    model = load_model(ModelConfig(name=str(folder), layers=layers, pooling=pooling), "classification", labels=LABELS)
    torch.manual_seed(1)
    model = apply_method(model, MethodConfig(name="lora", r=4, alpha=8, freeze_below=below), "classification")
    for name, p in model.named_parameters():   # LoRA B starts at zero: make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _features(tok):
    texts = [t for ts in INTENTS.values() for t in ts][:8]
    return [{"input_ids": tok(t)["input_ids"], "labels": i % len(LABELS)} for i, t in enumerate(texts)]


def test_model_layers_keeps_the_first_layers(folder):
    model = load_model(ModelConfig(name=str(folder), layers=3), "classification", labels=LABELS)
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    with pytest.raises(UserError, match="model.layers=9 but the model has 4 layers"):
        load_model(ModelConfig(name=str(folder), layers=9), "classification", labels=LABELS)


def test_lora_goes_on_the_layers_above_freeze_below_only(folder):
    model = _model(folder, layers=3, below=2)
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"2"}


def test_freeze_below_is_refused_where_it_cannot_apply(folder):
    with pytest.raises(MethodError, match="freeze_below works with method.name lora"):
        check_method(MethodConfig(name="full", freeze_below=1), "classification")
    model = load_model(ModelConfig(name=str(folder), layers=2), "classification", labels=LABELS)
    with pytest.raises(MethodError, match="freeze_below=2 but the model has 2 layers"):
        apply_method(model, MethodConfig(name="lora", freeze_below=2), "classification")


@pytest.mark.parametrize("below,pooling", [(1, "last"), (2, "last"), (1, "mean")])
def test_cached_path_gives_the_same_logits_loss_and_gradients(folder, below, pooling):
    tok = load_tokenizer(ModelConfig(name=str(folder)))
    model = _model(folder, layers=3, below=below, pooling=pooling)
    features = _features(tok)
    cached = cached_collator(tok.pad_token_id)(add_lower_hidden(model, features, below, tok.pad_token_id, FP32,
                                                                 batch_size=3))
    plain = {k: cached[k] for k in ("input_ids", "attention_mask", "labels")}
    objective = ClassificationObjective()

    def loss_and_grads(batch):
        model.zero_grad()
        loss = objective.loss(model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    with torch.no_grad():
        torch.testing.assert_close(cached_logits(model, cached), model(**{k: plain[k] for k in ("input_ids", "attention_mask")}).logits,
                                   rtol=1e-5, atol=1e-6)
    loss_c, grads_c = loss_and_grads(cached)
    loss_p, grads_p = loss_and_grads(plain)
    torch.testing.assert_close(loss_c, loss_p, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_p.keys() and any("lora" in n for n in grads_c)
    for name in grads_c:
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)
    # the lower layers really are skipped: the module names are restored after each call
    assert len(model.base_model.model.model.layers) == 3


def test_mean_pooling_reads_the_mean_of_the_real_tokens(folder):
    tok = load_tokenizer(ModelConfig(name=str(folder)))
    model = _model(folder, layers=3, below=1, pooling="mean").eval()
    texts = ["my card has not arrived", "pin"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        inner = model.base_model.model              # PEFT -> LlamaForSequenceClassification
        for i, text in enumerate(texts):           # alone, unpadded: mean of the final states, then the head
            ids = tok(text, return_tensors="pt")["input_ids"]
            states = inner.model.norm(_final_states(inner, ids))
            expected = inner.score(states.mean(1))[0]
            torch.testing.assert_close(logits[i], expected, rtol=1e-3, atol=1e-4)   # last-token pooling differs by ~0.1
    with pytest.raises(UserError, match="model.pooling=mean"):
        from tiny import tiny_bert_classifier
        load_model(ModelConfig(name=str(tiny_bert_classifier(folder.parent / "bert")), pooling="mean"),
                   "classification", labels=LABELS)


def _final_states(inner, ids):
    """The decoder's per-token states before the final norm, with the pooling hook switched off."""
    from tunelab.models.load import POOLING_OFF

    setattr(inner.model, POOLING_OFF, True)
    try:
        return inner.model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    finally:
        setattr(inner.model, POOLING_OFF, False)
