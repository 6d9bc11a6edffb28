"""Documents to a continued-pretraining corpus: token windows with overlap, provenance kept."""

from __future__ import annotations

from collections import defaultdict


def chunk(records: list[dict], tokenizer, size: int, overlap: int) -> list[dict]:
    """Split each document (the pages of one file, in order) into windows of `size` tokens that share
    `overlap` tokens with the previous window; each chunk names the file and the page it starts on.

    Without a tokenizer, whitespace-separated words stand in for tokens.
    """
    if overlap >= size:
        raise ValueError(f"data.chunk_overlap ({overlap}) must be smaller than data.chunk_tokens ({size})")
    docs: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        docs[rec["source"]["file"]].append(rec)
    out = []
    for file, pages in docs.items():
        ids, page_of = [], []
        for rec in pages:
            piece = _encode(tokenizer, rec["text"] + "\n\n")
            ids += piece
            page_of += [rec] * len(piece)
        step = size - overlap
        for k, start in enumerate(range(0, max(1, len(ids) - overlap), step)):
            window = ids[start:start + size]
            if not window:
                break
            first = page_of[start]
            out.append({"id": f"{file}#c{k}", "source": dict(first["source"]), "input": {}, "output": None,
                        "messages": None, "text": _decode(tokenizer, window).strip(),
                        "group": first.get("group") or file})
    return out


def _encode(tokenizer, text: str) -> list:
    if tokenizer is None:
        return text.split()
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _decode(tokenizer, ids: list) -> str:
    if tokenizer is None:
        return " ".join(ids)
    return tokenizer.decode(ids)
