"""Precision choice: explicit settings are honoured, fp16 is refused on CPU, auto is measured and cached."""

import json

import pytest
import torch

from tunelab.config import ConfigError, TrainConfig
from tunelab.models.precision import bf16_speedup, choose, cpu_bf16_flags


def test_explicit_choices_on_cpu():
    assert choose(TrainConfig(precision="fp32", device="cpu")).autocast_dtype is None
    p = choose(TrainConfig(precision="bf16", device="cpu"))
    assert p.bf16 and p.autocast_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU"):
        choose(TrainConfig(precision="fp16", device="cpu"))


def test_auto_follows_the_measured_speedup(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    p = choose(TrainConfig(device="cpu"))
    if not cpu_bf16_flags():
        assert not p.bf16 and "no AVX512-BF16" in p.reason
        return
    speedup = bf16_speedup()
    cached = json.loads((tmp_path / "hardware.json").read_text())
    assert [v["bf16_speedup"] for v in cached.values()] == [speedup]
    assert p.bf16 == ("amx_bf16" in cpu_bf16_flags() or speedup >= 1.1)
    assert f"{speedup:.2f}x" in p.reason


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        choose(TrainConfig(device="cuda"))


def _fake_gpu(monkeypatch, bf16: bool, name: str, capability: tuple[int, int]) -> None:
    """What torch reports on a CUDA machine (the real thing is tested in test_gpu.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)


def test_gpu_auto_picks_bf16_where_supported(monkeypatch):
    _fake_gpu(monkeypatch, True, "NVIDIA H100", (9, 0))
    p = choose(TrainConfig())
    assert p.device == "cuda" and p.bf16 and not p.fp16
    assert p.reason == "bf16 autocast: NVIDIA H100 (compute capability 9.0) supports bf16"


def test_gpu_auto_without_bf16_picks_fp16_with_loss_scaling(monkeypatch):
    _fake_gpu(monkeypatch, False, "Tesla T4", (7, 5))
    p = choose(TrainConfig())
    assert p.fp16 and not p.bf16 and p.autocast_dtype == torch.float16
    assert "fp16 autocast with dynamic loss scaling (this GPU has no bf16) on Tesla T4" in p.reason
    assert choose(TrainConfig(precision="fp32")).autocast_dtype is None
    with pytest.raises(ConfigError, match="Tesla T4 .* does not support bf16"):
        choose(TrainConfig(precision="bf16"))
