"""Data as other authors ship it: semicolon CSVs (delimiter sniffing), a label made of two columns and
nested JSON (data.fields paths), records keyed by their label (data.json_key_column), UTF-8 with
CESU-8 surrogate pairs; and the repository's HWU64 and SNIPS copies read as published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capture import captured
from conftest import CARD, FEES, TOPUP, write_csv
from tunelab.config import ConfigError, config_from_dict
from tunelab.data import prepare
from tunelab.data.fields import PathError, render, template_paths
from tunelab.data.ingest import ingest, sniff_delimiter
from tunelab.data.problems import Problems

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_paths_render_nested_lists_and_two_columns():
    rec = {"data": [{"text": "play "}, {"text": "Sinatra", "entity": "artist"}], "scenario": "alarm", "intent": "set"}
    assert render("{data[*].text}", rec) == "play Sinatra"
    assert render("{scenario}_{intent}", rec) == "alarm_set"
    assert render("{data[1].entity}", rec) == "artist"
    with pytest.raises(PathError, match="without 'texts'"):
        render("{data[*].texts}", rec)
    with pytest.raises(PathError, match="objects, not text"):
        render("{data}", rec)
    for bad in ("no placeholder", "{data[x]}", "{a}}", "{}"):
        with pytest.raises(ValueError):
            template_paths(bad)


def test_delimiter_is_the_one_the_header_holds_most_outside_quotes():
    assert sniff_delimiter("answerid;scenario;intent\n1;a;b\n", ",") == ";"
    assert sniff_delimiter('"a;b",c\n', ",") == ","
    assert sniff_delimiter("text\nhello; there\n", ",") == ","     # one column: the format's default
    assert sniff_delimiter("a\tb;c\n", "\t") == "\t"


def test_bad_fields_and_delimiter_settings_are_config_errors():
    base = {"name": "t", "data": {"train": "x.csv"}}
    with pytest.raises(ConfigError, match="fields.label"):
        config_from_dict({**base, "data": {"train": "x.csv", "fields": {"label": "scenario_intent"}}})
    with pytest.raises(ConfigError, match="delimiter"):
        config_from_dict({**base, "data": {"train": "x.csv", "delimiter": ";;"}})


def _hwu_like(folder: Path, intent: str, texts: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    rows = [{"answerid": i, "scenario": "bank", "intent": intent, "answer_from_anno": t} for i, t in enumerate(texts)]
    write_csv(folder / f"bank_{intent}.csv", rows, delimiter=";")


def test_semicolon_csv_folders_with_a_two_column_label_prepare(make_cfg, tmp_path, tokenizer):
    for split, texts in (("train", slice(0, 4)), ("test", slice(4, 5))):
        for intent, pool in (("card", CARD), ("topup", TOPUP), ("fees", FEES)):
            _hwu_like(tmp_path / split, intent, pool[texts])
    cfg = make_cfg(train="train", test="test", fields={"label": "{scenario}_{intent}"},
                   input_columns=["answer_from_anno"], output_column="label", val_fraction=0.2)
    with captured() as lines:
        out = prepare(cfg, tmp_path / "out", tokenizer)
    assert out.labels == ["bank_card", "bank_fees", "bank_topup"]
    assert len(out.splits["test"]) == 3
    assert "train: fields separated by ';' in 3 of 3 file(s) (data.delimiter=auto)" in lines, lines
    assert {f.get("delimiter") for f in out.manifest["files"]} == {";"}


def _snips_like(path: Path, intent: str, texts: list[str], broken: bool = False) -> None:
    records = [{"data": [{"text": t[:10]}, {"text": t[10:], "entity": "thing"}]} for t in texts]
    if broken:
        records[1] = {"data": "not segments"}
    path.write_text(json.dumps({intent: records}, indent=2), encoding="utf-8")


def test_keyed_nested_json_becomes_records_with_their_key_as_label(make_cfg, tmp_path, tokenizer):
    for split, texts in (("train", slice(0, 4)), ("test", slice(4, 5))):
        (tmp_path / split).mkdir()
        for intent, pool in (("Card", CARD), ("TopUp", TOPUP), ("Fees", FEES)):
            _snips_like(tmp_path / split / f"{intent}.json", intent, pool[texts])
    cfg = make_cfg(train="train", test="test", json_key_column="intent", fields={"text": "{data[*].text}"},
                   input_columns=["text"], output_column="intent", val_fraction=0.2)
    out = prepare(cfg, tmp_path / "out", tokenizer)
    assert out.labels == ["Card", "Fees", "TopUp"]
    assert sorted(r["input"]["text"] if isinstance(r.get("input"), dict) else r.get("text", "")
                  for r in out.splits["test"])[0] != ""
    assert any(CARD[4] in json.dumps(r) for r in out.splits["test"])


def test_a_record_without_the_path_is_located_and_skipped_when_asked(tmp_path):
    _snips_like(tmp_path / "Card.json", "Card", CARD[:3], broken=True)
    problems = Problems()
    ing = ingest("Card.json", tmp_path, problems=problems, key_column="intent", fields={"text": "{data[*].text}"})
    [p] = problems.items
    assert (p.kind, p.file, p.field, p.severity) == ("bad_field_path", "Card.json", "data.fields.text", "error")
    lines = (tmp_path / "Card.json").read_text().splitlines()
    starts = [i for i, line in enumerate(lines, start=1) if line == "    {"]   # each record's opening brace
    assert p.line == starts[1]
    assert "not a list" in p.found
    assert len(ing.rows) == 2 and ing.skipped[0][1] == "bad_field_path"
    skipped = Problems()
    ingest("Card.json", tmp_path, problems=skipped, skip_bad_rows=True, key_column="intent",
           fields={"text": "{data[*].text}"})
    assert skipped.items[0].severity == "warning"


def test_a_file_not_keyed_by_label_is_a_clear_problem(tmp_path):
    (tmp_path / "flat.json").write_text(json.dumps([{"text": "a"}]), encoding="utf-8")
    problems = Problems()
    ingest("flat.json", tmp_path, problems=problems, key_column="intent")
    assert problems.items[0].kind == "json_shape" and "data.json_key_column" in problems.items[0].expected


def test_cesu8_surrogate_pairs_read_as_the_character_they_encode(tmp_path):
    cesu = "\U0001F355".encode("utf-16-be")
    high, low = int.from_bytes(cesu[:2], "big"), int.from_bytes(cesu[2:], "big")
    raw = b'{"X": [{"text": "pop ' + chr(high).encode("utf-8", "surrogatepass") \
        + chr(low).encode("utf-8", "surrogatepass") + b'"}]}'
    (tmp_path / "x.json").write_bytes(raw)
    problems = Problems()
    ing = ingest("x.json", tmp_path, problems=problems, key_column="label")
    assert not problems.items
    assert ing.rows[0].fields["text"] == "pop \U0001F355"
    assert "CESU-8" in ing.encodings["x.json"]


@pytest.mark.parametrize("name, train, test, labels", [
    ("hwu64", 9960, 1076, 64), ("snips", 13784, 700, 7)])
def test_the_shipped_copies_read_as_published(name, train, test, labels):
    from tunelab.config import load_config

    cfg = load_config(EXAMPLES / name / "config.yaml")
    d, read = cfg.data, {}
    for split in ("train", "test"):
        problems = Problems()
        ing = ingest(getattr(d, split), Path(cfg.base_dir), problems=problems, delimiter=d.delimiter,
                     key_column=d.json_key_column, fields=d.fields)
        assert not problems.items, problems.items[:3]
        assert all(str(r.fields[d.output_column]) for r in ing.rows)
        read[split] = (len(ing.rows), len({r.fields[d.output_column] for r in ing.rows}))
    assert read == {"train": (train, labels), "test": (test, labels)}
    for f in (EXAMPLES / name).rglob("*"):
        assert f.stat().st_size < 5 << 20, f"{f} is too large for git"
    assert (EXAMPLES / name / "LICENSE").is_file() and "Source:" in (EXAMPLES / name / "README.md").read_text()
