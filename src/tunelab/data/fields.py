"""Columns computed from each record as read (`data.fields`), for data sets whose text or label is not one
flat column: a template whose `{...}` placeholders are paths into the record.

Paths: `name`, `a.b` (a key of an object), `a[0]` (an element of a list), `a[*].b` (every element; the
strings found are joined without a separator, as segmented text is: SNIPS stores an utterance as a list
of {"text": ...} segments, spaces included). Examples: `{scenario}_{intent}` (a label made of two
columns, HWU64), `{data[*].text}` (SNIPS)."""

from __future__ import annotations

import json
import re

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_STEP = re.compile(r"\.?([^.\[\]{}]+)|\[(\d+|\*)\]")
EVERY = None   # the `[*]` step


class PathError(LookupError):
    """A path that does not lead to a value in one record; the message says where it stopped."""


def parse_path(path: str) -> list[str | int | None]:
    """The steps of a path (`a[*].b` -> ["a", None, "b"]).

    Raises:
        ValueError: an empty path or one with characters outside the syntax.
    """
    steps, pos = [], 0
    path = path.strip()
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None or (pos == 0 and path.startswith(".")):
            raise ValueError(f"path {path!r}: cannot read {path[pos:]!r} (use name, a.b, a[0], a[*].b)")
        key, index = m.groups()
        steps.append(key if key is not None else EVERY if index == "*" else int(index))
        pos = m.end()
    if not steps:
        raise ValueError("an empty path: write a column name or a path such as data[*].text")
    return steps


def template_paths(template: str) -> list[str]:
    """The placeholder paths of a field template, each checked.

    Raises:
        ValueError: no placeholder, an unbalanced brace, or a path outside the syntax.
    """
    paths = _PLACEHOLDER.findall(template)
    rest = _PLACEHOLDER.sub("", template)
    if not paths or "{" in rest or "}" in rest:
        raise ValueError(f"field template {template!r}: needs {{path}} placeholders with balanced braces, "
                         "e.g. '{scenario}_{intent}' or '{data[*].text}'")
    for p in paths:
        parse_path(p)
    return paths


def resolve(record, path: str):
    """The value `path` names in `record` (a list for `[*]` steps).

    Raises:
        PathError: a key, index or list missing, said with what was there instead.
    """
    values, where = [record], ""
    for step in parse_path(path):
        nxt = []
        for v in values:
            if step is EVERY:
                if not isinstance(v, list):
                    raise PathError(f"{where or 'the record'} is {_kind(v)}, not a list (at [*])")
                nxt.extend(v)
            elif isinstance(step, int):
                if not isinstance(v, list) or step >= len(v):
                    raise PathError(f"{where or 'the record'} is {_kind(v)}: no element [{step}]")
                nxt.append(v[step])
            else:
                if not isinstance(v, dict) or step not in v:
                    keys = f" (keys: {', '.join(list(v)[:8])})" if isinstance(v, dict) else ""
                    raise PathError(f"{where or 'the record'} is {_kind(v)} without {step!r}{keys}")
                nxt.append(v[step])
        values = nxt
        where += f"[{'*' if step is EVERY else step}]" if not isinstance(step, str) else f"{'.' if where else ''}{step}"
    return values if EVERY in parse_path(path) else values[0]


def render(template: str, record: dict) -> str:
    """The template filled from `record` (lists of strings joined, numbers written out).

    Raises:
        PathError: a placeholder's path is missing in the record, or names an object rather than text.
    """
    def text(path: str) -> str:
        value = resolve(record, path)
        parts = value if isinstance(value, list) else [value]
        if any(isinstance(p, (dict, list)) for p in parts):
            raise PathError(f"{path} is {_kind(value)} of objects, not text: extend the path "
                            f"(e.g. {path}[*].text)")
        return "".join("" if p is None else p if isinstance(p, str) else json.dumps(p) for p in parts)

    return _PLACEHOLDER.sub(lambda m: text(m.group(1)), template)


def _kind(v) -> str:
    if isinstance(v, list):
        return f"a list of {len(v)}"
    return {dict: "an object", str: "a string", type(None): "null"}.get(type(v), type(v).__name__)
