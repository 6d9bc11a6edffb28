"""What training leaves behind and how it loads again: a PEFT adapter, tunelab bottleneck adapters, or
full weights, always with the tokenizer and chat template."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from tunelab.config import MethodConfig, ModelConfig
from tunelab.methods._adapters import load_adapters, save_adapters
from tunelab.methods.registry import load_kwargs
from tunelab.models.load import load_model

log = logging.getLogger(__name__)


def save_trained(model: nn.Module, path: Path, state_dict: dict | None = None) -> None:
    """Save what training changed: a PEFT adapter, bottleneck adapters, or the whole model.

    `state_dict`: the model's full weights when they were gathered from several processes (FSDP,
    DeepSpeed ZeRO-3), whose own parameters are then only shards.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(path, state_dict=state_dict)
    elif hasattr(model, "tunelab_adapters"):
        save_adapters(model, path)
    else:
        model.save_pretrained(path, state_dict=state_dict)


def load_trained(cfg: ModelConfig, folder: Path, task: str = "sft", labels: list[str] | None = None,
                 method: MethodConfig | None = None):
    """Load what training saved in `folder` (`best/` or `last/`) on top of the base model.

    `folder` holds a PEFT adapter (adapter_config.json), tunelab bottleneck adapters
    (tunelab_adapters.json) or full weights (config.json). A qlora adapter (`method`) goes on the
    base it was trained against: the 4-bit NF4 base, de-quantised to fp32 (on CUDA; elsewhere the
    full-precision base, which differs from it by the quantisation error).
    """
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(_base_for_adapter(cfg, task, labels, method), str(folder))
    if (folder / "tunelab_adapters.json").is_file():
        return load_adapters(load_model(cfg, task, labels=labels), folder)
    return load_model(ModelConfig(name=str(folder)), task, labels=labels)


def _base_for_adapter(cfg: ModelConfig, task: str, labels: list[str] | None, method: MethodConfig | None):
    import torch

    if method is None or method.name != "qlora":
        return load_model(cfg, task, labels=labels)
    if not torch.cuda.is_available():
        log.warning("this adapter was trained on a 4-bit NF4 base (qlora); without a CUDA device it is applied "
                    "to the full-precision base, whose outputs differ slightly from the trained model's")
        return load_model(cfg, task, labels=labels)
    # The layers bitsandbytes left unquantised were loaded in the compute dtype, as training saw them.
    return load_model(cfg, task, labels=labels, **load_kwargs(method)).dequantize(dtype=torch.float32).float()
