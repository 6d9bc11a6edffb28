"""On a CUDA GPU (`pytest -m gpu`; skipped without one): QLoRA for real, DDP and FSDP through the shipped
accelerate configs, and the precision `auto` picks. The CPU refusal of QLoRA is tested in test_methods.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intent_project import intent_project
from tiny import tiny_tokenizer
from tunelab.config import TrainConfig, load_config
from tunelab.core.rundir import RunDir
from tunelab.export import stage as export_stage
from tunelab.models.precision import choose
from tunelab.pipeline import train_only

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (torch.cuda.is_available() is False here); run "
                                        "`pytest -m gpu` on a GPU machine with `pip install 'tunelab[gpu]'`")]
# QLoRA's 4-bit base is bitsandbytes' (the `tunelab[gpu]` extra), which the CPU test set-up does not install.
needs_bitsandbytes = pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is None,
                                        reason="needs bitsandbytes: pip install 'tunelab[gpu]'")
ROOT = Path(__file__).resolve().parents[1]


def _llama(path: Path) -> Path:
    """A random Llama big enough that its weights dominate GPU memory (about 60M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    return intent_project(root, "gpu", _llama(root / "llama"), {"name": "lora", "r": 8, "alpha": 16},
                          {"lr": 2e-3, "max_steps": 30, "batch_size": 4, "eval_every": 10, "log_every": 1,
                           "patience": None})


def _train_peak(project: Path, *overrides: str) -> tuple[RunDir, int]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    rd = train_only(load_config(project / "cfg.yaml", list(overrides)))
    return rd, torch.cuda.max_memory_allocated()


@needs_bitsandbytes
def test_qlora_trains_with_falling_loss_and_less_memory_than_bf16_lora(project):
    lora, lora_peak = _train_peak(project, "name=lora", "train.precision=bf16")
    qlora, qlora_peak = _train_peak(project, "name=qlora", "method.name=qlora")
    losses = [r["loss"] for r in qlora.read_log() if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    print(f"peak GPU memory: qlora {qlora_peak / 2**20:.0f} MiB, bf16 lora {lora_peak / 2**20:.0f} MiB")
    assert qlora_peak < lora_peak
    assert "bf16" in qlora.metrics()["train"]["precision"] or "fp16" in qlora.metrics()["train"]["precision"]


@needs_bitsandbytes
def test_qlora_export_dequantises_and_passes_the_parity_check(project):
    rd = RunDir(project / "runs" / "qlora")
    if not rd.best.is_dir():
        _train_peak(project, "name=qlora", "method.name=qlora")
    out = export_stage.run(rd.config(), rd, project / "qlora-export", allow_incomplete=True)
    info = json.loads((out / "tunelab_export.json").read_text())
    assert info["merged"] and info["max_abs_logit_diff"] <= 1e-3
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("config", ["ddp", "fsdp"])
def test_launch_with_a_shipped_config_starts_and_steps(project, config):
    env = {**os.environ, "TUNELAB_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "tunelab", "train", str(project / "cfg.yaml"), f"name={config}",
                           "train.max_steps=4", "method.name=full", "--no-estimate",
                           "--accelerate-config", str(ROOT / "examples" / "accelerate" / f"{config}.yaml")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = RunDir(project / "runs" / config)
    assert rd.metrics()["train"]["steps"] == 4 and (rd.last / "model.safetensors").is_file()


def test_precision_auto_on_this_gpu():
    p = choose(TrainConfig())
    if torch.cuda.is_bf16_supported():
        assert p.bf16 and not p.fp16 and "supports bf16" in p.reason
    else:
        assert p.fp16 and not p.bf16 and "loss scaling" in p.reason
    assert torch.cuda.get_device_name() in p.reason


def test_precision_auto_without_bf16_falls_back_to_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = choose(TrainConfig())
    assert p.fp16 and not p.bf16 and "fp16 autocast with dynamic loss scaling" in p.reason
