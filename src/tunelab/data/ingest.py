"""Files -> raw rows: csv, tsv, jsonl, json, parquet (one row per record) and txt, md, html, pdf, docx
(one row per document or page, with provenance). Problems are collected, never raised one by one."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunelab.data.html import html_to_text
from tunelab.data.problems import Problems

TABLE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
DOC_FORMATS = ("txt", "md", "html", "pdf", "docx")
# Problems confined to one row: `data.errors: skip` drops such rows (counted) instead of stopping.
ROW_PROBLEMS = ("malformed_json", "non_utf8", "malformed_row", "not_an_object")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
               ".parquet": "parquet", ".txt": "txt", ".md": "md", ".markdown": "md", ".html": "html",
               ".htm": "html", ".pdf": "pdf", ".docx": "docx"}


@dataclass
class Row:
    """One record as read: its fields and where it came from (1-based line, 1-based page)."""

    fields: dict
    file: str
    line: int | None = None
    page: int | None = None

    @property
    def id(self) -> str:
        if self.page is not None:
            return f"{self.file}:p{self.page}"
        return f"{self.file}:{self.line}"


@dataclass
class Ingested:
    """Rows of one split's inputs, the files they came from, and rows skipped as unreadable."""

    rows: list[Row] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)     # {"path", "sha256", "format", "rows"}
    skipped: list[tuple[Row, str]] = field(default_factory=list)  # (row, reason) with errors=skip
    read: int = 0                                       # rows read, including skipped ones

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.update(dict.fromkeys(r.fields))
        return list(seen)


def expand(spec: str, base: Path) -> list[Path]:
    """The files a data spec names: one file, every supported file under a folder, or a glob."""
    p = Path(spec).expanduser()
    p = p if p.is_absolute() else base / p
    if any(c in spec for c in "*?["):
        return sorted(Path(x) for x in glob.glob(str(p), recursive=True) if Path(x).is_file())
    if p.is_dir():
        return sorted(x for x in p.rglob("*") if x.is_file() and x.suffix.lower() in _EXTENSIONS)
    return [p] if p.exists() else []


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ingest(spec: str, base: Path, fmt: str = "auto", encoding: str = "utf-8",
           problems: Problems | None = None, skip_bad_rows: bool = False) -> Ingested:
    """Read every file a spec names into rows, recording problems (missing file, bad bytes, bad JSON...).

    Args:
        skip_bad_rows: rows with malformed JSON, undecodable bytes or a wrong field count are still
            reported, as warnings, and kept in `skipped` instead of stopping the run.
    """
    problems = problems if problems is not None else Problems()
    out = Ingested()
    paths = expand(spec, base)
    if not paths:
        problems.add("file_not_found", spec, expected="an existing file, folder or glob",
                     found="nothing", hint=f"relative paths resolve against {base}")
    for path in paths:
        name = _display(path, base)
        kind = fmt if fmt != "auto" else _EXTENSIONS.get(path.suffix.lower())
        if kind is None:
            problems.add("unsupported_format", name, expected=f"one of {', '.join(sorted(set(_EXTENSIONS.values())))}",
                         found=path.suffix or "no extension", hint="set data.format")
            continue
        before = len(out.rows) + len(out.skipped)
        reader = _READERS[kind]
        sink = Problems()
        reader(path, name, out, sink, encoding, kind)
        for p in sink.items:  # row-level problems become warnings when the user asked to skip bad rows
            rowlevel = p.kind in ROW_PROBLEMS
            problems.items.append(replace(p, severity="warning") if skip_bad_rows and rowlevel else p)
        out.files.append({"path": name, "sha256": sha256_file(path), "format": kind,
                          "rows": len(out.rows) + len(out.skipped) - before})
    out.read = len(out.rows) + len(out.skipped)
    return out


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.name


# ---------------------------------------------------------------- decoding


def _decode(path: Path, name: str, problems: Problems, encoding: str) -> tuple[str, set[int]] | None:
    """File text and the 1-based lines holding undecodable bytes; None (with a problem) when empty."""
    raw = path.read_bytes()
    if not raw.strip():
        problems.add("empty_file", name, expected="at least one record", found=f"{len(raw)} bytes")
        return None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 BOM would otherwise glue itself onto the first column name
    try:
        return raw.decode(encoding), set()
    except UnicodeDecodeError:
        pass
    bad: set[int] = set()
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode(encoding)
        except UnicodeDecodeError as e:
            bad.add(i)
            byte = line[e.start:e.start + 1].hex()
            problems.add("non_utf8", name, i, expected=f"{encoding} text",
                         found=f"byte 0x{byte} at column {e.start + 1} ({_guess(line)})",
                         hint="re-save the file as UTF-8 or set data.encoding (e.g. latin-1, cp1252)")
    return raw.decode(encoding, errors="replace"), bad


def _guess(line: bytes) -> str:
    for enc in ("cp1252", "latin-1"):
        try:
            return f"reads as {enc}: {line.decode(enc).strip()[:40]!r}"
        except UnicodeDecodeError:
            continue
    return "unknown encoding"


# ---------------------------------------------------------------- table readers


def _read_delimited(path, name, out, problems, encoding, kind):
    decoded = _decode(path, name, problems, encoding)
    if decoded is None:
        return
    text, bad = decoded
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    header, start = None, 1
    for row in reader:
        end = reader.line_num
        line, start = start, end + 1
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [h.strip() for h in row]
            continue
        rec = Row(dict(zip(header, row)), name, line)
        if any(line <= b <= end for b in bad):
            out.skipped.append((rec, "non_utf8"))
        elif len(row) != len(header):
            problems.add("malformed_row", name, line, expected=f"{len(header)} fields ({', '.join(header)})",
                         found=f"{len(row)} fields", hint="quote fields that contain the delimiter")
            out.skipped.append((rec, "malformed_row"))
        else:
            out.rows.append(rec)
    if header is None:
        problems.add("empty_file", name, expected="a header and at least one record", found="no rows")
    elif not out.rows and not out.skipped:
        problems.add("empty_file", name, expected="at least one record after the header", found="only a header")


def _read_jsonl(path, name, out, problems, encoding, kind):
    decoded = _decode(path, name, problems, encoding)
    if decoded is None:
        return
    text, bad = decoded
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if i in bad:
            out.skipped.append((Row({"raw": line}, name, i), "non_utf8"))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.add("malformed_json", name, i, expected="one JSON object per line",
                         found=f"{e.msg} at column {e.colno}: {line.strip()[:60]!r}")
            out.skipped.append((Row({"raw": line}, name, i), "malformed_json"))
            continue
        if not isinstance(obj, dict):
            problems.add("not_an_object", name, i, expected="a JSON object", found=type(obj).__name__)
            out.skipped.append((Row({"raw": line}, name, i), "not_an_object"))
            continue
        out.rows.append(Row(obj, name, i))


def _read_json(path, name, out, problems, encoding, kind):
    decoded = _decode(path, name, problems, encoding)
    if decoded is None:
        return
    text = decoded[0]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        problems.add("malformed_json", name, e.lineno, expected="a JSON array of objects or records",
                     found=f"{e.msg} at column {e.colno}")
        return
    if isinstance(doc, dict) and all(isinstance(v, list) for v in doc.values()) and doc:
        lists = list(doc.values())
        if len(lists) == 1 and all(isinstance(x, dict) for x in lists[0]):
            doc = lists[0]  # {"data": [{...}, ...]}
        else:  # column-oriented {"text": [...], "label": [...]}: no line per record, so number them
            out.rows.extend(Row(dict(zip(doc, vals)), name, i) for i, vals in enumerate(zip(*lists), start=1))
            return
    if not isinstance(doc, list):
        problems.add("not_an_object", name, 1, expected="a JSON array of objects", found=type(doc).__name__)
        return
    lines = _element_lines(text)
    for i, obj in enumerate(doc):
        line = lines[i] if i < len(lines) else None
        if isinstance(obj, dict):
            out.rows.append(Row(obj, name, line))
        else:
            problems.add("not_an_object", name, line, field=f"[{i}]", expected="a JSON object",
                         found=type(obj).__name__)
            out.skipped.append((Row({"raw": obj}, name, line), "not_an_object"))


def _element_lines(text: str) -> list[int]:
    """The 1-based line where each element of a top-level JSON array starts."""
    dec, pos, lines = json.JSONDecoder(), text.find("["), []
    if pos < 0:
        return lines
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        try:
            _, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return lines


def _read_parquet(path, name, out, problems, encoding, kind):
    import pyarrow.parquet as pq  # only parquet inputs need pyarrow loaded

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        problems.add("unreadable_file", name, expected="a parquet file", found=str(e)[:120])
        return
    if not rows:
        problems.add("empty_file", name, expected="at least one row", found="0 rows")
    # Parquet has no lines; the 1-based row number stands in for one.
    out.rows.extend(Row(r, name, i) for i, r in enumerate(rows, start=1))


# ---------------------------------------------------------------- document readers


def _read_text_doc(path, name, out, problems, encoding, kind):
    decoded = _decode(path, name, problems, encoding)
    if decoded is None:
        return
    text = decoded[0]
    if kind == "html":
        text = html_to_text(text)
    out.rows.append(Row({"text": text}, name, 1))


def _read_pdf(path, name, out, problems, encoding, kind):
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        pages = [p.extract_text() or "" for p in PdfReader(path).pages]
    except (PyPdfError, OSError, ValueError) as e:
        problems.add("unreadable_file", name, expected="a readable PDF", found=str(e)[:120])
        return
    if not any(p.strip() for p in pages):
        problems.add("empty_file", name, expected="extractable text", found=f"{len(pages)} page(s) without text",
                     hint="scanned PDFs need OCR first")
        return
    out.rows.extend(Row({"text": t}, name, None, i) for i, t in enumerate(pages, start=1))


def _read_docx(path, name, out, problems, encoding, kind):
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        d = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError) as e:
        problems.add("unreadable_file", name, expected="a .docx document", found=str(e)[:120])
        return
    parts = [p.text for p in d.paragraphs]
    for table in d.tables:
        parts += ["\t".join(c.text for c in row.cells) for row in table.rows]
    text = "\n".join(parts)
    if not text.strip():
        problems.add("empty_file", name, expected="text", found="an empty document")
        return
    out.rows.append(Row({"text": text}, name, 1))


_READERS = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "json": _read_json,
            "parquet": _read_parquet, "txt": _read_text_doc, "md": _read_text_doc, "html": _read_text_doc,
            "pdf": _read_pdf, "docx": _read_docx}
