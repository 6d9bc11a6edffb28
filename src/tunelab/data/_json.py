"""JSON details the readers need: objects that remember repeated keys, one clear problem for a JSON
array in a JSON Lines file, and the line where each element of a top-level array starts."""

from __future__ import annotations

import json

from tunelab.data.problems import Problems


class JsonObject(dict):
    """A parsed JSON object that remembers the keys it had twice (json keeps the last value silently),
    its nested objects' included as dotted paths."""

    duplicates: tuple[str, ...] = ()
    own: tuple[str, ...] = ()    # keys this object itself repeats

    @classmethod
    def of(cls, pairs: list[tuple[str, object]]) -> "JsonObject":
        obj, dups = cls(), []
        for key, value in pairs:
            if key in obj:
                dups.append(key)
            obj[key] = value
        obj.own = tuple(dups)
        for key, value in obj.items():
            inner = [(key, value)] if isinstance(value, dict) else \
                [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else []
            dups += [f"{path}.{d}" for path, v in inner for d in getattr(v, "duplicates", ())]
        obj.duplicates = tuple(dups)
        return obj


def duplicate_keys(obj, name: str, line: int | None, at: str | None, problems: Problems) -> bool:
    """Record a problem for a JSON object that has a key twice; True when it has."""
    dups = getattr(obj, "duplicates", ())
    if dups:
        problems.add("duplicate_key", name, line, at or dups[0], expected="each key once per object",
                     found=f"{', '.join(repr(d) for d in dups)} twice (the later value would silently replace the earlier)",
                     hint="remove or rename the repeated key")
    return bool(dups)


def json_array(text: str, name: str, problems: Problems) -> bool:
    """A JSON Lines file holding one JSON array instead: one problem with a hint, not one per line."""
    if not text.lstrip().startswith("["):
        return False
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return False
    if not isinstance(doc, list):
        return False
    problems.add("json_array_in_jsonl", name, 1, expected="JSON Lines: one JSON object per line",
                 found=f"one JSON array of {len(doc)} element(s) spanning {text.count(chr(10)) + 1} lines",
                 hint="rename the file to .json or set data.format: json")
    return True


def element_lines(text: str) -> list[int]:
    """The 1-based line where each element of a top-level JSON array starts."""
    pos = text.find("[")
    return [] if pos < 0 else _array_lines(text, pos + 1)[0]


def keyed_element_lines(text: str) -> list[int]:
    """For a top-level object of arrays ({"a": [...], "b": [...]}): the 1-based line where each element
    of each array starts, in document order (what `element_lines` is for a top-level array)."""
    dec, pos, lines = json.JSONDecoder(), text.find("{"), []
    if pos < 0:
        return lines
    pos += 1
    try:
        while True:
            pos = _skip(text, pos, " \t\r\n,")
            if pos >= len(text) or text[pos] == "}":
                return lines
            _, pos = dec.raw_decode(text, pos)          # the key
            pos = _skip(text, pos, " \t\r\n:")
            if text[pos] != "[":
                _, pos = dec.raw_decode(text, pos)      # not an array: skipped
                continue
            found, pos = _array_lines(text, pos + 1)
            lines += found
    except (json.JSONDecodeError, IndexError):
        return lines


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _array_lines(text: str, pos: int) -> tuple[list[int], int]:
    """Lines where the elements of the array whose body starts at `pos` start; and the position after it."""
    dec, lines = json.JSONDecoder(), []
    while True:
        pos = _skip(text, pos, " \t\r\n,")
        if pos >= len(text) or text[pos] == "]":
            return lines, pos + 1
        lines.append(text.count("\n", 0, pos) + 1)
        try:
            _, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return lines, len(text)
