"""Checks on records that a person can act on: columns and template placeholders that do not exist,
empty texts, conflicting labels, labels that only held-out data has. Each finding is a located Problem."""

from __future__ import annotations

import string
from collections import Counter

from tunelab.data import dedup
from tunelab.data.problems import Problems, did_you_mean
from tunelab.core.records import prompt_text
from tunelab.data.schema import Decision


def check_columns(decision: Decision, columns: list[str], file: str, problems: Problems) -> None:
    """Held-out files must have the columns the train decision uses."""
    wanted = [decision.chat_column] if decision.chat_column else decision.input_columns + [decision.output_column]
    for col in wanted:
        if col and col not in columns:
            problems.add("missing_column", file, 1, col, expected=f"a column named '{col}' (as in train)",
                         found=f"columns {columns}", hint=did_you_mean(col, columns))


def check_reference_columns(columns: list[str], found: list[str], file: str, problems: Problems) -> None:
    """Every column named in eval.references must exist in the test file."""
    for col in columns:
        if col not in found:
            problems.add("missing_column", file, 1, "eval.references", expected=f"a column named '{col}'",
                         found=f"columns {found}", hint=did_you_mean(col, found))


def check_template(template: str | None, decision: Decision, file: str, problems: Problems) -> None:
    """Every `{placeholder}` of data.template must name an input column."""
    if not template or decision.chat_column or decision.schema == "text":
        return
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        problems.add("bad_template", "config", None, "data.template", expected="a str.format template",
                     found=str(e))
        return
    for name in names:
        if name not in decision.input_columns:
            problems.add("bad_template", file, 1, "data.template", expected=f"a placeholder among the input "
                         f"columns {decision.input_columns}", found=f"{{{name}}}",
                         hint=did_you_mean(name, decision.input_columns) + " (or add it to data.input_columns)")


def drop_empty(records: list[dict], decision: Decision, problems: Problems) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Records with an empty prompt side or nothing to learn as the target, reported as warnings:
    returns (kept, dropped with reasons)."""
    out, dropped = [], []
    for rec in records:
        src, empty = rec["source"], None
        if not prompt_text(rec).strip():
            empty = ("empty_text", decision.input_columns[0] if decision.input_columns else "text", "non-empty text")
        elif decision.output_column and not str(rec.get("output") or "").strip():
            empty = ("empty_output", decision.output_column, "a non-empty target")
        elif decision.chat_column and rec.get("output") is None:
            empty = ("no_assistant_turn", decision.chat_column, "a conversation ending with an assistant turn")
        if empty:
            found = "empty after cleaning" if empty[0] != "no_assistant_turn" else "a last turn by another role"
            problems.add(empty[0], src["file"], src.get("line"), empty[1], expected=empty[2], found=found,
                         severity="warning")
            dropped.append((rec, empty[0]))
        else:
            out.append(rec)
    return out, dropped


def conflicts(train: list[dict], problems: Problems) -> list[dict]:
    """Texts that occur (after normalisation) with two or more different outputs in train."""
    found = []
    texts = [prompt_text(r) for r in train]
    for g in dedup.exact_groups(texts):
        outs = sorted({str(train[i].get("output")) for i in g})
        if len(outs) > 1 and train[g[0]].get("output") is not None:
            src = train[g[0]]["source"]
            where = ", ".join(f"{train[i].get('output')} ({train[i]['id']})" for i in g[:4])
            problems.add("conflicting_labels", src["file"], src.get("line"), None, expected="one output per text",
                         found=where, severity="warning", hint="dedup keeps the first; check the labels")
            found.append({"text": texts[g[0]][:160], "outputs": outs, "ids": [train[i]["id"] for i in g]})
    return found


def check_labels(recs: dict, labels: list[str] | None, problems: Problems) -> None:
    """With a closed label set, every held-out label must occur in train."""
    if labels is None:
        return
    known = set(labels)
    for s in ("validation", "test"):
        first: dict[str, dict] = {}
        counts = Counter()
        for r in recs[s]:
            if r.get("output") not in known:
                first.setdefault(r["output"], r)
                counts[r["output"]] += 1
        for lab, r in first.items():
            problems.add("label_only_in_" + s, r["source"]["file"], r["source"].get("line"), "output",
                         expected="a label that occurs in train", found=f"{lab!r} ({counts[lab]} example(s))",
                         hint="the model can never learn it; add training examples or remove them")


def rare_labels(train: list[dict], max_labels: int, problems: Problems) -> bool:
    """Outputs that form a closed label set except for a few labels seen once: report each such label
    (without this check they would silently turn classification into open-ended generation).
    True when any was found."""
    outs = Counter(r.get("output") for r in train)
    if not outs or None in outs or len(outs) > max_labels:
        return False
    once = [lab for lab, n in outs.items() if n == 1]
    repeated = sum(n for n in outs.values() if n > 1)
    if not once or len(outs) - len(once) < 2 or repeated < 0.9 * len(train):
        return False
    first = {r["output"]: r for r in train if r["output"] in set(once)}
    for lab in once:
        src = first[lab]["source"]
        problems.add("rare_label", src["file"], src.get("line"), "output",
                     expected=f"a label seen at least twice in train, as the other {len(outs) - len(once)} labels are "
                              f"({repeated} of {len(train)} examples)",
                     found=f"{lab!r} once",
                     hint="one-off labels would silently turn the closed label set into open-ended generation: fix or "
                          "remove the row, add examples, or set eval.constrained: off to treat outputs as free text")
    return True


def check_sizes(recs: dict, labels: list[str] | None, where: dict[str, str], why: dict[str, str],
                problems: Problems) -> None:
    """Refuse degenerate data before training: an empty validation or test split, or one label only.

    Args:
        where: per split, the file (or config key) a problem points at.
        why: per split, how it came to be empty (e.g. "carved 10% of 3 training examples -> 0").
    """
    for s in ("validation", "test"):
        if not recs[s]:
            problems.add("empty_split", where[s], expected=f"at least 1 {s} example", found=why[s],
                         hint=f"add data, supply data.{s}, or raise data.{'val' if s == 'validation' else s}_fraction"
                              if "carved" in why[s] else "check the file and the rows dropped from it")
    if labels is not None and len(labels) == 1 and recs["train"]:
        problems.add("single_label", where["train"], field="output", expected="at least 2 different labels in train",
                     found=f"only {labels[0]!r} ({len(recs['train'])} examples)",
                     hint="every system would score 1.0 on a single class: add examples of the other labels")
