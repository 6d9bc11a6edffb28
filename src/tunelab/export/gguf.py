"""`tunelab export --format gguf`: a merged Llama-architecture export written as one GGUF file (f16 or
q8_0) for llama.cpp and Ollama, and verified by loading it back with transformers' GGUF loader.

Written with the `gguf` package's writer and tensor-name map (llama.cpp's own Python library), the
way llama.cpp's converter lays a Llama model out: Q and K projections permuted to llama.cpp's rotary
layout (transformers undoes it on load), norms kept in f32, the BPE vocabulary, merges, special ids
and chat template as `tokenizer.*` metadata. q8_0 quantizes every 2-D weight whose rows are a
multiple of 32 (the q8_0 block); others stay f16, as llama.cpp does.

Verification (`verify`): the file is loaded back with `from_pretrained(..., gguf_file=...)` and run on
probe prompts beside the merged model: greedy continuations must agree token for token and the logits
must agree within `TOLERANCE` (max abs difference, in logits; f16 rounding moves them by ~1e-3 of their
range, q8_0 by ~1e-2 — a wrong permutation or tensor map moves them by whole units).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from tunelab.core.errors import UserError

log = logging.getLogger(__name__)

QUANTS = ("f16", "q8_0")
ARCHS = {"llama": "LLAMA"}          # HF model_type -> gguf MODEL_ARCH name (Llama layout: SmolLM2, Llama)
TOLERANCE = {"f16": 0.05, "q8_0": 0.5}
GREEDY_TOKENS = 8


class GGUFExportError(UserError):
    """A model this GGUF writer cannot express, or a file that does not reproduce the model."""


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's rotary layout interleaves the two halves of each head (HF keeps them apart).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_metadata(writer, folder: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok["model"]
    if model.get("type") != "BPE":
        raise GGUFExportError(f"{folder}: GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')}")
    vocab = dict(model["vocab"])
    added = {a["content"]: a["id"] for a in tok.get("added_tokens", [])}
    vocab.update(added)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size                  # UNUSED until named
    for text, i in vocab.items():
        tokens[i], types[i] = text, 3 if text in added else 1    # CONTROL for special tokens, else NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if size == 49152 else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id), ("unk_token", writer.add_unk_token_id)):
        name = cfg.get(key)
        name = name.get("content") if isinstance(name, dict) else name
        if name in vocab:
            add(vocab[name])
    writer.add_add_bos_token(False)
    template = folder / "chat_template.jinja"
    if template.is_file():
        writer.add_chat_template(template.read_text(encoding="utf-8"))
    elif cfg.get("chat_template"):
        writer.add_chat_template(cfg["chat_template"])


def write_gguf(folder: Path, out: Path, quant: str, name: str) -> Path:
    """Write the merged model in `folder` (safetensors + tokenizer) to the GGUF file `out`."""
    import gguf
    from safetensors.numpy import load_file

    if quant not in QUANTS:
        raise GGUFExportError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    c = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if c.get("model_type") not in ARCHS:
        raise GGUFExportError(f"GGUF export supports {', '.join(ARCHS)} models; this one is {c.get('model_type')!r}")
    arch = getattr(gguf.MODEL_ARCH, ARCHS[c["model_type"]])
    n_layers, n_head = c["num_hidden_layers"], c["num_attention_heads"]
    n_kv = c.get("num_key_value_heads") or n_head
    head_dim = c.get("head_dim") or c["hidden_size"] // n_head
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-5))
    w.add_rope_freq_base(float((c.get("rope_parameters") or {}).get("rope_theta") or c.get("rope_theta") or 10000.0))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _tokenizer_metadata(w, folder)
    names = gguf.get_tensor_name_map(arch, n_layers)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    for hf_name, t in state.items():
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise GGUFExportError(f"no GGUF name for tensor {hf_name!r}")
        t = t.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            t = _permute(t, n_head)
        elif hf_name.endswith("k_proj.weight"):
            t = _permute(t, n_kv)
        if t.ndim == 1:
            w.add_tensor(new, t)
        elif quant == "q8_0" and t.shape[-1] % 32 == 0:
            w.add_tensor(new, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(new, t.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@torch.no_grad()
def verify(folder: Path, gguf_file: Path, quant: str, prompts: list[list[int]]) -> dict:
    """Load `gguf_file` back with transformers and compare it with the model in `folder` on `prompts`.

    Raises:
        GGUFExportError: greedy continuations differ, or logits differ by more than TOLERANCE[quant].
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32).eval()
    tok_ref = AutoTokenizer.from_pretrained(folder)
    tok_back = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    probe = "I am still waiting on my card, can you help?"
    same_tokens = tok_ref(probe)["input_ids"] == tok_back(probe)["input_ids"]
    diff, greedy_equal = 0.0, True
    for ids in prompts:
        x = torch.tensor([ids])
        diff = max(diff, float((ref(input_ids=x).logits - back(input_ids=x).logits).abs().max()))
        kw = dict(max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=tok_ref.pad_token_id or 0)
        greedy_equal &= torch.equal(ref.generate(input_ids=x, **kw), back.generate(input_ids=x, **kw))
    result = {"quant": quant, "max_abs_logit_diff": diff, "tolerance": TOLERANCE[quant], "greedy_tokens": GREEDY_TOKENS,
              "greedy_equal": bool(greedy_equal), "tokenizer_equal": bool(same_tokens), "probes": len(prompts)}
    if not (diff <= TOLERANCE[quant]) or not greedy_equal or not same_tokens:
        raise GGUFExportError(f"{gguf_file.name} does not reproduce the model: {result}")
    return result
