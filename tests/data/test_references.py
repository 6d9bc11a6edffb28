"""`eval.references`: test records carry every reference summary, even without the train's output column."""

from __future__ import annotations

import json

import pytest

from tunelab.config import config_from_dict
from tunelab.data import DataError, prepare

from capture import captured
from conftest import CARD, FEES, TOPUP, write_jsonl

REFS = ["summary1", "summary2", "summary3"]


def dialogue(text: str) -> str:
    return f"#Person1#: {text}\n#Person2#: Let me check that for you right away."


def train_rows() -> list[dict]:
    """DialogSum dev shape: dialogue + one summary (15 distinct dialogues)."""
    return [{"fname": f"dev_{i}", "dialogue": dialogue(t), "summary": f"#Person1# asks about case {i}."}
            for i, t in enumerate(CARD + TOPUP + FEES)]


def held_out_rows() -> list[dict]:
    """DialogSum test shape: dialogue + summary1..3 and no `summary` column."""
    texts = ["Could you send the new card to my office instead of my home address please",
             "Is it free to pay in shops abroad with the card or do you add a fee",
             "My top up from Apple Pay vanished from the app this morning without a trace"]
    rows = []
    for i, t in enumerate(texts):
        rows.append({"fname": f"test_{i}", "dialogue": dialogue(t), "summary1": f"First summary {i}.",
                     "summary2": f"Second &amp; summary {i}.", "summary3": f"Third summary {i}."})
    rows[1]["summary3"] = "   "  # an empty reference is left out, not scored as ""
    return rows


def make_cfg(tmp_path, references=REFS, test="test.jsonl", **data):
    raw = {"name": "t", "base_dir": str(tmp_path), "runs_dir": str(tmp_path / "runs"),
           "data": {"train": "train.jsonl", "test": test, "input_columns": ["dialogue"],
                    "output_column": "summary", **data},
           "eval": {"references": references}}
    if test is None:
        raw["data"].pop("test")
    return config_from_dict(raw)


def prep(cfg, tmp_path, tokenizer=None):
    with captured() as lines:
        out = prepare(cfg, tmp_path / "out", tokenizer)
    return out, lines


def write_corpus(tmp_path, tests=None):
    write_jsonl(tmp_path / "train.jsonl", train_rows())
    write_jsonl(tmp_path / "test.jsonl", tests if tests is not None else held_out_rows())


def test_test_records_carry_references_and_first_as_output(tmp_path):
    write_corpus(tmp_path)
    out, _ = prep(make_cfg(tmp_path), tmp_path)
    test = {r["id"]: r for r in out.splits["test"]}
    assert set(test) == {"test.jsonl:1", "test.jsonl:2", "test.jsonl:3"}
    # The html cleaning op decodes &amp; in references as it does in outputs.
    assert test["test.jsonl:1"]["references"] == ["First summary 0.", "Second & summary 0.", "Third summary 0."]
    assert test["test.jsonl:2"]["references"] == ["First summary 1.", "Second & summary 1."]
    assert all(r["output"] == r["references"][0] for r in test.values())
    for split in ("train", "validation"):
        assert out.splits[split] and all("references" not in r for r in out.splits[split])
        assert all(r["output"].startswith("#Person1# asks about case") for r in out.splits[split])
    on_disk = [json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    assert on_disk == out.splits["test"]
    assert out.manifest["decisions"]["references"] == REFS
    assert out.manifest["accounting"]["test"] == {"read": 3, "kept": 3, "dropped": {}, "moved": {},
                                                  "balanced": True}


def test_without_references_a_test_file_lacking_the_output_column_fails(tmp_path):
    write_corpus(tmp_path)
    with pytest.raises(DataError, match=r"test.jsonl:1 \[summary\]: missing_column"):
        prep(make_cfg(tmp_path, references=None), tmp_path)


def test_row_without_any_reference_is_a_located_problem(tmp_path):
    rows = held_out_rows()
    rows[2].update(summary1="", summary2=None)
    del rows[2]["summary3"]
    write_corpus(tmp_path, rows)
    with pytest.raises(DataError) as e:
        prep(make_cfg(tmp_path), tmp_path)
    assert "test.jsonl:3 [summary1]: missing_reference: expected a non-empty value in one of " \
           "['summary1', 'summary2', 'summary3']" in str(e.value)
    out, _ = prep(make_cfg(tmp_path, errors="skip"), tmp_path)
    a = out.manifest["accounting"]["test"]
    assert a["read"] == 3 and a["kept"] == 2 and a["dropped"] == {"missing_reference": 1}


def test_unknown_reference_column_gets_did_you_mean(tmp_path):
    write_corpus(tmp_path)
    with pytest.raises(DataError) as e:
        prep(make_cfg(tmp_path, references=["summary1", "sumary2"]), tmp_path)
    msg = str(e.value)
    assert "test.jsonl:1 [eval.references]: missing_column: expected a column named 'sumary2'" in msg
    assert "did you mean 'summary2'?" in msg


def test_references_need_a_test_file(tmp_path):
    write_corpus(tmp_path)
    with pytest.raises(DataError, match="references_without_test"):
        prep(make_cfg(tmp_path, test=None), tmp_path)


def test_references_are_part_of_the_cache_fingerprint(tmp_path):
    write_corpus(tmp_path)
    first, _ = prep(make_cfg(tmp_path), tmp_path)
    again, lines = prep(make_cfg(tmp_path), tmp_path)
    assert again.reused and again.splits == first.splits
    fewer, lines = prep(make_cfg(tmp_path, references=["summary2", "summary1"]), tmp_path)
    assert lines[0] == ("rebuilding: references changed (['summary1', 'summary2', 'summary3'] -> "
                        "['summary2', 'summary1'])")
    assert not fewer.reused and fewer.manifest["fingerprint"] != first.manifest["fingerprint"]
    assert fewer.splits["test"][0]["references"] == ["Second & summary 0.", "First summary 0."]
    assert fewer.splits["test"][0]["output"] == "Second & summary 0."
