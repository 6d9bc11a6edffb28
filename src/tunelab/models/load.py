"""Load a base model and its tokenizer for a task, from whatever `registry.resolve` found."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import ConfigError, ModelConfig
from tunelab.models.registry import EMBEDDED, local_folder
from tunelab.tasks import TASKS


# Any of these makes a folder's tokenizer loadable (fast tokenizer, its config, or slow-tokenizer vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def load_tokenizer(cfg: ModelConfig):
    """Load the tokenizer (with its chat template) for `cfg.name`."""
    from transformers import AutoTokenizer

    folder = local_folder(cfg)
    if Path(folder).is_dir() and not any((Path(folder) / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"model.name: {folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
                          "copy them from the base model the weights came from")
    try:
        tok = AutoTokenizer.from_pretrained(folder, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:   # transformers' way of saying the tokenizer files cannot be used
        raise ConfigError(f"model.name: the tokenizer in {folder} cannot be loaded: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        # Padding positions never carry labels (the renderer builds labels explicitly), so reusing
        # EOS as pad is safe here; the EOS guard in render.py checks that EOS stays supervised.
        tok.pad_token = tok.eos_token
    return tok


def _label_kwargs(task: str, num_labels: int | None, labels: list[str] | None) -> dict:
    n = num_labels or (len(labels) if labels else None)
    if n is None:
        raise ConfigError("task=classification needs a closed label set in the training data")
    extra = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}} if labels else {}
    return {"num_labels": n, **extra}


def is_decoder(cfg: ModelConfig) -> bool:
    """Whether the base model is a decoder that can be prompted (a causal LM), not an encoder such as BERT."""
    if cfg.name in EMBEDDED:
        return EMBEDDED[cfg.name].kind == "causal"
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    config = AutoConfig.from_pretrained(local_folder(cfg), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    # BERT-like encoders also have a causal-LM class (for decoding experiments); their masked-LM class says what they are.
    return (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _check_head(cfg: ModelConfig, task: str) -> None:
    if TASKS[task].head == "causal_lm" and cfg.name in EMBEDDED and EMBEDDED[cfg.name].kind == "encoder":
        raise ConfigError(f"model.name={cfg.name!r} is an encoder: use it with task: classification")


def load_model(cfg: ModelConfig, task: str = "sft", num_labels: int | None = None,
               labels: list[str] | None = None, dtype=None, **from_pretrained):
    """Load the base model with the head `TASKS[task]` declares (a causal LM, or a new sequence-classification head).

    `from_pretrained` holds what a method adds to the load (qlora: `methods.load_kwargs`, a 4-bit
    quantization config, its compute dtype and the process's GPU).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = local_folder(cfg)
    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=dtype or torch.float32)
    kw.update(from_pretrained)
    _check_head(cfg, task)
    if TASKS[task].head == "sequence_classification":
        # A checkpoint whose head has another label count (or none) gets a fresh head for this label set.
        model = AutoModelForSequenceClassification.from_pretrained(folder, ignore_mismatched_sizes=True,
                                                                   **_label_kwargs(task, num_labels, labels), **kw)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return pool_by(keep_layers(model, cfg.layers), cfg.pooling)
    return AutoModelForCausalLM.from_pretrained(folder, **kw)


# Set on a decoder while its own output must stay per-token (train/lower_cache.py runs its lower layers).
POOLING_OFF = "tunelab_pooling_off"


def _running_mean(module, args, kwargs, output):
    """Replace each position's state by the mean of the real tokens up to it: at the last real token, where
    the head reads, that is the mean over the whole example (padding left or right, via the attention mask)."""
    if getattr(module, POOLING_OFF, False):
        return output
    import torch

    h = output.last_hidden_state
    mask = kwargs.get("attention_mask")
    m = torch.ones(h.shape[:2], device=h.device) if mask is None or mask.dim() != 2 else mask
    m = m.to(h.dtype).unsqueeze(-1)
    output.last_hidden_state = (h * m).cumsum(1) / m.cumsum(1).clamp(min=1)
    return output


def pool_by(model, pooling: str):
    """A decoder classifier whose head reads the mean of the real tokens' states (`mean`) or the last one's.

    Why a hook and not a new head: the head stays transformers' own (saved, loaded and served as such);
    only the states it picks from change, so the last real token's position holds the example's mean.

    Raises:
        ConfigError: mean pooling on a model without a decoder layer stack (encoders pool their own way).
    """
    if pooling == "last":
        return model
    if getattr(model.base_model, "layers", None) is None:
        raise ConfigError(f"model.pooling=mean: {type(model).__name__} is not a decoder classifier "
                          "(encoders such as BERT pool with their own pooler)")
    model.base_model.register_forward_hook(_running_mean, with_kwargs=True)
    return model


def keep_layers(model, layers: int | None):
    """`model` with only its first `layers` transformer layers (model.layers); the rest are dropped.

    Why: a classification head does not need the top of a decoder (on Banking77 the first 12 of
    SmolLM2's 30 layers classify as well as all 30, examples/banking77/RESULTS.md), and every
    layer dropped is work saved in training and evaluation.

    Raises:
        ConfigError: the model has no `layers` stack, or fewer layers than asked.
    """
    if not layers:
        return model
    inner = model.base_model
    stack = getattr(inner, "layers", None)
    if stack is None:
        raise ConfigError(f"model.layers: {type(model).__name__} has no decoder layer stack to cut "
                          "(model.layers works with decoder models such as Llama, Qwen, Mistral, SmolLM)")
    if layers > len(stack):
        raise ConfigError(f"model.layers={layers} but the model has {len(stack)} layers")
    inner.layers = stack[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    return model


def empty_model(cfg: ModelConfig, task: str = "sft", labels: list[str] | None = None):
    """The base model's architecture on the meta device: every parameter's shape, no weight read or allocated
    (what `tunelab estimate` counts before deciding whether loading the model is safe)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    _check_head(cfg, task)
    folder = local_folder(cfg)
    config = AutoConfig.from_pretrained(folder, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    with init_empty_weights():
        if TASKS[task].head == "sequence_classification":
            for key, value in _label_kwargs(task, None, labels).items():
                setattr(config, key, value)
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=cfg.trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    model.tie_weights()   # from_config on the meta device leaves tied embeddings as two tensors
    return model
