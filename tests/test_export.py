"""`tunelab export`: merged weights reproduce the adapter model; unmerged exports reload; refusals are clear."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers import logging as hf_logging

from tiny import tiny_bert_classifier, tiny_examples, tiny_llama
from tunelab.export import stage as export
from tunelab.config import config_from_dict
from tunelab.core.rundir import RunDirError
from tunelab.methods import apply_method, load_trained, param_groups
from tunelab.models import load_model
from tunelab.train.callbacks import save_model
from tunelab.core.rundir import RunDir

hf_logging.set_verbosity_error()
TASK_OF = {"llama": "sft", "bert": "classification"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"llama": tiny_llama(root / "llama"), "bert": tiny_bert_classifier(root / "bert")}


def make_run(tmp_path, folders, arch: str, method: str, **extra) -> tuple[RunDir, torch.nn.Module]:
    """A run folder whose best/ holds `method` trained for a few steps at a high lr (so merging matters)."""
    task = TASK_OF[arch]
    cfg = config_from_dict({"name": method, "task": task, "runs_dir": str(tmp_path / "runs"),
                            "data": {"train": "unused.jsonl"}, "model": {"name": str(folders[arch])},
                            "method": {"name": method, "r": 4, "alpha": 8, "adapter_size": 8, **extra}})
    rd = RunDir.create(cfg)
    model = apply_method(load_model(cfg.model, task, num_labels=3 if task == "classification" else None),
                         cfg.method, task)
    tokenizer = AutoTokenizer.from_pretrained(folders[arch])
    feats = tiny_examples(tokenizer, task, n=4)
    batch = {k: torch.tensor([f[k] for f in feats]) for k in feats[0]}
    opt = torch.optim.AdamW(param_groups(model, cfg.method, lr=5e-2, weight_decay=0.0))
    model.train()
    for _ in range(4):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with rd.stage("train"):   # a run whose training completed, as the train stage records it
        save_model(model, tokenizer, rd.best)
    return rd, model


def run_export(rd: RunDir, out=None, merge: bool = True):
    return export.run(rd.config(), rd, out, merge)


def _chat_ids(folder) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "Where is my card?"}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_export_reproduces_adapter_model(tmp_path, folders, method):
    rd, _ = make_run(tmp_path, folders, "llama", method)
    out = run_export(rd)

    assert out == rd.path / "export"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "tunelab_export.json").read_text())
    assert info["merged"] and info["max_abs_logit_diff"] <= export.TOLERANCE

    cfg = rd.config()
    adapter = load_trained(cfg.model, rd.best, "sft").eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = load_model(cfg.model, "sft").eval()
    assert merged.dtype == torch.float32 and not isinstance(merged, PeftModel)
    ids = _chat_ids(out)
    # The adapter must really change the model, or agreeing with it would prove nothing.
    assert (_logits(adapter, ids) - _logits(base, ids)).abs().max() > 1e-2
    torch.testing.assert_close(_logits(merged, ids), _logits(adapter, ids), atol=1e-4, rtol=1e-4)
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(merged.generate(input_ids=ids, **greedy), adapter.generate(input_ids=ids, **greedy))


def test_merged_classifier_export_keeps_trained_head(tmp_path, folders):
    rd, trained = make_run(tmp_path, folders, "bert", "lora")
    out = run_export(rd)
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert merged.config.num_labels == 3
    ids = AutoTokenizer.from_pretrained(out)("my card has not arrived", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(_logits(merged, ids), _logits(trained, ids), atol=1e-4, rtol=1e-4)


def test_unmerged_export_is_a_loadable_peft_adapter(tmp_path, folders):
    rd, trained = make_run(tmp_path, folders, "llama", "ia3")
    out = run_export(rd, tmp_path / "adapter-out", merge=False)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folders["llama"]), out).eval()
    ids = _chat_ids(out)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(trained, ids))


def test_prompt_tuning_cannot_merge_but_exports_unmerged(tmp_path, folders):
    rd, _ = make_run(tmp_path, folders, "llama", "prompt_tuning", num_virtual_tokens=3)
    with pytest.raises(export.ExportError, match="--no-merge"):
        run_export(rd)
    assert (run_export(rd, merge=False) / "adapter_config.json").is_file()


def test_bottleneck_adapters_refuse_merge_and_round_trip_unmerged(tmp_path, folders):
    rd, trained = make_run(tmp_path, folders, "bert", "adapter", adapter_kind="houlsby")
    with pytest.raises(export.ExportError, match="cannot be merged"):
        run_export(rd)
    out = run_export(rd, merge=False)
    cfg = rd.config()
    reloaded = load_trained(cfg.model, out, "classification", labels=["a", "b", "c"]).eval()
    ids = AutoTokenizer.from_pretrained(out)("please block my card", return_tensors="pt")["input_ids"]
    # Equal logits mean both the adapters and the trained classification head came back.
    torch.testing.assert_close(_logits(reloaded, ids), _logits(trained, ids))


def test_full_weights_export_as_is(tmp_path, folders):
    rd, trained = make_run(tmp_path, folders, "llama", "freeze", trainable_layers=1)
    trained.save_pretrained(rd.best)  # freeze saves whole weights: best/ is a model folder
    out = run_export(rd)
    ids = _chat_ids(out)
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out), ids), _logits(trained, ids))


def test_check_parity_fails_above_tolerance_and_on_nan():
    a = [torch.zeros(1, 3, 5)]
    assert export.check_parity(a, [a[0] + 1e-5]) == pytest.approx(1e-5)
    with pytest.raises(export.ExportError, match="max abs logit difference 0.01"):
        export.check_parity(a, [a[0] + 1e-2])
    with pytest.raises(export.ExportError):
        export.check_parity(a, [torch.full_like(a[0], float("nan"))])


def test_export_without_best_says_train_first(tmp_path, folders):
    cfg = config_from_dict({"name": "empty", "runs_dir": str(tmp_path), "data": {"train": "x.jsonl"},
                            "model": {"name": str(folders["llama"])}})
    with pytest.raises(RunDirError, match="has not been trained"):
        run_export(RunDir.create(cfg))


def test_export_writes_a_model_card_with_the_runs_numbers(tmp_path, folders):
    from tunelab.evaluate import forgetting
    from tunelab.report.markdown import comparison_table
    from tunelab.evaluate.significance import score_systems

    rd, trained = make_run(tmp_path, folders, "llama", "lora")
    refs = {str(i): ["card", "transfer", "other"][i % 3] for i in range(30)}
    systems = {"zero_shot": {i: "other" for i in refs},
               "few_shot": {i: r if int(i) % 2 else "card" for i, r in refs.items()},
               "finetuned": {i: r if int(i) % 10 else "other" for i, r in refs.items()}}
    rd.update_metrics("test", score_systems(systems, refs, ["accuracy", "f1_macro"], samples=200))
    tok = AutoTokenizer.from_pretrained(folders["llama"])
    rd.update_metrics("forgetting", forgetting.forgetting_probe(trained, tok, max_tokens=128))
    rd.update_metrics("train", {"steps": 4, "examples": 4, "best_step": 4, "best_eval_loss": 5.1234,
                                "trainable_params": 1234, "total_params": 56789})
    card = (run_export(rd) / "README.md").read_text()

    m = rd.metrics()
    assert card.startswith('---\nlicense: "other"\nbase_model: "' + str(folders["llama"]) + '"')
    assert "license: not recorded by tunelab" in card and "fine-tuned with lora" in card
    assert comparison_table(m) in card and "| fine-tuned | 0.9333 [" in card
    ft = m["test"]["finetuned"]
    for other, name in (("zero_shot", "zero-shot (base)"), ("few_shot", "few-shot (base)")):
        info = ft["paired"][other]
        assert (f"- fine-tuned vs {name}: accuracy difference {info['delta']:+.4f} on 30 shared examples, "
                f"mcnemar p = {ft['p_value_vs'][other]:.4g}") in card
    f = m["forgetting"]
    assert f["kl_mean"] > 0  # the trained adapter changed the model, so the probe has something to show
    assert (f"perplexity {f['perplexity_base']:.4f} (base) -> {f['perplexity']:.4f} (fine-tuned), "
            f"change {f['perplexity_change']:+.2%}") in card
    assert f"mean KL(base || fine-tuned): {f['kl_mean']:.4f} nats/token" in card
    assert "- best_eval_loss: 5.1234" in card and "- trainable_params: 1234" in card


def test_model_card_of_an_embedded_base_model_names_its_license():
    cfg = config_from_dict({"name": "demo", "data": {"train": "t.jsonl"}, "model": {"name": "smollm2-135m-instruct"}})
    card = export.model_card(cfg, {}, {}, {"format": "safetensors", "merged": True})
    assert card.startswith('---\nlicense: "apache-2.0"\nbase_model: "smollm2-135m-instruct"')
    assert "license: Apache-2.0." in card and "(no test metrics)" in card and "Forgetting probe: not measured." in card


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_export_loads_back_with_transformers_gguf_loader(tmp_path, folders, quant):
    rd, _ = make_run(tmp_path, folders, "llama", "lora")
    out = export.run(rd.config(), rd, tmp_path / "gguf", fmt="gguf", quant=quant)
    info = json.loads((out / "tunelab_export.json").read_text())
    check = info["gguf_check"]
    assert (out / info["gguf"]).is_file() and info["gguf"] == f"lora.{quant}.gguf"
    assert check["greedy_equal"] and check["tokenizer_equal"] and check["max_abs_logit_diff"] <= check["tolerance"]
    # Checked again here, independently of the export's own check: the GGUF is the merged model.
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    back = AutoModelForCausalLM.from_pretrained(out, gguf_file=info["gguf"]).eval()
    ids = _chat_ids(out)
    diff = float((_logits(merged, ids) - _logits(back, ids)).abs().max())
    assert diff <= check["tolerance"]
    if quant == "q8_0":   # really quantized, not f32 in disguise
        assert diff > 1e-5 and (out / info["gguf"]).stat().st_size < (out / "model.safetensors").stat().st_size / 2
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(merged.generate(input_ids=ids, **greedy), back.generate(input_ids=ids, **greedy))


def test_vllm_bundle_writes_the_exact_command(tmp_path, folders):
    rd, _ = make_run(tmp_path, folders, "llama", "lora")
    merged = export.run(rd.config(), rd, tmp_path / "vllm", fmt="vllm")
    script = (merged / "vllm_serve.sh").read_text()
    assert f"exec vllm serve {merged.resolve()} --served-model-name lora --host 127.0.0.1 --port 8000" in script
    assert "--api-key ${VLLM_API_KEY}" in script and "vllm serve" in (merged / "VLLM.md").read_text()
    adapter = export.run(rd.config(), rd, tmp_path / "vllm-adapter", merge=False, fmt="vllm")
    script = (adapter / "vllm_serve.sh").read_text()
    assert f"--enable-lora --max-lora-rank 4 --lora-modules lora={adapter.resolve()}" in script
    assert f"vllm serve {folders['llama'].resolve()}" in script
