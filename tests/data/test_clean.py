"""Cleaning operations: what each changes, counted, with before/after samples."""

from __future__ import annotations

from tunelab.data.clean import clean, normalise_dates, redact_pii


def rec(text=None, i=0, file="f.csv", page=None, **inp):
    return {"id": f"{file}:{i}", "source": {"file": file, "line": i, "page": page}, "input": inp,
            "output": "x" if inp else None, "messages": None, "text": text, "group": None}


def test_html_unicode_whitespace_count_changed_records():
    records = [rec(text="Fish &amp; chips &lt;3"), rec(text="<p>Caf\u00c3\u00a9 <b>menu</b></p>"),
               rec(text="plain  text\x07 with\ttabs \n\n\n\nend"), rec(text="nothing to do")]
    out, results = clean(records, ["html", "unicode", "whitespace"])
    assert [r["text"] for r in out] == ["Fish & chips <3", "Caf\u00e9 menu", "plain text with tabs\n\nend",
                                        "nothing to do"]
    assert {r.name: r.changed for r in results} == {"html": 2, "unicode": 1, "whitespace": 2}
    assert results[0].samples[0] == ("Fish &amp; chips &lt;3", "Fish & chips <3")


def test_input_columns_and_outputs_are_cleaned_too():
    [out], [res] = clean([rec(text=None, text_col="Tom &amp; Jerry")], ["html"])
    assert out["input"]["text_col"] == "Tom & Jerry" and res.changed == 1


def test_repeated_headers_and_footers_leave_each_page():
    bodies = ["Cards arrive within a week.", "Rates change: 3 percent now.", "Top ups clear in minutes.",
              "Fees are listed online."]
    pages = [rec(text=f"ACME Bank handbook\n{b}\nInterest table {p * 7}\nPage {p} of 4", file="h.pdf", page=p)
             for p, b in enumerate(bodies, start=1)]
    out, [res] = clean(pages, ["headers_footers"])
    assert [r["text"] for r in out] == [f"{b}\nInterest table {p * 7}" for p, b in enumerate(bodies, start=1)]
    assert res.changed == 4
    short, [res2] = clean(pages[:2], ["headers_footers"])  # two pages are too few to call a line repeated
    assert short == pages[:2] and res2.changed == 0


def test_boilerplate_lines_across_documents():
    docs = [rec(text=f"Story number {i} is here.\nSubscribe to our newsletter today!", file=f"d{i}.txt")
            for i in range(4)] + [rec(text="A short unrelated note.\nWith a second line.", file="e.txt")]
    out, [res] = clean(docs, ["boilerplate"])
    assert res.changed == 4 and out[0]["text"] == "Story number 0 is here." and out[4] == docs[4]


def test_dates_to_iso_and_pii_redaction():
    assert normalise_dates("paid on March 5, 2024, due 5 Apr 2024 or 04/06/2024") == \
        "paid on 2024-03-05, due 2024-04-05 or 2024-04-06"
    assert normalise_dates("04/06/2024", order="dmy") == "2024-06-04"
    assert normalise_dates("13/13/2024") == "13/13/2024"
    s = redact_pii("mail jo.doe@bank.com, call +44 20 7946 0958, card 4111 1111 1111 1111, "
                   "iban GB82 WEST 1234 5698 7654 32, not a card 4111 1111 1111 1112, order 12345")
    assert s == "mail [EMAIL], call [PHONE], card [CARD], iban [IBAN], not a card 4111 1111 1111 1112, order 12345"
    assert redact_pii("call 555-123-4567 or (020) 7946 0958; on 2024-03-05 paid 1,000,000") == \
        "call [PHONE] or [PHONE]; on 2024-03-05 paid 1,000,000"


def test_length_filter_drops_with_reasons():
    records = [rec(text="ok text"), rec(text="x"), rec(text="y" * 50)]
    out, [res] = clean(records, ["length"], min_chars=2, max_chars=20)
    assert [r["text"] for r in out] == ["ok text"]
    assert [why for _, why in res.dropped] == ["too_short", "too_long"]
