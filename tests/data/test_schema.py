"""Shape detection for the common record shapes, and the records they map to."""

from __future__ import annotations

import pytest

from tunelab.data.ingest import Row
from tunelab.data.problems import Problems
from tunelab.core.records import prompt_text
from tunelab.data.schema import decide, detect, make_record


def rows(*objs) -> list[Row]:
    return [Row(o, "f.jsonl", i) for i, o in enumerate(objs, start=1)]


def cols(rs) -> list[str]:
    return list(dict.fromkeys(k for r in rs for k in r.fields))


@pytest.mark.parametrize("obj, message", [
    ({"prompt": "2+2?", "completion": "4"}, "detected: prompt_completion; input_columns=[prompt], output_column=completion"),
    ({"instruction": "Add", "input": "2 2", "output": "4"}, "detected: alpaca; input_columns=[instruction, input], output_column=output"),
    ({"text": "hi", "category": "greet"}, "detected: text_label; input_columns=[text], output_column=category"),
    ({"text": "just prose"}, "detected: text; input_columns=[text]"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
     "detected: messages; messages[].role->role, content->content"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
     "detected: sharegpt; conversations[].from->role, value->content"),
])
def test_detects_each_shape_and_says_so(obj, message):
    rs = rows(obj)
    assert detect(rs, cols(rs)).describe() == message


def test_sharegpt_role_aliases_become_chat_messages():
    rs = rows({"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"},
                                 {"from": "gpt", "value": "hello"}]})
    d, problems = detect(rs, cols(rs)), Problems()
    rec = make_record(rs[0], d, None, problems)
    assert [t["role"] for t in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["output"] == "hello" and prompt_text(rec) == "be brief\nhi" and not problems.items


def test_unknown_role_names_the_field_path():
    rs = rows({"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]})
    problems = Problems()
    assert make_record(rs[0], detect(rs, cols(rs)), None, problems) is None
    [p] = problems.items
    assert (p.kind, p.line, p.field, p.found) == ("unknown_role", 1, "conversations[1].from", "'robot'")


def test_missing_column_suggests_the_closest():
    rs = rows({"text": "a", "category": "x"})
    problems = Problems()
    assert decide(rs, cols(rs), "auto", ["txt"], "categroy", "f.jsonl", problems) is None
    assert [(p.kind, p.field) for p in problems.items] == [("missing_column", "data.input_columns"),
                                                            ("missing_column", "data.output_column")]
    assert problems.items[1].hint.startswith("did you mean 'category'?")


def test_explicit_columns_and_forced_schema_override_detection():
    rs = rows({"question": "q", "body": "b", "answer": "a", "label": "l"})
    d = decide(rs, cols(rs), "auto", ["question", "body"], "label", "f", Problems())
    assert (d.input_columns, d.output_column, d.detected) == (["question", "body"], "label", False)
    forced = detect(rs, cols(rs), "text_label")
    assert (forced.schema, forced.input_columns, forced.output_column) == ("text_label", ["question"], "label")


def test_unknown_shape_is_a_problem_with_a_hint():
    rs = rows({"a": 1, "b": 2})
    problems = Problems()
    assert decide(rs, cols(rs), "auto", [], None, "f.jsonl", problems) is None
    assert problems.items[0].kind == "unknown_schema" and "data.input_columns" in problems.items[0].hint


def test_missing_field_in_one_row_is_located():
    rs = rows({"prompt": "a", "completion": "b"}, {"prompt": "c", "complete": "d"})
    d, problems = detect(rs[:1], cols(rs[:1])), Problems()
    assert make_record(rs[1], d, None, problems) is None
    [p] = problems.items
    assert (p.kind, p.line, p.field) == ("missing_field", 2, "completion")
    assert "did you mean 'complete'?" in p.hint


def test_configured_output_column_on_a_text_column_keeps_the_target():
    # `text` alone is detected as plain text; naming an output column must still make it the target.
    rs = rows({"text": "Tom buys apples at the market", "summary": "Tom buys apples."})
    d = decide(rs, cols(rs), "auto", ["text"], "summary", "f.jsonl", Problems())
    assert d.describe() == "configured: prompt_completion; input_columns=[text], output_column=summary"
    rec = make_record(rs[0], d, None, Problems())
    assert rec["input"] == {"text": "Tom buys apples at the market"} and rec["output"] == "Tom buys apples."
    assert rec["text"] is None
