"""Fine-tuning methods: `METHODS` (registry.py) maps each `method.name` to `apply(model, cfg, task)`;
`saved.py` writes and reloads what a method trained. `_layers`, `_adapters` and `_trainable` are
private parts of this package."""

from tunelab.methods._adapters import ADAPTERS_CONFIG, ADAPTERS_FILE
from tunelab.methods._layers import TASK_HEAD_NAMES
from tunelab.methods._trainable import LORA_FAMILY, describe_trainable
from tunelab.methods.registry import (METHODS, QLORA_NO_CUDA, GradualUnfreeze, MethodError, apply_method, check_method,
                                      load_kwargs, method_callbacks, param_groups)
from tunelab.methods.saved import load_trained, save_trained

__all__ = ["ADAPTERS_CONFIG", "ADAPTERS_FILE", "LORA_FAMILY", "METHODS", "QLORA_NO_CUDA", "TASK_HEAD_NAMES",
           "GradualUnfreeze", "MethodError", "apply_method", "check_method", "describe_trainable", "load_kwargs", "load_trained",
           "method_callbacks", "param_groups", "save_trained"]
