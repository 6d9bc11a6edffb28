"""The prepare stage end to end on corpora built here: messages, counts, accounting, cache, report."""

from __future__ import annotations

import json

import pytest

from tunelab.data import DataError, prepare
from tunelab.pipeline import prepare as prepare_run

from capture import captured
from conftest import CARD, FEES, TOPUP, labelled_rows, make_docx, make_pdf, write_csv, write_jsonl


def prep(cfg, tmp_path, tokenizer=None):
    with captured() as lines:
        out = prepare(cfg, tmp_path / "out", tokenizer)
    return out, lines


def assert_accounting(manifest):
    """read = kept + sum(dropped by reason) + sum(moved), per split; dropped.jsonl lists every drop."""
    for split, a in manifest["accounting"].items():
        assert a["read"] == a["kept"] + sum(a["dropped"].values()) + sum(a["moved"].values()), split
        assert a["balanced"] is True


def leaky_corpus(tmp_path):
    """train.csv (30 rows, 3 labels) and test.csv holding 3 exact (case/punctuation changed) copies of
    train texts, 1 near copy (one word changed) and 6 fresh texts."""
    rows = labelled_rows()
    write_csv(tmp_path / "train.csv", rows)
    test = [{"text": rows[0]["text"].upper().replace(",", ""), "label": "card_arrival"},
            {"text": rows[10]["text"] + "!!", "label": "top_up_failed"},
            {"text": "  " + rows[21]["text"].lower(), "label": "fees"},
            {"text": rows[24]["text"].replace("recognise", "recognize"), "label": "fees"}]
    fresh = ["Could you send the card to my office instead of home", "Is it free to pay in shops abroad",
             "My top up from Apple Pay vanished", "Why is there no card in my letterbox yet",
             "Which fee applies to cash withdrawals over the limit", "The top-up keeps spinning forever"]
    test += [{"text": t, "label": lab} for t, lab in zip(fresh, ["card_arrival", "fees", "top_up_failed"] * 2)]
    write_csv(tmp_path / "test.csv", test)


def test_leakage_refuse_lists_counts_and_first_pairs(tmp_path, make_cfg):
    leaky_corpus(tmp_path)
    with pytest.raises(DataError) as e:
        prep(make_cfg(train="train.csv", test="test.csv"), tmp_path)
    msg = str(e.value)
    assert msg.splitlines()[0] == ("leakage: 4 training example(s) also appear in held-out data (test: 3 exact, "
                                   "1 near); set data.leakage: drop to remove them from train, or warn to "
                                   "continue: 4 problem(s) (3 leakage_exact, 1 leakage_near)")
    assert "  - train.csv:2: leakage_exact: expected no copy in test, found test.csv:2 (exact, similarity 1.00)" in msg
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_leakage_drop_removes_leaked_train_examples(tmp_path, make_cfg):
    leaky_corpus(tmp_path)
    out, lines = prep(make_cfg(train="train.csv", test="test.csv", leakage="drop"), tmp_path)
    a = out.manifest["accounting"]
    assert a["train"]["dropped"] == {"leaked_exact_test": 3, "leaked_near_test": 1}
    assert a["train"]["read"] == 30 and a["test"]["kept"] == 10
    assert a["train"]["moved"] == {"validation": 3} and len(out.splits["train"]) == 23
    assert "leakage test: 3 exact + 1 near overlaps with train; policy drop" in lines
    leaked = {"train.csv:2", "train.csv:12", "train.csv:23", "train.csv:26"}
    assert not leaked & {r["id"] for s in out.splits.values() for r in s if r["source"]["file"] == "train.csv"}
    assert_accounting(out.manifest)
    dropped = [json.loads(l) for l in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert {d["id"] for d in dropped} == leaked


def test_leakage_warn_keeps_them_and_reports(tmp_path, make_cfg):
    leaky_corpus(tmp_path)
    out, _ = prep(make_cfg(train="train.csv", test="test.csv", leakage="warn"), tmp_path)
    assert out.manifest["leakage"]["counts"] == {"test": {"exact": 3, "near": 1}}
    assert len(out.splits["train"]) + len(out.splits["validation"]) == 30
    assert "Policy `warn`. Training examples matching held-out ones: 4 (test: 3 exact, 1 near)." in \
        (tmp_path / "out" / "report.md").read_text()


def test_classification_csv_first_slice(tmp_path, make_cfg):
    write_csv(tmp_path / "train.csv", labelled_rows())
    out, lines = prep(make_cfg(train="train.csv", val_fraction=0.2, test_fraction=0.2), tmp_path)
    assert lines[:2] == ["rebuilding: no prepared data in " + str(tmp_path / "out"),
                         "detected: text_label; input_columns=[text], output_column=label"]
    assert out.labels == ["card_arrival", "fees", "top_up_failed"] and not out.reused
    assert {s: len(r) for s, r in out.splits.items()} == {"train": 18, "validation": 6, "test": 6}
    for s in ("validation", "test"):
        assert sorted(r["output"] for r in out.splits[s]) == sorted(["card_arrival", "fees", "top_up_failed"] * 2)
    rec = out.splits["train"][0]
    assert set(rec) == {"id", "source", "input", "output", "messages", "text", "group"}
    assert rec["id"] == f"train.csv:{rec['source']['line']}" and set(rec["input"]) == {"text"}
    on_disk = [json.loads(l) for l in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert on_disk == out.splits["train"]
    assert_accounting(out.manifest)


def test_cache_reuse_and_rebuild_reasons(tmp_path, make_cfg, tokenizer):
    write_csv(tmp_path / "train.csv", labelled_rows())
    cfg = make_cfg(train="train.csv")
    first, _ = prep(cfg, tmp_path, tokenizer)
    again, lines = prep(cfg, tmp_path, tokenizer)
    assert again.reused and lines == [f"reusing prepared data (fingerprint {first.manifest['fingerprint']}) in "
                                      f"{tmp_path / 'out'}"]
    assert again.splits == first.splits and again.labels == first.labels
    _, lines = prep(make_cfg(train="train.csv", max_length=128), tmp_path, tokenizer)
    assert lines[0] == "rebuilding: data.max_length changed (256 -> 128)"
    _, lines = prep(make_cfg(train="train.csv", max_length=128), tmp_path, None)
    assert lines[0] == "rebuilding: tokenizer changed (none before)"
    write_csv(tmp_path / "train.csv", labelled_rows()[:-1])
    _, lines = prep(make_cfg(train="train.csv", max_length=128), tmp_path, None)
    assert lines[0] == "rebuilding: train input train.csv changed"


def test_broken_jsonl_line_7_fails_listing_every_problem(tmp_path, make_cfg):
    objs = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(9)]
    objs[2] = {"prompt": "Question 2?", "completon": "typo"}
    write_jsonl(tmp_path / "d.jsonl", objs, broken={7: '{"prompt": "q7", "completion": '})
    with pytest.raises(DataError) as e:
        prep(make_cfg(train="d.jsonl"), tmp_path)
    lines = str(e.value).splitlines()
    assert lines[0] == "cannot prepare the data: 2 problem(s) (1 malformed_json, 1 missing_field)"
    assert lines[1].startswith("  - d.jsonl:7: malformed_json: expected one JSON object per line, found Expecting value")
    assert lines[2].startswith("  - d.jsonl:3 [completion]: missing_field: expected field 'completion'")
    assert "did you mean 'completon'?" in lines[2]


def test_skipping_bad_rows_keeps_the_accounts(tmp_path, make_cfg):
    objs = [{"prompt": f"Question number {i} about {w}?", "completion": f"Answer {i}."}
            for i, w in enumerate(CARD + TOPUP)]
    write_jsonl(tmp_path / "d.jsonl", objs, broken={7: "{not json"})
    out, _ = prep(make_cfg(train="d.jsonl", errors="skip"), tmp_path)
    a = out.manifest["accounting"]["train"]
    assert a["read"] == 11 and a["dropped"] == {"malformed_json": 1} and a["kept"] + sum(a["moved"].values()) == 10
    assert out.labels is None and out.manifest["problems"]["totals"] == {"malformed_json": 1}
    assert_accounting(out.manifest)


def test_latin1_file_fails_with_the_fix_then_prepares(tmp_path, make_cfg):
    rows = labelled_rows()
    rows[3]["text"] = "Le caf\u00e9 a d\u00e9bit\u00e9 ma carte deux fois, pourquoi ?"
    text = "text,label\n" + "".join(f"\"{r['text']}\",{r['label']}\n" for r in rows)
    (tmp_path / "l.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as e:
        prep(make_cfg(train="l.csv"), tmp_path)
    assert "l.csv:5: non_utf8: expected utf-8 text, found byte 0xe9 at column 8" in str(e.value)
    skipped, _ = prep(make_cfg(train="l.csv", errors="skip"), tmp_path)
    assert skipped.manifest["accounting"]["train"]["dropped"] == {"non_utf8": 1}
    assert skipped.manifest["problems"]["totals"] == {"non_utf8": 1}
    out, _ = prep(make_cfg(train="l.csv", encoding="latin-1"), tmp_path)
    texts = [r["input"]["text"] for s in out.splits.values() for r in s]
    assert "Le caf\u00e9 a d\u00e9bit\u00e9 ma carte deux fois, pourquoi ?" in texts
    assert_accounting(out.manifest)


def test_html_entities_empty_text_conflicts_and_near_duplicates(tmp_path, make_cfg):
    rows = labelled_rows()
    rows[0]["text"] = "Tom &amp; Jerry&#39;s <b>card</b> never &quot;arrived&quot;"
    rows.append({"text": "<br/>", "label": "fees"})                                  # empty after cleaning
    rows.append({"text": rows[5]["text"].upper(), "label": "fees"})                   # conflicting label
    rows.append({"text": rows[6]["text"].replace("courier", "couriers"), "label": "card_arrival"})  # near
    write_csv(tmp_path / "train.csv", rows)
    out, lines = prep(make_cfg(train="train.csv"), tmp_path)
    a = out.manifest["accounting"]["train"]
    assert a["read"] == 33 and a["dropped"] == {"empty_text": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert "clean train: html changed 2, unicode changed 0, whitespace changed 1" in lines  # <br/> -> newline -> ""
    assert "dedup train: 1 exact duplicates, 1 near-duplicates (threshold 0.85) dropped in 2 clusters" in lines
    assert "conflicting labels: 1 text(s) in train carry two or more different outputs" in lines
    assert out.manifest["conflicts"]["first"][0]["outputs"] == ["card_arrival", "fees"]
    texts = {r["input"]["text"] for s in out.splits.values() for r in s}
    assert "Tom & Jerry's card never \"arrived\"" in texts
    totals = out.manifest["problems"]["totals"]
    assert totals == {"empty_text": 1, "conflicting_labels": 1}
    assert_accounting(out.manifest)


def test_label_only_in_test_and_missing_column(tmp_path, make_cfg):
    write_csv(tmp_path / "train.csv", labelled_rows())
    write_csv(tmp_path / "test.csv", [{"text": "How do I close my account for good?", "label": "close_account"},
                                      {"text": "Where is my card right now?", "label": "card_arrival"}])
    with pytest.raises(DataError) as e:
        prep(make_cfg(train="train.csv", test="test.csv"), tmp_path)
    assert ("test.csv:2 [output]: label_only_in_test: expected a label that occurs in train, found "
            "'close_account' (1 example(s))") in str(e.value)
    with pytest.raises(DataError) as e:
        prep(make_cfg(train="train.csv", output_column="lable"), tmp_path)
    assert "train.csv:1 [data.output_column]: missing_column: expected a column named 'lable'" in str(e.value)
    assert "did you mean 'label'?" in str(e.value)


def test_over_long_examples_are_counted_with_the_tokenizer(tmp_path, make_cfg, tokenizer):
    write_csv(tmp_path / "train.csv", labelled_rows())
    out, _ = prep(make_cfg(train="train.csv", max_length=20), tmp_path, tokenizer)
    st = out.manifest["stats"]
    assert st["train"]["unit"] == "tokens"
    over = sum(st[s]["over_max_length"] for s in st)
    assert over == out.manifest["problems"]["totals"]["over_long"] and over > 0
    lens = [len(tokenizer(r["input"]["text"] + " " + r["output"])["input_ids"]) for s in out.splits.values()
            for r in s]
    assert over == sum(n > 20 for n in lens)
    assert st["train"]["labels"] == {"card_arrival": 8, "fees": 8, "top_up_failed": 8}
    assert st["train"]["imbalance"] == 1.0


def test_group_by_and_train_limit(tmp_path, make_cfg):
    rows = [{**r, "customer": f"c{i // 3}"} for i, r in enumerate(labelled_rows())]
    write_csv(tmp_path / "train.csv", rows)
    out, _ = prep(make_cfg(train="train.csv", group_by="customer", val_fraction=0.2, test_fraction=0.2), tmp_path)
    groups = {s: {r["group"] for r in recs} for s, recs in out.splits.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    limited, lines = prep(make_cfg(train="train.csv", train_limit=6), tmp_path)
    assert sorted(r["output"] for r in limited.splits["train"]) == sorted(["card_arrival", "fees", "top_up_failed"] * 2)
    assert limited.manifest["accounting"]["train"]["dropped"] == {"train_limit": 18}
    assert_accounting(limited.manifest)


def test_sharegpt_jsonl_prepares_chat_records(tmp_path, make_cfg):
    convs = [{"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": f"Reply {i}"}]}
             for i, t in enumerate(CARD + TOPUP + FEES)]
    write_jsonl(tmp_path / "chat.jsonl", convs)
    out, lines = prep(make_cfg(train="chat.jsonl"), tmp_path)
    assert "detected: sharegpt; conversations[].from->role, value->content" in lines
    rec = out.splits["train"][0]
    assert [t["role"] for t in rec["messages"]] == ["user", "assistant"] and rec["output"].startswith("Reply")
    assert out.labels is None
    assert_accounting(out.manifest)


def test_documents_become_chunked_pretraining_text(tmp_path, make_cfg, tokenizer):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "handbook.pdf", [f"{CARD[i]}.\n{TOPUP[i]}." for i in range(4)], "ACME bank handbook",
             "Page {page} of {pages}")
    make_docx(docs / "fees.docx", [t + "." for t in FEES])
    (docs / "notes.txt").write_text("\n".join(TOPUP) + "\n", encoding="utf-8")
    cfg = make_cfg(task="pretrain", train="docs", clean=["html", "unicode", "whitespace", "headers_footers"],
                   chunk_tokens=16, chunk_overlap=4, val_fraction=0.2, test_fraction=0.2)
    out, lines = prep(cfg, tmp_path, tokenizer)
    assert "clean train: html changed 0, unicode changed 0, whitespace changed 1, headers_footers changed 4" in lines
    a = out.manifest["accounting"]
    assert a["train"]["read"] == 6  # four PDF pages and two whole documents
    assert_accounting(out.manifest)
    chunks = [r for s in out.splits.values() for r in s]
    assert all(r["text"] and r["output"] is None for r in chunks)
    assert not any("handbook" in r["text"] or "page 2 of" in r["text"].lower() for r in chunks)
    pdf = [r for r in chunks if r["source"]["file"] == "docs/handbook.pdf"]
    assert {r["source"]["page"] for r in pdf} >= {1, 2, 3, 4}
    by_split = {s: {r["source"]["file"] for r in recs} for s, recs in out.splits.items()}
    assert not by_split["train"] & by_split["test"]  # a document never spans two splits
    ids = [tokenizer(r["text"], add_special_tokens=False)["input_ids"] for r in pdf]
    assert all(len(x) <= 16 for x in ids) and ids[0][-4:] == ids[1][:4]


def test_run_creates_the_run_folder(tmp_path, make_cfg, tokenizer):
    from transformers import LlamaConfig

    model = tmp_path / "tiny-model"
    tokenizer.save_pretrained(model)
    LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                intermediate_size=16).save_pretrained(model)
    write_csv(tmp_path / "train.csv", labelled_rows())
    cfg = make_cfg(train="train.csv").model_copy(update={"model": make_cfg(train="x").model.model_copy(
        update={"name": str(model)})})
    rd = prepare_run(cfg)
    m = json.loads((rd.data_dir / "manifest.json").read_text())
    assert m["fingerprint_parts"]["tokenizer"]["vocab_size"] == len(tokenizer)
    assert (rd.data_dir / "report.md").read_text().startswith("# Data report")
    assert rd.config_path.exists()


def _inputs(tmp_path):
    """Every input shape of the test corpus, as (name, data config)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = labelled_rows()
    rows[4]["text"] = "Caf&eacute; &amp; <i>card</i>   issue"
    rows.append({"text": "   ", "label": "fees"})
    write_csv(tmp_path / "a.csv", rows)
    write_csv(tmp_path / "a.tsv", rows, delimiter="\t")
    write_jsonl(tmp_path / "a.jsonl", rows, broken={7: "{broken"})
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=1))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "l.csv").write_bytes(("text,label\n" + "".join(f"\"{r['text']} \u00e9\",{r['label']}\n"
                                                                for r in rows)).encode("latin-1"))
    chats = [{"messages": [{"role": "user", "content": r["text"]}, {"role": "assistant", "content": r["label"]}]}
             for r in rows[:-1]] + [{"messages": [{"role": "user", "content": "no answer"}]}]
    write_jsonl(tmp_path / "m.jsonl", chats)
    write_jsonl(tmp_path / "al.jsonl", [{"instruction": "Classify", "input": r["text"], "output": r["label"]}
                                         for r in rows])
    leaky_corpus(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "h.pdf", [CARD[i] + "." for i in range(3)], "Header line", "Page {page}")
    make_docx(docs / "f.docx", FEES)
    (docs / "p.html").write_text("<p>" + "</p><p>".join(TOPUP) + "</p>")
    (docs / "n.md").write_text("# Notes\n\n" + "\n".join(CARD))
    return [("csv", {"train": "a.csv"}), ("tsv", {"train": "a.tsv"}), ("jsonl", {"train": "a.jsonl", "errors": "skip"}),
            ("json", {"train": "a.json"}), ("parquet", {"train": "a.parquet"}),
            ("latin1", {"train": "l.csv", "encoding": "latin-1"}), ("messages", {"train": "m.jsonl"}),
            ("alpaca", {"train": "al.jsonl"}), ("leaky", {"train": "train.csv", "test": "test.csv", "leakage": "drop"}),
            ("documents", {"train": "docs", "clean": ["html", "whitespace", "headers_footers", "boilerplate"]})]


def test_accounting_holds_for_every_input(tmp_path, make_cfg):
    for name, data in _inputs(tmp_path):
        out = prepare(make_cfg(task="pretrain" if name == "documents" else "sft", **data), tmp_path / name)
        assert_accounting(out.manifest)
        dropped = (tmp_path / name / "dropped.jsonl").read_text().splitlines()
        acc = out.manifest["accounting"]
        assert len(dropped) == sum(sum(a["dropped"].values()) for a in acc.values()), name
        assert acc["train"]["read"] == {"jsonl": 32, "documents": 6, "leaky": 30}.get(name, 31), name
        expected_drops = {"jsonl": {"malformed_json": 1, "empty_text": 1}, "documents": {},
                          "messages": {"no_assistant_turn": 1}, "latin1": {}, "alpaca": {},  # blank text gained " é" / the instruction stays
                          "leaky": {"leaked_exact_test": 3, "leaked_near_test": 1}}.get(name, {"empty_text": 1})
        assert acc["train"]["dropped"] == expected_drops, name
        report = (tmp_path / name / "report.md").read_text()
        for section in ("## Accounting", "## Cleaning", "## Duplicates", "## Leakage", "## Length statistics"):
            assert section in report, (name, section)


def test_template_placeholders_must_name_input_columns(tmp_path, make_cfg):
    write_csv(tmp_path / "train.csv", labelled_rows())
    with pytest.raises(DataError) as e:
        prep(make_cfg(train="train.csv", template="Classify: {txt}"), tmp_path)
    assert "train.csv:1 [data.template]: bad_template: expected a placeholder among the input columns ['text'], " \
           "found {txt} (did you mean 'text'?" in str(e.value)
    out, _ = prep(make_cfg(train="train.csv", template="Classify: {text}"), tmp_path)
    assert len(out.splits["train"]) == 24
