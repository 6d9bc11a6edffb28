"""Our Trainer itself (`TunelabTrainer` with the tasks' objectives and callbacks), not a copy of its loss:
gradient accumulation for both objectives, token-weighted validation, early stopping with patience, and
each guard's own message. Tiny random models, fp32, CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments

from test_invariants import PAD, make_examples, tiny_llama
from tunelab.core.records import IGNORE
from tunelab.tasks import TASKS
from tunelab.train.callbacks import BestCheckpoint, GradientGuard
from tunelab.train.collate import collate_padded, make_collator
from tunelab.train.loss import CausalLMObjective, causal_lm_loss
from tunelab.train.trainer import DIVERGENCE_CAUSES, ZERO_LOSS_CAUSES, TrainingStopped, TunelabTrainer

LM = TASKS["sft"].objective
CLS = TASKS["classification"].objective


def _args(tmp_path, name: str, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                max_steps=1, learning_rate=1e-3, max_grad_norm=0.0, use_cpu=True, report_to=[],
                save_strategy="no", logging_strategy="no", remove_unused_columns=False,
                train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0, disable_tqdm=True)
    return TrainingArguments(**{**base, **kw})


class _GradSnapshot(TrainerCallback):
    """Copies the accumulated gradients just before the (only) optimizer step."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}


class _PerMicroBatch(CausalLMObjective):
    """A wrong objective for the control: each micro-batch normalised by its own supervised count."""

    def loss(self, model, inputs, num_items_in_batch=None):
        return causal_lm_loss(model, inputs, None)


def _lm_grads(tmp_path, batch_size: int, accum: int, objective=LM, packing=False, share_prefix=False) -> dict:
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                    init_lora_weights=False))
    snap = _GradSnapshot(model)
    name = f"lm-b{batch_size}a{accum}{packing}{share_prefix}{type(objective).__name__}"
    trainer = TunelabTrainer(model=model, args=_args(tmp_path, name, per_device_train_batch_size=batch_size,
                                                     gradient_accumulation_steps=accum),
                             train_dataset=make_examples(8, seed=4), objective=objective, callbacks=[snap],
                             data_collator=make_collator(PAD, packing=packing, share_prefix=share_prefix))
    trainer.train()
    return snap.grads


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("packing,share_prefix", [(False, False), (True, False), (True, True)])
def test_lm_batch8_equals_batch1_accum8(tmp_path, packing, share_prefix):
    _assert_same(_lm_grads(tmp_path, 8, 1, packing=packing), _lm_grads(tmp_path, 1, 8, packing=packing))


def test_per_microbatch_normalisation_would_differ(tmp_path):
    """Control: normalising each micro-batch by its own count changes the accumulated gradients."""
    big, naive = _lm_grads(tmp_path, 8, 1), _lm_grads(tmp_path, 1, 8, objective=_PerMicroBatch())
    assert any(not torch.allclose(naive[n], big[n], rtol=1e-2, atol=1e-3) for n in big)


def _tiny_bert_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     pad_token_id=PAD, num_labels=3)
    return BertForSequenceClassification(cfg)


def _cls_examples(n: int = 8) -> list[dict]:
    return [{"input_ids": e["input_ids"], "labels": i % 3} for i, e in enumerate(make_examples(n, seed=7))]


def _cls_collate(examples: list[dict]) -> dict:
    batch = collate_padded([{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in examples], PAD)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": torch.tensor([e["labels"] for e in examples])}


def _cls_grads(tmp_path, batch_size: int, accum: int) -> dict:
    model = _tiny_bert_classifier()
    snap = _GradSnapshot(model)
    trainer = TunelabTrainer(model=model, args=_args(tmp_path, f"cls-b{batch_size}a{accum}",
                                                     per_device_train_batch_size=batch_size,
                                                     gradient_accumulation_steps=accum),
                             train_dataset=_cls_examples(), objective=CLS, callbacks=[snap], data_collator=_cls_collate)
    trainer.train()
    return snap.grads


def test_classification_batch8_equals_batch1_accum8(tmp_path):
    """A classifier has no loss kwargs, so the stock Trainer would not count the window's items: ours does."""
    _assert_same(_cls_grads(tmp_path, 8, 1), _cls_grads(tmp_path, 1, 8))


# ---------------------------------------------------------------- validation


def test_validation_loss_is_weighted_by_supervised_tokens(tmp_path):
    model = tiny_llama()
    examples = make_examples(7, seed=11)   # batches of 3, 3, 1 with different supervised counts
    trainer = TunelabTrainer(model=model, args=_args(tmp_path, "val", per_device_eval_batch_size=3),
                             eval_dataset=examples, objective=LM, data_collator=make_collator(PAD, packing=False))
    got = trainer.evaluate()["eval_loss"]
    total = n = 0.0
    means = []
    with torch.no_grad():
        for start in range(0, 7, 3):
            batch = collate_padded(examples[start:start + 3], PAD)
            k = int((batch["labels"][:, 1:] != IGNORE).sum())
            loss = float(causal_lm_loss(model, batch, None))
            total, n = total + loss * k, n + k
            means.append(loss)
    assert got == pytest.approx(total / n, rel=1e-5)
    assert got != pytest.approx(sum(means) / len(means), rel=1e-3)   # control: the stock mean of batch means


def test_classification_validation_reports_accuracy(tmp_path):
    trainer = TunelabTrainer(model=_tiny_bert_classifier(), args=_args(tmp_path, "clsval", per_device_eval_batch_size=3),
                             eval_dataset=_cls_examples(), objective=CLS, data_collator=_cls_collate)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])


# ---------------------------------------------------------------- early stopping


def test_early_stopping_after_patience_validations_keeps_the_best(tmp_path):
    """lr 0: the validation loss never improves after the first validation, so training stops after
    `patience` more validations and best/ holds the first one."""
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    from tiny import tiny_tokenizer

    best = BestCheckpoint(tmp_path / "best", tiny_tokenizer(), patience=2, min_delta=0.0)
    trainer = TunelabTrainer(model=model, args=_args(tmp_path, "es", max_steps=50, learning_rate=0.0,
                                                     eval_strategy="steps", eval_steps=2, per_device_train_batch_size=2),
                             train_dataset=make_examples(8), eval_dataset=make_examples(4, seed=9), objective=LM,
                             data_collator=make_collator(PAD, packing=False), callbacks=[best])
    trainer.train()
    assert trainer.state.global_step == 6                  # validations at 2 (best), 4 and 6 (patience 2)
    assert best.best_step == 2 and (tmp_path / "best" / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- guards, each with its own message


def test_nan_loss_guard_message(tmp_path):
    class NanObjective(CausalLMObjective):
        def loss(self, model, inputs, num_items_in_batch=None):
            return super().loss(model, inputs, num_items_in_batch) * float("nan")

    trainer = TunelabTrainer(model=tiny_llama().train(), args=_args(tmp_path, "nan"), train_dataset=make_examples(8),
                             objective=NanObjective(), data_collator=make_collator(PAD, packing=False))
    with pytest.raises(TrainingStopped) as e:
        trainer.train()
    assert str(e.value) == f"step 1: the training loss is nan; stopping.\n{DIVERGENCE_CAUSES}"


def test_zero_loss_guard_message(tmp_path):
    examples = [{**e, "labels": [IGNORE] * len(e["labels"])} for e in make_examples(8)]   # nothing supervised
    trainer = TunelabTrainer(model=tiny_llama().train(), args=_args(tmp_path, "zero", max_steps=10,
                                                                    per_device_train_batch_size=1),
                             train_dataset=examples, objective=LM, zero_loss_steps=3,
                             data_collator=make_collator(PAD, packing=False))
    with pytest.raises(TrainingStopped) as e:
        trainer.train()
    assert str(e.value) == f"step 3: the loss has been exactly 0 for 3 steps; stopping.\n{ZERO_LOSS_CAUSES}"


def test_gradient_guard_message(tmp_path):
    """A finite loss with a NaN gradient is stopped before the optimizer step reaches the weights."""
    model = tiny_llama().train()
    model.model.norm.weight.register_hook(lambda g: g * float("nan"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = TunelabTrainer(model=model, args=_args(tmp_path, "grad"), train_dataset=make_examples(8),
                             objective=LM, data_collator=make_collator(PAD, packing=False),
                             callbacks=[GradientGuard(model)])
    with pytest.raises(TrainingStopped) as e:
        trainer.train()
    assert str(e.value) == (f"step 1: a gradient is NaN or infinite; stopping before it reaches the weights."
                            f"\n{DIVERGENCE_CAUSES}")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
