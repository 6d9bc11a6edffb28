"""What training leaves behind and how it loads again: a PEFT adapter, tunelab bottleneck adapters, or
full weights, always with the tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tunelab.config import ModelConfig
from tunelab.methods._adapters import load_adapters, save_adapters
from tunelab.models.load import load_model


def save_trained(model: nn.Module, path: Path) -> None:
    """Save what training changed: a PEFT adapter, bottleneck adapters, or the whole model."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(path)
    elif hasattr(model, "tunelab_adapters"):
        save_adapters(model, path)
    else:
        model.save_pretrained(path)


def load_trained(cfg: ModelConfig, folder: Path, task: str = "sft", labels: list[str] | None = None):
    """Load what training saved in `folder` (`best/` or `last/`) on top of the base model.

    `folder` holds a PEFT adapter (adapter_config.json), tunelab bottleneck adapters
    (tunelab_adapters.json) or full weights (config.json).
    """
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(cfg, task, labels=labels), str(folder))
    if (folder / "tunelab_adapters.json").is_file():
        return load_adapters(load_model(cfg, task, labels=labels), folder)
    return load_model(ModelConfig(name=str(folder)), task, labels=labels)
