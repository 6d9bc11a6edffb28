"""Ingest: every format to rows with provenance; unreadable input becomes located problems."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tunelab.data.ingest import ingest
from tunelab.data.problems import Problems

from conftest import make_docx, make_pdf, write_csv, write_jsonl


def test_csv_lines_count_the_header_and_quoted_newlines(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"two\nlines",x\nplain,y\n', encoding="utf-8")
    ing = ingest("a.csv", tmp_path)
    assert [(r.line, r.fields["text"]) for r in ing.rows] == [(2, "two\nlines"), (4, "plain")]
    assert ing.read == 2 and ing.files[0]["format"] == "csv" and len(ing.files[0]["sha256"]) == 64


def test_tsv_json_array_parquet_and_folder(tmp_path):
    write_csv(tmp_path / "a.tsv", [{"text": "a, with comma", "label": "x"}], delimiter="\t")
    (tmp_path / "b.json").write_text('[\n  {"text": "one", "label": "x"},\n\n  {"text": "two", "label": "y"}\n]')
    pq.write_table(pa.table({"text": ["p1", "p2"], "label": ["x", "y"]}), tmp_path / "c.parquet")
    (tmp_path / "d.json").write_text(json.dumps({"text": ["c1", "c2"], "label": ["x", "y"]}))
    ing = ingest(".", tmp_path)
    got = {(r.file, r.line): r.fields["text"] for r in ing.rows}
    assert got == {("a.tsv", 2): "a, with comma", ("b.json", 2): "one", ("b.json", 4): "two",
                   ("c.parquet", 1): "p1", ("c.parquet", 2): "p2", ("d.json", 1): "c1", ("d.json", 2): "c2"}
    assert {f["format"] for f in ing.files} == {"tsv", "json", "parquet"}
    assert ingest("*.parquet", tmp_path).read == 2


def test_broken_jsonl_line_7_is_located(tmp_path):
    objs = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(9)]
    write_jsonl(tmp_path / "d.jsonl", objs, broken={7: '{"prompt": "q", "completion": }'})
    problems = Problems()
    ing = ingest("d.jsonl", tmp_path, problems=problems)
    [p] = problems.items
    assert (p.kind, p.file, p.line, p.severity) == ("malformed_json", "d.jsonl", 7, "error")
    assert "Expecting value at column 31" in p.found
    assert ing.read == 10 and len(ing.rows) == 9 and ing.skipped[0][1] == "malformed_json"


def test_broken_jsonl_line_is_a_warning_when_skipping(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}] * 8, broken={7: "{oops"})
    problems = Problems()
    ingest("d.jsonl", tmp_path, problems=problems, skip_bad_rows=True)
    assert [(p.kind, p.line, p.severity) for p in problems.items] == [("malformed_json", 7, "warning")]


def test_latin1_file_reports_each_bad_line_and_decodes_when_told(tmp_path):
    text = "text,label\ncaf\u00e9 au lait,drink\nplain tea,drink\nna\u00efve question,other\n"
    (tmp_path / "l.csv").write_bytes(text.encode("latin-1"))
    problems = Problems()
    ingest("l.csv", tmp_path, problems=problems)
    assert [(p.kind, p.line) for p in problems.items] == [("non_utf8", 2), ("non_utf8", 4)]
    assert "byte 0xe9 at column 4" in problems.items[0].found and "latin-1" in problems.items[0].hint
    ok = Problems()
    ing = ingest("l.csv", tmp_path, encoding="latin-1", problems=ok)
    assert not ok.items and ing.rows[0].fields["text"] == "caf\u00e9 au lait"


def test_empty_missing_and_header_only_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    (tmp_path / "h.csv").write_text("text,label\n")
    problems = Problems()
    for name in ("e.jsonl", "h.csv", "nope.csv"):
        ingest(name, tmp_path, problems=problems)
    assert [(p.kind, p.file) for p in problems.items] == [
        ("empty_file", "e.jsonl"), ("empty_file", "h.csv"), ("file_not_found", "nope.csv")]


def test_wrong_field_count_is_a_malformed_row(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nok,x\ntoo,many,fields\n")
    problems = Problems()
    ing = ingest("a.csv", tmp_path, problems=problems)
    assert [(p.kind, p.line) for p in problems.items] == [("malformed_row", 3)]
    assert "2 fields (text, label)" in problems.items[0].expected and len(ing.rows) == 1


def test_documents_keep_file_and_page(tmp_path):
    make_pdf(tmp_path / "h.pdf", ["Body one.", "Body two.", "Body three."], "ACME handbook", "Page {page}")
    make_docx(tmp_path / "n.docx", ["Title", "A paragraph about fees."])
    (tmp_path / "p.html").write_text("<html><head><title>x</title><style>p{}</style></head>"
                                     "<body><p>Fish &amp; chips</p><script>var a;</script></body></html>")
    (tmp_path / "r.md").write_text("# Heading\n\nSome *markdown*.\n")
    ing = ingest(".", tmp_path)
    pages = [(r.file, r.page) for r in ing.rows if r.file == "h.pdf"]
    assert pages == [("h.pdf", 1), ("h.pdf", 2), ("h.pdf", 3)]
    by_file = {r.file: r.fields["text"] for r in ing.rows}
    assert "Body two." in [r.fields["text"] for r in ing.rows if r.page == 2][0].split("\n")
    assert by_file["n.docx"] == "Title\nA paragraph about fees."
    assert by_file["p.html"].strip() == "Fish & chips"
    assert by_file["r.md"].startswith("# Heading")
    assert ing.rows[0].id == "h.pdf:p1"
