"""Where the transformer blocks, the embeddings and the head of a model are, found by structure.

Methods that act per layer (freeze top-k, gradual unfreezing, layer-wise lr decay, bottleneck
adapters) need the same three answers for Llama, BERT, GPT-2 and friends, with or without a PEFT
wrapper; they are computed here once, from module structure rather than per-architecture tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# The new, randomly initialised classification head of *ForSequenceClassification models
# (the names PEFT also uses for `modules_to_save`).
TASK_HEAD_NAMES = ("classifier", "score")


@dataclass
class Parts:
    """A model's parameters split into embeddings, transformer layers (bottom first) and head."""

    embeddings: list[tuple[str, nn.Parameter]]
    layers: list[list[tuple[str, nn.Parameter]]]
    head: list[tuple[str, nn.Parameter]]

    def groups_top_down(self) -> list[list[tuple[str, nn.Parameter]]]:
        """Head, top layer, ..., bottom layer, embeddings: the ULMFiT unfreezing order."""
        return [self.head, *reversed(self.layers), self.embeddings]


def find_layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks: the largest list of same-class modules.

    Raises:
        ValueError: the model has no such list (not a transformer this code knows how to split).
    """
    best: tuple[str, nn.ModuleList] | None = None
    best_size = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"{type(model).__name__}: found no list of transformer layers to split by layer")
    return best


def split_parts(model: nn.Module) -> Parts:
    """Split parameters into embeddings / layers / head by registration order around the layer stack.

    Hugging Face models register modules in forward order, so what comes after the layer stack
    (final norm, pooler, lm_head, classifier) is the head and what comes before is the embeddings.
    A tied output embedding counts as head: it is the same tensor the head trains.
    """
    stack_name, stack = find_layer_stack(model)
    in_layer = {id(p): i for i, layer in enumerate(stack) for p in layer.parameters()}
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = {id(p) for p in out_emb.parameters()} if isinstance(out_emb, nn.Module) else set()
    embeddings, head = [], []
    layers: list[list[tuple[str, nn.Parameter]]] = [[] for _ in stack]
    seen_stack = False
    for name, p in model.named_parameters():
        if id(p) in in_layer:
            layers[in_layer[id(p)]].append((name, p))
            seen_stack = True
        elif seen_stack or id(p) in tied:
            head.append((name, p))
        else:
            embeddings.append((name, p))
    if not any(layers):
        raise ValueError(f"{type(model).__name__}: layer stack '{stack_name}' holds no parameters")
    return Parts(embeddings=embeddings, layers=layers, head=head)


def task_head_names(model: nn.Module) -> list[str]:
    """Names of the classification head modules present on `model` (e.g. ['classifier'])."""
    return [n for n in TASK_HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]


def depth_of(parts: Parts) -> dict[int, int]:
    """Parameter id -> depth below the top (head 0, top layer 1, ..., embeddings L+1)."""
    return {id(p): d for d, group in enumerate(parts.groups_top_down()) for _, p in group}
