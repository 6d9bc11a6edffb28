"""Record shapes: detect which common shape the rows have, say so, and map rows to internal records.

The internal record is `core.records.Record`:
`{"id", "source": {"file", "line", "page"}, "input": {...}, "output", "messages", "text", "group"}`.
For chat shapes `messages` holds the whole conversation and `output` repeats the final assistant
turn, so label statistics, leakage checks and evaluation need not know the shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tunelab.core.records import Record, new_record
from tunelab.data.ingest import Row
from tunelab.data.problems import Problems, did_you_mean

ROLE_ALIASES = {"user": "user", "human": "user", "prompter": "user", "question": "user",
                "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                "chatgpt": "assistant", "answer": "assistant", "system": "system", "tool": "tool",
                "function": "tool", "ipython": "tool"}
TEXT_NAMES = ("text", "sentence", "utterance", "content", "document", "review", "tweet", "comment",
              "query", "question", "input", "body")
LABEL_NAMES = ("label", "labels", "category", "class", "intent", "target", "sentiment", "topic", "output")
PROMPT_NAMES = ("prompt", "question", "query", "instruction", "source")
COMPLETION_NAMES = ("completion", "response", "answer", "chosen", "target")


@dataclass
class Decision:
    """The shape taken for a split's rows and which fields feed input, output and chat turns."""

    schema: str
    input_columns: list[str] = field(default_factory=list)
    output_column: str | None = None
    chat_column: str | None = None
    role_key: str = "role"
    content_key: str = "content"
    detected: bool = True

    def describe(self) -> str:
        """The decision in one line, e.g. 'detected: sharegpt; from->role, value->content'."""
        head = f"{'detected' if self.detected else 'configured'}: {self.schema}"
        if self.schema in ("messages", "sharegpt"):
            return f"{head}; {self.chat_column}[].{self.role_key}->role, {self.content_key}->content"
        cols = f"input_columns=[{', '.join(self.input_columns)}]"
        return f"{head}; {cols}" + (f", output_column={self.output_column}" if self.output_column else "")


def _first(names: tuple[str, ...], columns: list[str], exclude: tuple[str, ...] = ()) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower and lower[n] not in exclude), None)


def _chat_keys(rows: list[Row], column: str) -> tuple[str, str] | None:
    for r in rows[:50]:
        turns = r.fields.get(column)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            keys = set(turns[0])
            role = next((k for k in ("role", "from", "speaker", "author") if k in keys), None)
            content = next((k for k in ("content", "value", "text", "message") if k in keys), None)
            if role and content:
                return role, content
    return None


def detect(rows: list[Row], columns: list[str], schema: str = "auto") -> Decision | None:
    """The shape of `rows` (None when no known shape fits); `schema` forces one shape."""
    def want(shape: str) -> bool:
        return schema in ("auto", shape)

    chat = schema in ("auto", "messages", "sharegpt")
    for col, shape in (("messages", "messages"), ("conversations", "sharegpt"), ("conversation", "sharegpt")):
        keys = _chat_keys(rows, col) if chat and col in columns else None
        if keys:
            return Decision(shape if schema == "auto" else schema, chat_column=col, role_key=keys[0],
                            content_key=keys[1], detected=schema == "auto")
    lower = [c.lower() for c in columns]
    if want("alpaca") and "instruction" in lower and "output" in lower:
        ins = [c for c in ("instruction", "input") if c in lower]
        return Decision("alpaca", [columns[lower.index(c)] for c in ins], columns[lower.index("output")],
                        detected=schema == "auto")
    prompt, completion = _first(PROMPT_NAMES, columns), _first(COMPLETION_NAMES, columns)
    if want("prompt_completion") and prompt and completion:
        return Decision("prompt_completion", [prompt], completion, detected=schema == "auto")
    text = _first(TEXT_NAMES, columns)
    label = _first(LABEL_NAMES, columns, exclude=(text,) if text else ())
    if want("text_label") and text and label:
        return Decision("text_label", [text], label, detected=schema == "auto")
    if want("text") and text:
        return Decision("text", [text], None, detected=schema == "auto")
    if len(columns) == 1 and schema in ("auto", "text"):
        return Decision("text", [columns[0]], None, detected=schema == "auto")
    return None


def decide(rows: list[Row], columns: list[str], schema: str, input_columns: list[str],
           output_column: str | None, file: str, problems: Problems) -> Decision | None:
    """Detect or apply the configured shape; explicit columns override detected ones.

    Missing columns are recorded as problems with a did-you-mean hint.
    """
    for col, key in [(c, "data.input_columns") for c in input_columns] + [(output_column, "data.output_column")]:
        if col is not None and col not in columns:
            problems.add("missing_column", file, 1, key, expected=f"a column named '{col}'",
                         found=f"columns {columns}", hint=did_you_mean(col, columns))
    if any(p.kind == "missing_column" for p in problems.items):
        return None
    d = detect(rows, columns, schema)
    if input_columns or output_column:
        base = d or Decision("prompt_completion" if output_column else "text", detected=False)
        if base.schema in ("messages", "sharegpt") and not input_columns:
            return base
        shape = base.schema if base.schema not in ("messages", "sharegpt") else "prompt_completion"
        if shape == "text" and output_column:
            shape = "prompt_completion"   # a detected plain-text column plus a configured target
        return Decision(shape, input_columns or base.input_columns, output_column or base.output_column,
                        detected=False)
    if d is None:
        problems.add("unknown_schema", file, 1, expected="prompt/completion, messages, alpaca, sharegpt, "
                     "text+label or text", found=f"columns {columns}",
                     hint="set data.input_columns and data.output_column (or data.schema)")
    return d


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _text(value, row: Row, field: str, problems: Problems) -> str:
    """A field's value as text; a value that is not a string (7, true, {"x": 1}) is converted, and the
    conversion reported as a warning, so that it is counted and listed rather than silent."""
    if value is not None and not isinstance(value, str):
        kind = "object" if isinstance(value, dict) else "list" if isinstance(value, list) else type(value).__name__
        text = _as_text(value)
        problems.add("converted_value", row.file, row.line, field, expected="a string",
                     found=f"{kind} {text[:40]!r}", severity="warning",
                     hint="converted to its text" + (" (JSON)" if kind in ("object", "list") else ""))
        return text
    return _as_text(value)


def make_record(row: Row, d: Decision, group_by: str | None, problems: Problems) -> Record | None:
    """The internal record for one row, or None after recording why it cannot be one."""
    rec = new_record(row.id, row.file, row.line, row.page)
    f = row.fields
    if group_by:
        if group_by not in f:
            problems.add("missing_field", row.file, row.line, group_by, expected="a group value",
                         found="no such field", hint=did_you_mean(group_by, list(f)))
            return None
        rec["group"] = _as_text(f[group_by])
    if d.schema in ("messages", "sharegpt"):
        turns = _turns(row, d, problems)
        if turns is None:
            return None
        rec["messages"] = turns
        rec["output"] = turns[-1]["content"] if turns[-1]["role"] == "assistant" else None
        return rec
    missing = [c for c in d.input_columns + ([d.output_column] if d.output_column else []) if c not in f]
    if missing:
        problems.add("missing_field", row.file, row.line, missing[0], expected=f"field '{missing[0]}'",
                     found=f"fields {list(f)}", hint=did_you_mean(missing[0], list(f)))
        return None
    if d.schema == "text":
        rec["text"] = "\n".join(_text(f[c], row, c, problems) for c in d.input_columns)
        return rec
    rec["input"] = {c: _text(f[c], row, c, problems) for c in d.input_columns}
    rec["output"] = _text(f[d.output_column], row, d.output_column, problems) if d.output_column else None
    return rec


def with_references(rec: dict, row: Row, columns: list[str], problems: Problems) -> dict | None:
    """`rec` with `references` (the row's non-empty values of `columns`, in order) and `output` = the
    first of them; None after recording a problem when the row has no reference at all."""
    refs = [_as_text(row.fields[c]) for c in columns if c in row.fields]
    refs = [r for r in refs if r.strip()]
    if not refs:
        problems.add("missing_reference", row.file, row.line, columns[0],
                     expected=f"a non-empty value in one of {columns} (eval.references)",
                     found=f"fields {list(row.fields)}", hint=did_you_mean(columns[0], list(row.fields)))
        return None
    return {**rec, "output": refs[0], "references": refs}


def _turns(row: Row, d: Decision, problems: Problems) -> list[dict] | None:
    turns = row.fields.get(d.chat_column)
    if not isinstance(turns, list) or not turns:
        problems.add("bad_conversation", row.file, row.line, d.chat_column, expected="a non-empty list of turns",
                     found=type(turns).__name__ if turns is not None else "nothing")
        return None
    out = []
    for i, t in enumerate(turns):
        path = f"{d.chat_column}[{i}]"
        if not isinstance(t, dict) or d.role_key not in t or d.content_key not in t:
            problems.add("bad_conversation", row.file, row.line, path,
                         expected=f"an object with '{d.role_key}' and '{d.content_key}'",
                         found=repr(t)[:60])
            return None
        role = ROLE_ALIASES.get(str(t[d.role_key]).strip().lower())
        if role is None:
            problems.add("unknown_role", row.file, row.line, f"{path}.{d.role_key}",
                         expected=f"one of {sorted(set(ROLE_ALIASES))}", found=repr(t[d.role_key]))
            return None
        out.append({"role": role, "content": _text(t[d.content_key], row, f"{path}.{d.content_key}", problems)})
    return out
