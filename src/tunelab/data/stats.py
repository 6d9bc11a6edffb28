"""Token statistics with the model's tokenizer: length percentiles, over-long examples, label balance."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tunelab.core.records import prompt_text


def prompt_and_completion(rec: dict, template: str | None = None) -> tuple[str, str]:
    """The text a model sees for a record, before the chat template: (prompt, completion)."""
    if rec.get("text") is not None:
        return rec["text"], ""
    return prompt_text(rec, template), rec.get("output") or ""


def _template_overhead(tokenizer) -> int:
    """Tokens the chat template adds around one user and one assistant turn (0 without a template)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return 0
    try:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": ""},
                                             {"role": "assistant", "content": ""}], tokenize=True)
    except Exception:  # templates are user-supplied Jinja: any failure just means "unknown overhead"
        return 0
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return len(ids)


def lengths(records: list[dict], tokenizer, template: str | None = None) -> tuple[np.ndarray, str]:
    """Per-record length in tokens (or whitespace words when no tokenizer is given) and the unit."""
    pairs = [prompt_and_completion(r, template) for r in records]
    if tokenizer is None:
        return np.array([len(p.split()) + len(c.split()) for p, c in pairs], dtype=np.int64), "words"
    texts = [p for p, _ in pairs] + [c for _, c in pairs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    n = len(pairs)
    extra = _template_overhead(tokenizer)  # raw-text (pretrain) records are trained without the template
    return np.array([len(ids[i]) + len(ids[n + i]) + (0 if records[i].get("text") is not None else extra)
                     for i in range(n)], dtype=np.int64), "tokens"


def split_stats(records: list[dict], tokenizer, max_length: int, template: str | None,
                labels: list[str] | None) -> tuple[dict, list[dict]]:
    """Statistics for one split and the records longer than `max_length`."""
    lens, unit = lengths(records, tokenizer, template)
    out: dict = {"examples": len(records), "unit": unit}
    if len(lens):
        pct = np.percentile(lens, [50, 90, 95, 99])
        out.update({"mean": round(float(lens.mean()), 1), "p50": int(pct[0]), "p90": int(pct[1]),
                    "p95": int(pct[2]), "p99": int(pct[3]), "max": int(lens.max())})
    over = [r for r, n in zip(records, lens) if n > max_length]
    out["over_max_length"] = len(over)
    out["max_length"] = max_length
    if labels is not None:
        counts = Counter(str(r.get("output")) for r in records)
        out["labels"] = dict(sorted(counts.items()))
        present = [counts[lab] for lab in labels if counts[lab]]
        out["imbalance"] = round(max(present) / min(present), 2) if present else None
        out["missing_labels"] = [lab for lab in labels if not counts[lab]]
    return out, [{"record": r, "length": int(n)} for r, n in zip(records, lens) if n > max_length]
