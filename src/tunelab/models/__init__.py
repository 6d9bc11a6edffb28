"""Base models: resolve a name to files on this machine (`registry.py`: embedded, local folder, GGUF,
hub id), load model and tokenizer (`load.py`), and pick device and precision by measurement
(`precision.py`)."""

from tunelab.models.load import empty_model, is_decoder, load_model, load_tokenizer
from tunelab.models.precision import Precision, bf16_speedup, cpu_bf16_flags, device_of
from tunelab.models.precision import choose as choose_precision
from tunelab.models.registry import EMBEDDED, EmbeddedModel, ResolvedModel, local_folder, package_dir, resolve

__all__ = ["EMBEDDED", "EmbeddedModel", "Precision", "ResolvedModel", "bf16_speedup", "choose_precision",
           "cpu_bf16_flags", "device_of", "empty_model", "is_decoder", "load_model", "load_tokenizer", "local_folder", "package_dir", "resolve"]
