"""Test corpora for the prepare stage, all built here (no downloads), and a tiny word-level tokenizer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tunelab.config import config_from_dict

CARD = ["I am still waiting on my card, it has been more than a week now and nothing arrived",
        "My new card has not arrived yet although I ordered it a fortnight ago from the app",
        "How long does delivery of a replacement card usually take to my home address",
        "Is there a way to track the courier that is bringing my new debit card today",
        "The card you sent never came and I would like a new one shipped to me quickly"]
TOPUP = ["My top up failed twice this morning and the money is still missing from my account",
         "Why was my top-up by bank transfer declined even though my balance was fine",
         "Can I top up my account with a credit card from another country without fees",
         "How long does a top up by cheque take before the funds become available to spend",
         "I topped up yesterday but the balance in the app did not change at all since then"]
FEES = ["Why was I charged an extra fee for the transfer I made to my friend last week",
        "What are the fees for withdrawing cash from an ATM abroad with this card please",
        "There is a fee on my statement that I do not recognise, can you explain it",
        "Do you charge anything for exchanging euros into pounds inside the mobile app",
        "I was billed a monthly fee although my plan was supposed to be completely free"]


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def labelled_rows() -> list[dict]:
    """15 distinct texts x 3 labels, each written twice with a different (numbered) suffix: 30 rows."""
    rows = []
    for label, texts in (("card_arrival", CARD), ("top_up_failed", TOPUP), ("fees", FEES)):
        for i, t in enumerate(texts):
            rows.append({"text": f"{t} (case {i})", "label": label})
            rows.append({"text": f"{t} - ticket number {100 + i} opened", "label": label})
    return rows


@pytest.fixture
def make_cfg(tmp_path):
    """Build a Config whose relative data paths resolve against tmp_path."""
    def make(task: str = "sft", **data) -> object:
        raw = {"name": "t", "task": task, "base_dir": str(tmp_path), "runs_dir": str(tmp_path / "runs"),
               "data": data}
        return config_from_dict(raw)
    return make


@pytest.fixture(scope="session")
def tokenizer():
    """A word-level tokenizer over a small vocabulary (unknown words map to [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in CARD + TOPUP + FEES for w in t.lower().split()} | set("page of acme".split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def write_jsonl(path: Path, objs: list, broken: dict[int, str] | None = None) -> Path:
    """One JSON object per line; `broken` maps 1-based line numbers to raw (invalid) text."""
    lines = [json.dumps(o) for o in objs]
    for line, raw in (broken or {}).items():
        lines.insert(line - 1, raw)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_pdf(path: Path, pages: list[str], header: str, footer: str) -> Path:
    """A multi-page PDF whose every page carries `header` and `footer` ("{page}" is numbered)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.set_auto_page_break(auto=False)  # the footer sits in the bottom margin
    for i, body in enumerate(pages, start=1):
        pdf.add_page()
        pdf.cell(0, 10, header, new_x="LMARGIN", new_y="NEXT")
        for para in body.split("\n"):
            pdf.multi_cell(0, 8, para, new_x="LMARGIN", new_y="NEXT")
        pdf.set_y(-20)
        pdf.cell(0, 10, footer.format(page=i, pages=len(pages)))
    pdf.output(str(path))
    return path


def make_docx(path: Path, paragraphs: list[str]) -> Path:
    import docx

    d = docx.Document()
    for p in paragraphs:
        d.add_paragraph(p)
    d.save(str(path))
    return path
