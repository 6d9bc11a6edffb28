"""Cleaning operations, applied in the configured order; each one counts the records it changed and
keeps a few before/after samples for the data report."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tunelab.core.records import map_strings, prompt_text
from tunelab.data.html import html_to_text

OPS = ("html", "unicode", "whitespace", "headers_footers", "boilerplate", "dates", "pii", "length")
SAMPLES = 3


@dataclass
class OpResult:
    """What one cleaning operation did: records changed, samples (before, after), records dropped."""

    name: str
    changed: int = 0
    samples: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[dict, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"op": self.name, "changed": self.changed, "dropped": len(self.dropped),
                "samples": [{"before": b, "after": a} for b, a in self.samples]}


# ---------------------------------------------------------------- string operations

def fix_unicode(s: str) -> str:
    """Mojibake repaired (ftfy) and NFC-normalised; quotes are left as written."""
    if s.isascii():
        return s
    import ftfy  # loaded on first non-ASCII text: most short English datasets never need it

    # unescape_html is off because the `html` op owns entities; curly quotes carry meaning in prose.
    return ftfy.fix_text(s, unescape_html=False, uncurl_quotes=False, normalization="NFC")


_CONTROL = {c: None for c in range(0x20) if chr(c) not in "\n\t"} | {0x7F: None, 0x200B: None, 0xFEFF: None}


def fix_whitespace(s: str) -> str:
    """Control characters removed, runs of spaces collapsed, lines trimmed, blank runs limited to one."""
    s = s.replace("\r\n", "\n").replace("\r", "\n").translate(_CONTROL)
    s = "\n".join(re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in s.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", s).strip()


_MONTHS = {m.lower(): i for i, m in enumerate(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
     "November", "December"], start=1)}
_MONTHS.update({k[:3]: v for k, v in list(_MONTHS.items())})
_MON = r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_DATE_PATTERNS = [
    (re.compile(rf"\b{_MON}\.? (\d{{1,2}})(?:st|nd|rd|th)?,? (\d{{4}})\b", re.I), "mdy_name"),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)? {_MON}\.?,? (\d{{4}})\b", re.I), "dmy_name"),
    (re.compile(r"\b(\d{4})/(\d{1,2})/(\d{1,2})\b"), "ymd"),
    (re.compile(r"\b(\d{1,2})\.(\d{1,2})\.(\d{4})\b"), "dmy"),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"), "slash"),
]


def normalise_dates(s: str, order: str = "mdy") -> str:
    """Dates written as 'March 5, 2024', '5 Mar 2024', '2024/03/05', '05.03.2024' or '03/05/2024'
    rewritten as ISO 8601; `order` (mdy or dmy) decides the ambiguous slash form."""
    def iso(y, m, d, whole):
        try:
            return dt.date(int(y), int(m), int(d)).isoformat()
        except ValueError:
            return whole  # not a real date (e.g. month 13): leave the text alone

    for rx, kind in _DATE_PATTERNS:
        def sub(mt, kind=kind):
            g = mt.groups()
            if kind == "mdy_name":
                return iso(g[2], _MONTHS[g[0].lower()[:3]], g[1], mt[0])
            if kind == "dmy_name":
                return iso(g[2], _MONTHS[g[1].lower()[:3]], g[0], mt[0])
            if kind == "ymd":
                return iso(g[0], g[1], g[2], mt[0])
            if kind == "dmy" or (kind == "slash" and order == "dmy"):
                return iso(g[2], g[1], g[0], mt[0])
            return iso(g[2], g[0], g[1], mt[0])
        s = rx.sub(sub, s)
    return s


_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,5}\)?){2,5}(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def redact_pii(s: str) -> str:
    """E-mail addresses, card numbers (Luhn-valid), IBANs (mod-97 valid) and phone numbers replaced
    by [EMAIL], [CARD], [IBAN], [PHONE]."""
    s = _EMAIL.sub("[EMAIL]", s)
    s = _IBAN.sub(lambda m: "[IBAN]" if _iban_ok(m[0]) else m[0], s)
    s = _CARD.sub(lambda m: "[CARD]" if _luhn(re.sub(r"\D", "", m[0])) else m[0], s)

    def phone(m):
        n = len(re.sub(r"\D", "", m[0]))
        return "[PHONE]" if 9 <= n <= 15 else m[0]
    return _PHONE.sub(phone, s)


# ---------------------------------------------------------------- operations over records


def _map(name: str, records: list[dict], fn) -> tuple[list[dict], OpResult]:
    res, out = OpResult(name), []
    for rec in records:
        new = map_strings(rec, fn)
        if new != rec:
            res.changed += 1
            if len(res.samples) < SAMPLES:
                res.samples.append((_show(rec), _show(new)))
        out.append(new)
    return out, res


def _show(rec: dict) -> str:
    s = prompt_text(rec) + (f" => {rec['output']}" if rec.get("output") and not rec.get("messages") else "")
    # head and tail, so a removed header or footer shows in the sample of a long page
    return s if len(s) <= 240 else s[:140] + " [...] " + s[-100:]


def _line_key(line: str) -> str:
    return _SPACES.sub(" ", line.strip().lower())


_SPACES = re.compile(r"\s+")
_NUMBER = re.compile(r"\d+")


def _repeated_edges(pages: list[list[str]], edge: int, share: float) -> set[str]:
    """Edge-line keys that recur on at least `share` of the pages: verbatim, or with a number that
    advances with the page (a page number: "Page 3 of 9", "- 12 -"); other numbers stay meaningful."""
    need = max(2, math.ceil(share * len(pages)))
    verbatim, numbered = Counter(), defaultdict(set)
    for p, lines in enumerate(pages):
        edges = {_line_key(l) for l in lines[:edge] + lines[-edge:]}
        verbatim.update(edges)
        for key in edges:
            m = _NUMBER.search(key)
            if m and len(key.split()) <= 10:
                numbered[_NUMBER.sub("#", key)].add((p, int(m[0]) - p))
    out = {k for k, n in verbatim.items() if n >= need}
    page_lines = {mk for mk, seen in numbered.items() if len(seen) >= need and len({off for _, off in seen}) == 1}
    out |= {k for lines in pages for k in map(_line_key, lines) if _NUMBER.sub("#", k) in page_lines}
    return out


def strip_headers_footers(records: list[dict], edge: int = 3, share: float = 0.5) -> tuple[list[dict], OpResult]:
    """Lines among the first/last `edge` lines of at least `share` of a document's pages removed
    (documents of 3 pages or more)."""
    res = OpResult("headers_footers")
    pages = defaultdict(list)
    for i, rec in enumerate(records):
        if rec["source"].get("page") is not None and rec.get("text") is not None:
            pages[rec["source"]["file"]].append(i)
    out = list(records)
    for idx in pages.values():
        if len(idx) < 3:
            continue
        repeated = _repeated_edges([[l for l in records[i]["text"].split("\n") if l.strip()] for i in idx],
                                   edge, share)
        for i in idx:
            lines = records[i]["text"].split("\n")
            nonblank = [j for j, l in enumerate(lines) if l.strip()]
            edges = set(nonblank[:edge] + nonblank[-edge:])
            kept = [l for j, l in enumerate(lines) if not (j in edges and _line_key(l) in repeated)]
            if len(kept) != len(lines):
                new = {**records[i], "text": "\n".join(kept)}
                res.changed += 1
                if len(res.samples) < SAMPLES:
                    res.samples.append((_show(records[i]), _show(new)))
                out[i] = new
    return out, res


def strip_boilerplate(records: list[dict], share: float = 0.3, min_docs: int = 3) -> tuple[list[dict], OpResult]:
    """Lines that recur in at least `share` of the documents (and at least `min_docs` of them) removed.

    Only multi-line texts count as documents: in a table of one-line examples a recurring line is a
    duplicate example, which dedup handles, not boilerplate.
    """
    res = OpResult("boilerplate")
    docs = defaultdict(set)
    for rec in records:
        text = rec.get("text")
        if text is not None and "\n" in text:
            docs[rec["source"]["file"]].update(_line_key(l) for l in text.split("\n") if len(l.strip()) >= 8)
    if len(docs) < min_docs:
        return list(records), res
    counts = Counter(k for keys in docs.values() for k in keys)
    common = {k for k, n in counts.items() if n >= max(min_docs, math.ceil(share * len(docs)))}
    if not common:
        return list(records), res
    out = []
    for rec in records:
        text = rec.get("text")
        if text is not None and "\n" in text:
            kept = [l for l in text.split("\n") if _line_key(l) not in common]
            if len(kept) != len(text.split("\n")):
                new = {**rec, "text": "\n".join(kept)}
                res.changed += 1
                if len(res.samples) < SAMPLES:
                    res.samples.append((_show(rec), _show(new)))
                rec = new
        out.append(rec)
    return out, res


def length_filter(records: list[dict], min_chars: int, max_chars: int | None) -> tuple[list[dict], OpResult]:
    """Records whose prompt side is shorter than `min_chars` or longer than `max_chars` dropped."""
    res, out = OpResult("length"), []
    for rec in records:
        n = len(prompt_text(rec))
        reason = "too_short" if n < min_chars else "too_long" if max_chars and n > max_chars else None
        if reason:
            res.dropped.append((rec, reason))
        else:
            out.append(rec)
    return out, res


def string_ops(date_order: str = "mdy") -> dict:
    """The cleaning operations that act on one string at a time, by name."""
    return {"html": html_to_text, "unicode": fix_unicode, "whitespace": fix_whitespace,
            "pii": redact_pii, "dates": lambda s: normalise_dates(s, date_order)}


def clean_text(s: str, ops: list[str], date_order: str = "mdy") -> str:
    """`s` with the string operations among `ops` applied in order, as the data stage applied them to
    training text (the server cleans request inputs the same way); record-level operations are skipped."""
    strings = string_ops(date_order)
    for op in ops:
        if op in strings:
            s = strings[op](s)
    return s


def clean(records: list[dict], ops: list[str], *, min_chars: int = 1, max_chars: int | None = None,
          date_order: str = "mdy", boilerplate_share: float = 0.3) -> tuple[list[dict], list[OpResult]]:
    """Apply cleaning operations in order; returns the records kept and one result per operation."""
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown cleaning operation(s) {unknown}; known: {', '.join(OPS)}")
    strings = string_ops(date_order)
    results = []
    for op in ops:
        if op in strings:
            records, res = _map(op, records, strings[op])
        elif op == "headers_footers":
            records, res = strip_headers_footers(records)
        elif op == "boilerplate":
            records, res = strip_boilerplate(records, boilerplate_share)
        else:
            records, res = length_filter(records, min_chars, max_chars)
        results.append(res)
    return records, results
