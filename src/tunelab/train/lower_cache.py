"""Work done once: the frozen lower layers of a classifier run once per example, not once per step.

With `method.freeze_below: K` layers 0..K-1 carry no adapter and never change, so their output for an
example is the same in every epoch and at every validation. `add_lower_hidden` computes it once
(inference mode, batches of similar length) and stores it with each example as `hidden`; a step then
runs only layers K.. + final norm + head on it (`cached_logits`). The decoder's modules are swapped
only for the duration of one call, so parameter names (what checkpoints and adapters save) never
change, and the head pools and scores exactly as in the uncached forward.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from tunelab.core.log import progress
from tunelab.train.collate import PAD_MULTIPLE, round_up

if TYPE_CHECKING:   # tunelab.models imports TASKS, which imports the objectives that import this module
    from tunelab.models import Precision

log = logging.getLogger(__name__)

# Set on the decoder by `add_lower_hidden`: how many bottom layers the cached `hidden` already holds.
CACHED_BELOW = "tunelab_cached_below"


def decoder_of(model: nn.Module) -> nn.Module:
    """The transformer under the head (e.g. LlamaModel), through DDP and PEFT wrappers."""
    inner = model
    while isinstance(getattr(inner, "module", None), nn.Module):   # DistributedDataParallel
        inner = inner.module
    while callable(getattr(inner, "get_base_model", None)):
        base = inner.get_base_model()
        if base is inner:
            break
        inner = base
    return inner.base_model


class _Given(nn.Module):
    """Stands in for the token embedding during one call: returns the batch's cached hidden states."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hidden


@contextmanager
def _swapped(decoder: nn.Module, **modules: nn.Module):
    old = {name: getattr(decoder, name) for name in modules}
    for name, module in modules.items():
        setattr(decoder, name, module)
    try:
        yield
    finally:
        for name, module in old.items():
            setattr(decoder, name, module)


def _padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, the width rounded up to a multiple of PAD_MULTIPLE."""
    width = round_up(max(len(r) for r in rows), PAD_MULTIPLE)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()   # not inference_mode: the cached tensors feed autograd-recorded steps later
def add_lower_hidden(model: nn.Module, features: list[dict], below: int, pad_id: int, prec: Precision,
                     batch_size: int = 64, desc: str = "frozen layers") -> list[dict]:
    """Each feature with `hidden`: the output of layers 0..below-1 for its tokens ([tokens, hidden size])."""
    decoder = decoder_of(model)
    dtype = torch.bfloat16 if prec.bf16 else decoder.embed_tokens.weight.dtype
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[dict] = [{}] * len(features)
    start_s = time.time()
    from tunelab.models.load import POOLING_OFF   # not at import: tunelab.models imports TASKS, which imports this module

    setattr(decoder, POOLING_OFF, True)   # the states stay per token (model.pooling acts on the final ones)
    with _swapped(decoder, layers=decoder.layers[:below], norm=nn.Identity()):
        for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[start:start + batch_size]
            ids, mask = _padded([features[i]["input_ids"] for i in idx], pad_id)
            with prec.autocast():
                hidden = decoder(input_ids=ids.to(prec.device), attention_mask=mask.to(prec.device),
                                 use_cache=False).last_hidden_state
            for row, i in enumerate(idx):
                n = len(features[i]["input_ids"])
                out[i] = {**features[i], "hidden": hidden[row, :n].to("cpu", dtype).clone()}
    setattr(decoder, CACHED_BELOW, below)
    setattr(decoder, POOLING_OFF, False)
    tokens = sum(len(f["input_ids"]) for f in features)
    log.info(f"{desc}: layers 0..{below - 1} run once for {len(features)} examples ({tokens} tokens) in "
             f"{time.time() - start_s:.1f}s, kept as {dtype} ({tokens * hidden.shape[-1] * torch.finfo(dtype).bits / 8e6:.0f} MB); "
             f"each training step runs only layers {below}..{len(decoder.layers) - 1}")
    return out


def cached_logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    """The head's logits for a batch whose `hidden` holds the cached lower layers' output."""
    decoder = decoder_of(model)
    below = getattr(decoder, CACHED_BELOW, None)
    if below is None:
        raise ValueError("the batch carries cached hidden states but the model was not prepared with add_lower_hidden")
    hidden = inputs["hidden"].to(decoder.embed_tokens.weight.dtype)
    with _swapped(decoder, layers=decoder.layers[below:], embed_tokens=_Given(hidden)):
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def cached_collator(pad_id: int):
    """Right-padded `input_ids`, `attention_mask`, `hidden` (zeros at padding) and `labels` of a batch."""

    def collate(features: list[dict]) -> dict:
        ids, mask = _padded([f["input_ids"] for f in features], pad_id)
        first = features[0]["hidden"]
        hidden = first.new_zeros((len(features), ids.shape[1], first.shape[-1]))
        for i, f in enumerate(features):
            hidden[i, :f["hidden"].shape[0]] = f["hidden"]
        labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "hidden": hidden, "labels": labels}

    return collate
