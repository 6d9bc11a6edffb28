"""Every fine-tuning method on tiny models: what should train trains, everything else stays bit-identical."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer, TrainerCallback,
                          TrainingArguments)
from transformers import logging as hf_logging

from tiny import HIDDEN, LAYERS, tiny_bert_classifier, tiny_examples, tiny_llama, tiny_tokenizer
from tunelab.config import MethodConfig, TrainConfig
from tunelab.methods import (METHODS, QLORA_NO_CUDA, MethodError, apply_method, describe_trainable, load_kwargs,
                             method_callbacks, param_groups)

hf_logging.set_verbosity_error()

R, ALPHA, ADAPTER = 4, 8.0, 8
ARCH_TASK = {"llama": "sft", "bert": "classification", "llama_cls": "classification"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"llama": tiny_llama(root / "llama"), "bert": tiny_bert_classifier(root / "bert"),
            "llama_cls": tiny_llama(root / "llama_cls", num_labels=3)}


def load(folders, arch: str) -> nn.Module:
    cls = AutoModelForCausalLM if arch == "llama" else AutoModelForSequenceClassification
    return cls.from_pretrained(folders[arch])


# ---------------------------------------------------------------- the formulas, written independently


def _linears(base: nn.Module) -> dict[str, nn.Linear]:
    # all-linear adapts every Linear except the output layer (lm_head / classifier / score).
    return {n: m for n, m in base.named_modules()
            if isinstance(m, nn.Linear) and n.split(".")[-1] not in ("lm_head", "classifier", "score")}


def _head_names(arch: str, names: list[str]) -> set[str]:
    prefixes = {"llama": ("model.norm.", "lm_head."), "bert": ("bert.pooler.", "classifier."),
                "llama_cls": ("model.norm.", "score.")}[arch]
    return {n for n in names if n.startswith(prefixes)}


def _task_head_size(base: nn.Module, arch: str) -> int:
    head = {"llama": None, "bert": "classifier", "llama_cls": "score"}[arch]
    return sum(p.numel() for p in getattr(base, head).parameters()) if head else 0


def expected(base: nn.Module, arch: str, cfg: MethodConfig) -> tuple[int, callable]:
    """(trainable count by the method's formula, predicate on names of the method-applied model)."""
    names = [n for n, _ in base.named_parameters()]
    sizes = dict((n, p.numel()) for n, p in base.named_parameters())
    head = _task_head_size(base, arch)
    saved = lambda n: "modules_to_save" in n  # PEFT's trainable copy of the classification head
    if cfg.name == "full":
        return sum(sizes.values()), lambda n: True
    if cfg.name in ("freeze", "gradual_unfreeze"):
        layer = ".layers." if arch.startswith("llama") else ".layer."
        top = {f"{layer}{i}." for i in range(LAYERS - (cfg.trainable_layers or 0), LAYERS)}
        chosen = _head_names(arch, names) | {n for n in names if any(t in n for t in top)}
        return sum(sizes[n] for n in chosen), lambda n: n in chosen
    if cfg.name in ("lora", "rslora", "dora"):
        lin = _linears(base).values()
        count = sum(R * (m.in_features + m.out_features) for m in lin) + head
        count += sum(m.out_features for m in lin) if cfg.name == "dora" else 0
        return count, lambda n: "lora_" in n or saved(n)
    if cfg.name == "adapter":
        places = 2 if cfg.adapter_kind == "houlsby" else 1
        return LAYERS * places * (2 * HIDDEN * ADAPTER + ADAPTER + HIDDEN) + head, \
            lambda n: ".bottleneck_adapter." in n or n.startswith(("classifier.", "score."))
    if cfg.name == "ia3":
        # PEFT's (IA)^3 defaults: keys and values scaled on their outputs, the MLP output on its input.
        out_t, in_t = (("k_proj", "v_proj"), ("down_proj",)) if arch.startswith("llama") \
            else (("key", "value"), ("output.dense",))
        mods = dict(base.named_modules())
        count = sum(m.out_features for n, m in mods.items() if n.endswith(out_t)) + \
            sum(m.in_features for n, m in mods.items() if n.endswith(in_t)) + head
        return count, lambda n: "ia3_l" in n or saved(n)
    if cfg.name == "prompt_tuning":
        return cfg.num_virtual_tokens * HIDDEN, lambda n: "prompt_encoder" in n
    raise AssertionError(cfg.name)


CASES = [
    ("full", "llama", {}), ("full", "bert", {}),
    ("freeze", "llama", {}), ("freeze", "bert", {}), ("freeze", "llama_cls", {}),
    ("freeze", "llama", {"trainable_layers": 1}), ("freeze", "bert", {"trainable_layers": 1}),
    ("gradual_unfreeze", "llama", {}), ("gradual_unfreeze", "bert", {}),
    ("lora", "llama", {}), ("lora", "bert", {}), ("lora", "llama_cls", {}),
    ("dora", "llama", {}), ("dora", "bert", {}),
    ("rslora", "llama", {}), ("rslora", "bert", {}),
    ("adapter", "llama", {}), ("adapter", "bert", {}), ("adapter", "llama", {"adapter_kind": "houlsby"}),
    ("adapter", "bert", {"adapter_kind": "houlsby"}), ("adapter", "llama_cls", {}),
    ("ia3", "llama", {}), ("ia3", "bert", {}),
    ("prompt_tuning", "llama", {"num_virtual_tokens": 5}),
]


def test_cases_cover_every_method_but_qlora():
    assert {c[0] for c in CASES} == set(METHODS) - {"qlora"}


def _batch(folders, arch: str) -> dict:
    feats = tiny_examples(tiny_tokenizer(), ARCH_TASK[arch], n=4)
    return {k: torch.tensor([f[k] for f in feats]) for k in feats[0]}


@pytest.mark.parametrize("name,arch,extra", CASES, ids=[f"{c[0]}-{c[1]}-{'-'.join(map(str, c[2].values()))}"
                                                         for c in CASES])
def test_method_trains_exactly_what_it_should(folders, name, arch, extra):
    cfg = MethodConfig(name=name, r=R, alpha=ALPHA, adapter_size=ADAPTER, **extra)
    base = load(folders, arch)
    count, meant = expected(base, arch, cfg)
    model = apply_method(base, cfg, ARCH_TASK[arch])

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if meant(n)}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert describe_trainable(model, cfg, TrainConfig())["trainable"] == count

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Weight decay on: a frozen parameter that wrongly sat in the optimizer with a gradient would move.
    opt = torch.optim.AdamW(param_groups(model, cfg, lr=1e-2, weight_decay=0.1))
    batch = _batch(folders, arch)
    model.train()
    for _ in range(3):  # LoRA B / adapter `up` start at 0, so A / `down` first move on step 2
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} should have trained"
        else:
            assert torch.equal(p, before[n]), f"{n} should be bit-identical"


# ---------------------------------------------------------------- gradual unfreezing through a real Trainer


class _Recorder(TrainerCallback):
    """Per optimizer step: how many of the unfreezing groups are trainable, and which parameters moved."""

    def __init__(self, groups):
        self.groups, self.open, self.moved, self._snap = groups, [], [], None

    def on_step_begin(self, args, state, control, model=None, **kw):
        self.open.append(sum(all(p.requires_grad for _, p in g) for g in self.groups))
        self._snap = [[p.detach().clone() for _, p in g] for g in self.groups]

    def on_step_end(self, args, state, control, **kw):
        self.moved.append([any(not torch.equal(p, s) for (_, p), s in zip(g, snap))
                           for g, snap in zip(self.groups, self._snap)])


def _train_gradual(folders, tmp_path, arch: str, unit: str, every: int, **args) -> _Recorder:
    cfg = MethodConfig(name="gradual_unfreeze", unfreeze_every=every, unfreeze_unit=unit)
    model = apply_method(load(folders, arch), cfg, ARCH_TASK[arch])
    callbacks = method_callbacks(model, cfg)
    recorder = _Recorder(callbacks[0].groups)
    optimizer = torch.optim.AdamW(param_groups(model, cfg, lr=1e-2, weight_decay=0.1))
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                              save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
                              lr_scheduler_type="constant", **args)
    trainer = Trainer(model=model, args=targs, train_dataset=tiny_examples(tiny_tokenizer(), ARCH_TASK[arch], n=8),
                      optimizers=(optimizer, None), callbacks=[*callbacks, recorder])
    trainer.train()
    return recorder


def _check_schedule(rec: _Recorder, want_open: list[int]) -> None:
    assert rec.open == want_open
    for n_open, moved in zip(rec.open, rec.moved):
        # the open groups (head first, then top-down) moved this step; the closed ones did not
        assert moved == [i < n_open for i in range(len(moved))]


def test_gradual_unfreeze_by_steps_through_trainer(folders, tmp_path):
    rec = _train_gradual(folders, tmp_path, "llama", "steps", every=2, max_steps=9)
    # groups: head, layer 1, layer 0, embeddings -> one more every 2 steps, capped at 4
    _check_schedule(rec, [1, 1, 2, 2, 3, 3, 4, 4, 4])


def test_gradual_unfreeze_by_epochs_through_trainer(folders, tmp_path):
    rec = _train_gradual(folders, tmp_path, "bert", "epochs", every=1, num_train_epochs=3)
    _check_schedule(rec, [1, 1, 2, 2, 3, 3])  # 8 examples / batch 4 = 2 steps per epoch


def test_gradual_unfreeze_refuses_optimizer_without_frozen_params(folders, tmp_path):
    cfg = MethodConfig(name="gradual_unfreeze", unfreeze_every=1)
    model = apply_method(load(folders, "llama"), cfg, "sft")
    targs = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True,
                              save_strategy="no", disable_tqdm=True)
    # Trainer's own optimizer only holds requires_grad params: later groups could never train.
    trainer = Trainer(model=model, args=targs, train_dataset=tiny_examples(tiny_tokenizer(), "sft", n=2),
                      callbacks=method_callbacks(model, cfg))
    with pytest.raises(MethodError, match="param_groups"):
        trainer.train()


# ---------------------------------------------------------------- lr groups, descriptions, refusals


def test_layer_lr_decay_scales_by_depth(folders):
    cfg = MethodConfig(name="full", layer_lr_decay=0.5)
    model = apply_method(load(folders, "llama"), cfg, "sft")
    lr_of = {id(p): g["lr"] for g in param_groups(model, cfg, lr=1e-4, weight_decay=0.0) for p in g["params"]}
    by_name = dict(model.named_parameters())
    assert lr_of[id(by_name["lm_head.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(by_name["model.layers.1.mlp.up_proj.weight"])] == pytest.approx(5e-5)
    assert lr_of[id(by_name["model.layers.0.mlp.up_proj.weight"])] == pytest.approx(2.5e-5)
    assert lr_of[id(by_name["model.embed_tokens.weight"])] == pytest.approx(1.25e-5)
    assert describe_trainable(model, cfg, TrainConfig(lr=1e-4))["lowest_layer_lr"] == pytest.approx(1.25e-5)


@pytest.mark.parametrize("name,lr,scale,warn", [
    ("lora", 2e-4, ALPHA / R, None), ("rslora", 2e-4, ALPHA / math.sqrt(R), None),
    ("lora", 2e-3, ALPHA / R, "high for lora"), ("full", 1e-4, None, "catastrophic forgetting"),
    ("full", 2e-5, None, None), ("prompt_tuning", 1e-5, None, "low for prompt_tuning"),
])
def test_describe_trainable_scale_and_warnings(folders, name, lr, scale, warn):
    cfg = MethodConfig(name=name, r=R, alpha=ALPHA, num_virtual_tokens=4)
    model = apply_method(load(folders, "llama"), cfg, "sft")
    info = describe_trainable(model, cfg, TrainConfig(lr=lr))
    assert info["lora_scale"] == (pytest.approx(scale) if scale else None)
    assert info["lr"] == lr and 0 < info["trainable"] <= info["total"]
    assert any(warn in w for w in info["warnings"]) if warn else info["warnings"] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_qlora_without_cuda_refuses_and_suggests_lora(folders):
    cfg = MethodConfig(name="qlora")
    with pytest.raises(MethodError) as err:
        apply_method(load(folders, "llama"), cfg, "sft")
    assert str(err.value) == QLORA_NO_CUDA and "method.name: lora" in str(err.value)
    with pytest.raises(MethodError, match="method.name: lora"):
        load_kwargs(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_qlora_without_cuda_is_refused_before_a_run_folder_is_made(tmp_path):
    from typer.testing import CliRunner

    from test_pipeline import tiny_project
    from tunelab.cli import app

    cfg = tiny_project(tmp_path, "q")
    for verb in ("train", "estimate"):
        result = CliRunner().invoke(app, [verb, str(cfg), "method.name=qlora"])
        assert result.exit_code == 2 and QLORA_NO_CUDA in result.output, result.output
    assert not (tmp_path / "runs").exists()   # refused before anything was prepared


def test_freeze_rejects_regex_matching_nothing_and_too_many_layers(folders):
    with pytest.raises(MethodError, match="matches no parameter"):
        apply_method(load(folders, "llama"), MethodConfig(name="freeze", trainable_regex="nope"), "sft")
    with pytest.raises(MethodError, match="has 2 layers"):
        apply_method(load(folders, "llama"), MethodConfig(name="freeze", trainable_layers=3), "sft")


def test_freeze_regex_trains_exactly_the_matches(folders):
    model = apply_method(load(folders, "bert"), MethodConfig(name="freeze", trainable_regex=r"layer\.1\.|classifier"),
                         "classification")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("layer.1." in n or n.startswith("classifier.") for n in trainable)
    assert "classifier.weight" in trainable and "bert.encoder.layer.1.output.dense.weight" in trainable
    assert not any("head is frozen" in w for w in describe_trainable(model, MethodConfig(), TrainConfig())["warnings"])


def test_frozen_classification_head_is_warned_about(folders):
    cfg = MethodConfig(name="freeze", trainable_regex=r"layer\.1\.")
    model = apply_method(load(folders, "bert"), cfg, "classification")
    assert any("head is frozen" in w for w in describe_trainable(model, cfg, TrainConfig(lr=1e-5))["warnings"])


def test_bottleneck_adapters_start_as_identity_and_survive_deepcopy(folders):
    import copy

    base = load(folders, "llama").eval()
    ids = torch.tensor([tiny_tokenizer()("my card").input_ids])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = apply_method(base, MethodConfig(name="adapter", adapter_kind="houlsby", adapter_size=4), "sft")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # `up` starts at zero
        clone = copy.deepcopy(model)
        for name, p in clone.named_parameters():
            if "bottleneck_adapter.up" in name:
                p.add_(0.5)
        # the copy runs its own adapters: changing them moves the copy only
        assert not torch.allclose(clone(input_ids=ids).logits, before)
        torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_prompt_tuning_of_a_classifier_is_refused_before_any_work():
    from tunelab.methods import check_method

    with pytest.raises(MethodError, match="prompt_tuning needs a causal LM task .*not task=classification"):
        check_method(MethodConfig(name="prompt_tuning"), "classification")
    check_method(MethodConfig(name="prompt_tuning"), "sft")
