"""The forgetting probe: did fine-tuning damage what the model knew about ordinary English?

Two numbers on a general-English text the model was not tuned on (`resources/general_english.txt`,
public domain, sources in `resources/SOURCES.md`): the perplexity of the base and of the fine-tuned
model, and the mean per-token KL divergence KL(base || tuned) between their next-token distributions.
For a PEFT model the base is the same object with its adapter disabled, so no second copy of the
weights is loaded; for full fine-tuning the caller passes the base model.
"""

from __future__ import annotations

import contextlib
from importlib import resources
from typing import Any, Iterator, Sequence

import torch

from tunelab.core.log import progress
from tunelab.evaluate.metrics import perplexity as _perplexity

PROBE_FILE = "general_english.txt"


def probe_texts() -> list[str]:
    """The bundled general-English text as one document."""
    text = resources.files("tunelab").joinpath("resources", PROBE_FILE).read_text(encoding="utf-8")
    return [text]


def token_windows(tokenizer, texts: Sequence[str], max_tokens: int, seq_len: int = 256) -> torch.Tensor:
    """The texts tokenized back to back, cut to `max_tokens`, as rows of `seq_len` (last row padded with -1)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    rows = max(1, -(-len(ids) // seq_len))
    out = torch.full((rows, seq_len), -1, dtype=torch.long)
    flat = torch.tensor(ids, dtype=torch.long)
    out.view(-1)[: len(ids)] = flat
    return out


def _batches(windows: torch.Tensor, batch_size: int, pad_id: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(windows), batch_size):
        rows = windows[start:start + batch_size]
        mask = rows >= 0
        ids = torch.where(mask, rows, torch.full_like(rows, pad_id))
        yield ids.to(device), mask.long().to(device)


def _log_probs(model, ids: torch.Tensor, mask: torch.Tensor, autocast_dtype) -> torch.Tensor:
    amp = (torch.autocast(ids.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with amp:
        logits = model(input_ids=ids, attention_mask=mask).logits
    # Softmax in fp32: in bf16 the small probabilities that dominate perplexity and KL round away.
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _base_log_probs(model, base, ids: torch.Tensor, mask: torch.Tensor, autocast_dtype) -> torch.Tensor:
    """Log-probabilities of the base model: `base` if given, else `model` with its PEFT adapter off."""
    if base is not None:
        dev = _device(base)
        return _log_probs(base, ids.to(dev), mask.to(dev), autocast_dtype).to(ids.device)
    with model.disable_adapter():
        return _log_probs(model, ids, mask, autocast_dtype)


@contextlib.contextmanager
def _eval_mode(*models):
    states = [(m, m.training) for m in models if m is not None]
    for m, _ in states:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in states:
            m.train(was_training)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _score(model, tokenizer, texts, max_tokens, *, base, compare, seq_len, batch_size, autocast_dtype) -> dict[str, Any]:
    """Summed NLL of model (and base), summed KL(base || model), and the scored token count."""
    windows = token_windows(tokenizer, texts if texts is not None else probe_texts(), max_tokens, seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    compared = compare and (base is not None or _is_peft(model))
    sums: dict[str, Any] = {"nll": 0.0, "base_nll": 0.0, "kl": 0.0, "tokens": 0, "compared": compared}
    batches = progress(_batches(windows, batch_size, pad_id, _device(model)), total=-(-len(windows) // batch_size),
                       desc="forgetting probe", unit="batch")
    with torch.inference_mode(), _eval_mode(model, base):
        for ids, mask in batches:
            target = ids[:, 1:].unsqueeze(-1)
            scored = (mask[:, 1:] * mask[:, :-1]).bool()
            lp = _log_probs(model, ids, mask, autocast_dtype)
            sums["nll"] -= lp.gather(-1, target).squeeze(-1)[scored].sum().item()
            sums["tokens"] += int(scored.sum())
            if not compared:
                continue
            blp = _base_log_probs(model, base, ids, mask, autocast_dtype)
            sums["base_nll"] -= blp.gather(-1, target).squeeze(-1)[scored].sum().item()
            # kl_div(input=log q, target=log p) sums p * (log p - log q): KL(base || tuned) per position.
            kl = torch.nn.functional.kl_div(lp, blp, log_target=True, reduction="none").sum(-1)
            sums["kl"] += kl[scored].sum().item()
    return sums


def perplexity(model, tokenizer, texts: Sequence[str] | None = None, max_tokens: int = 2048, *,
               seq_len: int = 256, batch_size: int = 4, autocast_dtype: torch.dtype | None = None) -> float:
    """Perplexity of `model` on `texts` (default: the bundled general-English text), at most `max_tokens`."""
    s = _score(model, tokenizer, texts, max_tokens, base=None, compare=False, seq_len=seq_len,
               batch_size=batch_size, autocast_dtype=autocast_dtype)
    return _perplexity(s["nll"], s["tokens"])


def mean_kl(model, tokenizer, texts: Sequence[str] | None = None, max_tokens: int = 2048, *, base=None,
            seq_len: int = 256, batch_size: int = 4, autocast_dtype: torch.dtype | None = None) -> float:
    """Mean per-token KL(base || model) in nats; base = `base`, or `model` with its PEFT adapter disabled.

    Raises:
        ValueError: no base given and `model` is not a PEFT model.
    """
    result = forgetting_probe(model, tokenizer, texts, max_tokens, base=base, seq_len=seq_len,
                              batch_size=batch_size, autocast_dtype=autocast_dtype)
    if result["kl_mean"] is None:
        raise ValueError("mean_kl needs a base model: pass base=..., or a PEFT model (adapter disabled = base)")
    return result["kl_mean"]


def forgetting_probe(model, tokenizer, texts: Sequence[str] | None = None, max_tokens: int = 2048, *,
                     base=None, seq_len: int = 256, batch_size: int = 4,
                     autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Base and tuned perplexity, their relative change, and mean KL(base || tuned) in one pass.

    Returns:
        `{"perplexity", "perplexity_base", "perplexity_change", "kl_mean", "tokens", "text"}`;
        the base figures are None when there is no base (not PEFT and `base` not given).
        `perplexity_change` is tuned / base - 1 (0.1 = 10% worse).
    """
    s = _score(model, tokenizer, texts, max_tokens, base=base, compare=True, seq_len=seq_len,
               batch_size=batch_size, autocast_dtype=autocast_dtype)
    tuned = _perplexity(s["nll"], s["tokens"])
    result: dict[str, Any] = {"perplexity": tuned, "perplexity_base": None, "perplexity_change": None,
                              "kl_mean": None, "tokens": s["tokens"],
                              "text": PROBE_FILE if texts is None else "caller-supplied"}
    if s["compared"] and s["tokens"]:
        before = _perplexity(s["base_nll"], s["tokens"])
        result.update(perplexity_base=before, perplexity_change=tuned / before - 1.0,
                      kl_mean=s["kl"] / s["tokens"])
    return result


def check(result: dict[str, Any], forgetting_max: float | None) -> str | None:
    """A failure message when the probe's perplexity rose by more than `forgetting_max`, else None."""
    change = result.get("perplexity_change")
    if forgetting_max is None or change is None or change <= forgetting_max:
        return None
    return (f"forgetting: perplexity on the general-English probe rose {change:+.1%} "
            f"({result['perplexity_base']:.2f} -> {result['perplexity']:.2f}), above eval.forgetting_max="
            f"{forgetting_max:.0%}")
