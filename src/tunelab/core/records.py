"""The internal record: one example, whatever shape the input file had.

Every stage after ingestion sees records of this one shape (docs/ARCHITECTURE.md); the data stage
writes them to `data/<split>.jsonl`, the renderer turns them into token ids, the evaluator into
prompts, and the server builds them from request bodies. `prompt_text` is the one place a record
becomes the text of its prompt.
"""

from __future__ import annotations

import string
from typing import Any, Callable, TypedDict

IGNORE = -100   # label id of a position that is not a target (PyTorch's cross-entropy ignore_index)


class Source(TypedDict):
    file: str
    line: int | None
    page: int | None


class Record(TypedDict, total=False):
    id: str                       # "train.csv:12": file and 1-based line (or "file:p3" for a page)
    source: Source
    input: dict[str, str]         # columns that feed the prompt template
    output: str | None            # completion or label (None for pretraining text)
    messages: list[dict] | None   # chat shapes: [{"role", "content"}, ...], the answer last
    text: str | None              # raw text (pretraining chunks, documents)
    group: str | None             # records of one group never span two splits
    references: list[str]         # test records with several references (eval.references)


def new_record(rid: str, file: str, line: int | None = None, page: int | None = None) -> Record:
    """An empty record with its id and provenance."""
    return {"id": rid, "source": {"file": file, "line": line, "page": page}, "input": {}, "output": None,
            "messages": None, "text": None, "group": None}


def placeholders(template: str) -> list[str]:
    """The `{name}` fields of a `str.format` template, in order."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


class TemplateError(KeyError):
    """A template placeholder the record has no column for."""

    def __str__(self) -> str:
        return str(self.args[0])


def prompt_text(rec: Record, template: str | None = None) -> str:
    """The text of a record's prompt, before any chat template.

    Raw text records give their text; chat records every turn before the answer, one per line; other
    records their input columns, either filled into `template` (missing values read as "") or joined
    by newlines when there is no template. Deduplication, leakage checks, length statistics, few-shot
    retrieval, the renderer and the server all use this one function.

    Raises:
        TemplateError: `template` names a column the record does not have.
    """
    if rec.get("text") is not None:
        return rec["text"]
    if rec.get("messages"):
        turns = rec["messages"]
        if turns[-1]["role"] == "assistant" and len(turns) > 1:
            turns = turns[:-1]
        return "\n".join(t["content"] for t in turns)
    inputs = rec.get("input") or {}
    if not template:
        return "\n".join("" if v is None else str(v) for v in inputs.values())
    missing = [p for p in placeholders(template) if p not in inputs]
    if missing:
        raise TemplateError(f"{rec.get('id', '?')}: data.template uses {{{missing[0]}}} but the record has only "
                            f"the columns {sorted(inputs)}")
    return template.format(**{k: "" if v is None else v for k, v in inputs.items()})


def completion_text(rec: Record) -> str | None:
    """What the model should answer: the final assistant turn, or the output; None when there is none."""
    if rec.get("messages"):
        last = rec["messages"][-1]
        return last["content"] if last["role"] == "assistant" else None
    out = rec.get("output")
    return None if out is None else str(out)


def map_strings(rec: Record, fn: Callable[[str], str]) -> Record:
    """A copy of `rec` with `fn` applied to every text it carries (inputs, output, turns, text, references)."""
    out: dict[str, Any] = dict(rec)
    out["input"] = {k: fn(v) for k, v in (rec.get("input") or {}).items()}
    if rec.get("output") is not None:
        out["output"] = fn(rec["output"])
    if rec.get("messages"):
        out["messages"] = [{**t, "content": fn(t["content"])} for t in rec["messages"]]
    if rec.get("text") is not None:
        out["text"] = fn(rec["text"])
    if rec.get("references"):
        # Cleaned like `output` (which repeats the first reference), so the two stay equal.
        out["references"] = [fn(r) for r in rec["references"]]
    return out  # type: ignore[return-value]
