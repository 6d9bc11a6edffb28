"""`tunelab estimate` on a tiny model: its counts agree with what training then does (steps, validations,
weights, trainable parameters), it never writes the run folder, and it advises when a run will not fit."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from intent_project import intent_project
from tiny import tiny_llama
from tunelab.cli import app
from tunelab.config import MethodConfig, ModelConfig, load_config
from tunelab.estimate import advice
from tunelab.estimate import stage as estimate
from tunelab.estimate.memory import GB, Memory, trainable_bytes, weight_bytes
from tunelab.methods import METHODS
from tunelab.models import empty_model, load_model
from tunelab.pipeline import train_only


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("est")
    # 19 examples, batch 4, accumulation 2: 5 batches -> 3 steps per epoch -> 1.5 epochs = 5 steps.
    return intent_project(root, "est", tiny_llama(root / "tiny-llama"), {"name": "lora", "r": 4, "alpha": 8},
                          {"lr": 1e-3, "epochs": 1.5, "batch_size": 4, "grad_accum": 2, "eval_every": 2,
                           "log_every": 1, "precision": "fp32", "threads": 1, "patience": None})


def test_estimate_counts_what_training_then_does(project, tmp_path):
    out = tmp_path / "est.json"
    result = CliRunner().invoke(app, ["estimate", str(project / "cfg.yaml"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "peak RAM: " in result.output and "time: " in result.output
    assert not (project / "runs" / "est").exists()   # the estimate never writes the run folder
    est = json.loads(out.read_text())
    assert est["memory"]["measured"] and est["calibration"]["steps"] == 4
    assert est["memory"]["total"] >= est["calibration"]["baseline_rss"] > 0
    assert est["seconds"]["total"] > est["seconds"]["setup"] > 0 and est["seconds"]["step"] > 0

    rd = train_only(load_config(project / "cfg.yaml"))
    log = rd.read_log()
    assert est["plan"]["steps"] == rd.metrics()["train"]["steps"] == 5
    assert est["plan"]["evals"] == len([r for r in log if "eval_loss" in r]) == 3   # steps 2, 4 and the last
    assert est["plan"]["examples"] == rd.metrics()["train"]["examples"]
    trained = json.loads(rd.trainable_path.read_text())
    assert est["memory"]["gradients"] == trained["trainable"] * 4
    assert est["memory"]["optimizer"] == 2 * est["memory"]["gradients"]


def test_estimate_without_calibration_counts_only(project, tmp_path):
    out = tmp_path / "est.json"
    result = CliRunner().invoke(app, ["estimate", str(project / "cfg.yaml"), "name=counted", "--steps", "0",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    est = json.loads(out.read_text())
    assert not est["memory"]["measured"] and est["calibration"] is None and est["seconds"] == {}
    assert "time: not measured" in result.output and est["memory"]["activations"] > 0


@pytest.mark.parametrize("method", ["full", "lora", "dora", "freeze", "adapter", "ia3", "prompt_tuning"])
def test_meta_device_counts_match_the_loaded_model(project, method):
    cfg = ModelConfig(name=str(project / "tiny-llama"))
    mcfg = MethodConfig(name=method, trainable_layers=1)
    real = METHODS[method](load_model(cfg), mcfg, "sft")
    meta = METHODS[method](empty_model(cfg), mcfg, "sft")
    assert weight_bytes(meta) == weight_bytes(real)
    assert trainable_bytes(meta) == trainable_bytes(real) > 0


def test_qlora_weights_are_counted_in_4_bits(project):
    model = METHODS["lora"](empty_model(ModelConfig(name=str(project / "tiny-llama"))), MethodConfig(), "sft")
    full, nf4 = weight_bytes(model), weight_bytes(model, quantized_4bit=True)
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in n and not n.endswith("lm_head"))
    assert nf4 == pytest.approx(full - linear * (4 - 0.5 - 1 / 64 - 4 / 64 / 256))


def test_a_run_that_will_not_fit_gets_a_warning_and_no_calibration(project, monkeypatch):
    monkeypatch.setattr(estimate, "available", lambda device: 64 * 2**20)   # 64 MiB
    est = estimate.for_config(load_config(project / "cfg.yaml", ["name=tight"]))
    assert est.calibration is None and not est.memory.measured
    text = est.text()
    assert "the counted peak alone exceeds the memory available" in text
    assert "this run will probably not fit: it needs about" in text and "Try:" in text


def test_advice_names_settings_and_what_each_saves(project):
    cfg = load_config(project / "cfg.yaml", ["method.name=full", "data.max_length=256"])
    mem = Memory("RAM", baseline=GB, weights=2 * GB, gradients=2 * GB, optimizer=4 * GB, activations=3 * GB)
    tips = advice.suggestions(cfg, mem, excess=1.5 * GB, device="cpu", cuda_available=False)
    assert tips == [
        "method.name=lora: trains adapters of about 1% of the weights instead of full, saving most of the "
        "6.00 GB of gradients and optimizer state",
        "train.batch_size=2 train.grad_accum=4: 8 examples per optimizer step as before, with about 1.50 GB of "
        "activations instead of 3.00 GB",
        "data.max_length=128: activations grow with the longest batch (check the truncation count it prints)",
        "a machine with a GPU (where method.name=qlora also stores the base in 4 bits) or with more memory"]
    lora = load_config(project / "cfg.yaml")
    on_gpu = advice.suggestions(lora, mem, excess=0.5 * GB, device="cuda", cuda_available=True)
    assert on_gpu[-1] == "method.name=qlora: a 4-bit NF4 base takes about 0.28 GB instead of 2.00 GB of weights (CUDA only)"


def test_train_prints_the_estimate_before_training(project):
    result = CliRunner().invoke(app, ["train", str(project / "cfg.yaml"), "name=printed", "train.max_steps=2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "estimate for printed:" in out and "2 optimizer steps" in out
    assert out.index("estimate for printed:") < out.index("trained 2 steps")
    quiet = CliRunner().invoke(app, ["train", str(project / "cfg.yaml"), "name=quiet", "train.max_steps=2",
                                     "--no-estimate"])
    assert quiet.exit_code == 0 and "estimate for" not in quiet.output


def test_estimate_runs_the_frozen_layers_once_like_training(tmp_path):
    """method.freeze_below: the calibration steps train only the layers above (as the train stage does after its
    one pass of the frozen layers over every example), and that pass is counted in the time."""
    root = intent_project(tmp_path, "frozen", tiny_llama(tmp_path / "cls", num_labels=3, layers=3),
                          {"name": "lora", "r": 4, "alpha": 8, "freeze_below": 2},
                          {"lr": 1e-3, "epochs": 1, "batch_size": 4, "eval_every": 2, "precision": "fp32",
                           "threads": 1, "patience": None})
    out = tmp_path / "est.json"
    result = CliRunner().invoke(app, ["estimate", str(root / "cfg.yaml"), "task=classification", "data.template=null",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    est = json.loads(out.read_text())
    assert est["calibration"]["steps"] == 4 and est["calibration"]["frozen_seconds_per_token"] > 0
    assert est["seconds"]["frozen"] > 0 and "frozen layers once" in result.output
    assert est["seconds"]["total"] > est["seconds"]["setup"] + est["seconds"]["frozen"]
