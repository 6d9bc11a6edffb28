"""Files -> raw rows: csv, tsv, jsonl, json, parquet (one row per record) and txt, md, html, pdf, docx
(one row per document or page, with provenance). Problems are collected, never raised one by one."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Iterator

from tunelab.data._json import JsonObject, duplicate_keys, element_lines, json_array, keyed_element_lines
from tunelab.data.encoding import decode_file
from tunelab.data.fields import PathError, render
from tunelab.data.html import html_to_text
from tunelab.data.problems import Problems

TABLE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
DOC_FORMATS = ("txt", "md", "html", "pdf", "docx")
# Problems confined to one row: `data.errors: skip` drops such rows (counted) instead of stopping.
ROW_PROBLEMS = ("malformed_json", "non_utf8", "malformed_row", "not_an_object", "duplicate_key", "bad_field_path")
# `delimiter: auto` picks, from a delimited file's header line, the candidate it holds most often.
DELIMITERS = (",", ";", "\t", "|")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
               ".parquet": "parquet", ".txt": "txt", ".md": "md", ".markdown": "md", ".html": "html",
               ".htm": "html", ".pdf": "pdf", ".docx": "docx"}
_SUPPORTED = sorted(set(_EXTENSIONS.values()))
# Python's csv module refuses fields over 131,072 characters by default; a long document in one cell
# is legitimate (it is truncated at tokenization, and counted), so allow fields up to 64 MiB.
FIELD_LIMIT = 64 << 20


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
    encodings: dict[str, str] = field(default_factory=dict)  # files not read in the configured encoding
    delimiters: dict[str, str] = field(default_factory=dict)  # delimited files not split on their format's default

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
           problems: Problems | None = None, skip_bad_rows: bool = False, delimiter: str = "auto",
           key_column: str | None = None, fields: dict[str, str] | None = None) -> Ingested:
    """Read every file a spec names into rows, recording problems (missing file, bad bytes, bad JSON...).

    Args:
        skip_bad_rows: rows with malformed JSON, undecodable bytes, a wrong field count or a field
            path they lack are still reported, as warnings, and kept in `skipped` instead of stopping.
        delimiter: csv/tsv field separator, or "auto" (from the header line, see `sniff_delimiter`).
        key_column: JSON files shaped {"key": [records], ...} are read as those records, each with
            its key in this column (e.g. SNIPS: one file per intent, the intent as the key).
        fields: columns computed from each row (`fields.render` templates), added to its fields.
    """
    problems = problems if problems is not None else Problems()
    out = Ingested()
    paths = expand(spec, base)
    if not paths:
        kind, found = _nothing(spec, base)
        problems.add(kind, spec, expected="an existing file, folder or glob", found=found,
                     hint=f"relative paths resolve against {base}; supported: {', '.join(_SUPPORTED)}")
    for path in paths:
        name = _display(path, base)
        kind = fmt if fmt != "auto" else _EXTENSIONS.get(path.suffix.lower())
        if kind is None:
            problems.add("unsupported_format", name, expected=f"one of {', '.join(_SUPPORTED)}",
                         found=path.suffix or "no extension", hint="set data.format")
            continue
        before = len(out.rows) + len(out.skipped)
        reader = _READERS[kind]
        if kind in ("csv", "tsv"):
            reader = partial(reader, delimiter=delimiter)
        elif kind == "json":
            reader = partial(reader, key_column=key_column)
        sink, first = Problems(), len(out.rows)
        reader(path, name, out, sink, encoding, kind)
        if fields:
            _computed_fields(out, first, fields, sink)
        for p in sink.items:  # row-level problems become warnings when the user asked to skip bad rows
            rowlevel = p.kind in ROW_PROBLEMS
            problems.items.append(replace(p, severity="warning") if skip_bad_rows and rowlevel else p)
        out.files.append({"path": name, "sha256": sha256_file(path), "format": kind,
                          "rows": len(out.rows) + len(out.skipped) - before,
                          **({"encoding": out.encodings[name]} if name in out.encodings else {}),
                          **({"delimiter": out.delimiters[name]} if name in out.delimiters else {})})
    out.read = len(out.rows) + len(out.skipped)
    return out


def _computed_fields(out: Ingested, first: int, fields: dict[str, str], problems: Problems) -> None:
    """Add `data.fields` to the rows this file gave (`out.rows[first:]`); a row lacking a path is
    skipped with a located `bad_field_path` problem."""
    kept = out.rows[:first]
    for row in out.rows[first:]:
        computed, failed = {}, None
        for name, template in fields.items():
            try:
                computed[name] = render(template, row.fields)
            except PathError as e:
                failed = (name, template, e)
                break
        if failed is None:
            row.fields.update(computed)
            kept.append(row)
            continue
        name, template, e = failed
        problems.add("bad_field_path", row.file, row.line, f"data.fields.{name}",
                     expected=f"{template!r} to name a value in this record", found=str(e),
                     hint="fix the path in data.fields (name, a.b, a[0], a[*].b) or set data.errors: skip")
        out.skipped.append((row, "bad_field_path"))
    out.rows = kept


def _nothing(spec: str, base: Path) -> tuple[str, str]:
    """The problem kind and what a spec that yields no input file names (an empty folder, a pattern
    matching nothing, a missing path)."""
    p = Path(spec).expanduser()
    p = p if p.is_absolute() else base / p
    if any(c in spec for c in "*?["):
        return "file_not_found", "no file matching the pattern"
    if p.is_dir():
        others = sorted(x.name for x in p.rglob("*") if x.is_file())
        listing = f" ({len(others)} other file(s): {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else ""
        return "no_supported_files", f"a folder without supported files{listing}"
    return "file_not_found", "no such file or folder"


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.name


# ---------------------------------------------------------------- decoding


def _decode(path: Path, name: str, out: Ingested, problems: Problems, encoding: str) -> tuple[str, set[int]] | None:
    """File text and the 1-based lines holding undecodable bytes; None (with a problem) when it cannot be read.
    A file read in another encoding than the configured one (a byte-order mark said so) is noted in `out`."""
    decoded = decode_file(path.read_bytes(), name, encoding, problems)
    if decoded is None:
        return None
    if decoded.why != "data.encoding":
        out.encodings[name] = f"{decoded.encoding} ({decoded.why})"
    return decoded.text, decoded.bad_lines


# ---------------------------------------------------------------- table readers


def sniff_delimiter(text: str, default: str) -> str:
    """The candidate separator (, ; tab |) the first non-empty line holds most often outside quotes;
    `default` when it holds none of them (a one-column file)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    outside = "".join(part for i, part in enumerate(line.split('"')) if i % 2 == 0)
    counts = {d: outside.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: (counts[d], d == default))
    return best if counts[best] else default


def _read_delimited(path, name, out, problems, encoding, kind, delimiter="auto"):
    decoded = _decode(path, name, out, problems, encoding)
    if decoded is None:
        return
    text, bad = decoded
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    default = "\t" if kind == "tsv" else ","
    if delimiter == "auto":
        delimiter = sniff_delimiter(text, default)
    if delimiter != default:
        out.delimiters[name] = delimiter
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, start = None, 1
    for row in _csv_rows(reader, name, problems):
        end = reader.line_num
        line, start = start, end + 1
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [h.strip() for h in row]
            if _duplicate_columns(header, name, problems):
                return
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


def _csv_rows(reader, name: str, problems: Problems):
    """The reader's rows; a row the csv module cannot parse ends the file with a located problem."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            problems.add("malformed_csv", name, reader.line_num, expected="a well-formed CSV row", found=str(e),
                         hint="check the quoting of this line (an unclosed quote swallows the lines after it)")
            return


def _duplicate_columns(header: list[str], name: str, problems: Problems) -> bool:
    """Record a problem for each column name the header repeats (the later column would silently win)."""
    seen: dict[str, list[int]] = {}
    for i, h in enumerate(header, start=1):
        seen.setdefault(h, []).append(i)
    for h, cols in seen.items():
        if len(cols) > 1:
            problems.add("duplicate_column", name, 1, h, expected="each column name once",
                         found=f"'{h}' as columns {', '.join(map(str, cols))} of {len(header)}",
                         hint="rename one of them: a record keeps one value per name, so the others would be lost")
    return any(len(c) > 1 for c in seen.values())


def _read_jsonl(path, name, out, problems, encoding, kind):
    decoded = _decode(path, name, out, problems, encoding)
    if decoded is None:
        return
    text, bad = decoded
    if json_array(text, name, problems):
        return
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if i in bad:
            out.skipped.append((Row({"raw": line}, name, i), "non_utf8"))
            continue
        try:
            obj = json.loads(line, object_pairs_hook=JsonObject.of)
        except json.JSONDecodeError as e:
            problems.add("malformed_json", name, i, expected="one JSON object per line",
                         found=f"{e.msg} at column {e.colno}: {line.strip()[:60]!r}")
            out.skipped.append((Row({"raw": line}, name, i), "malformed_json"))
            continue
        if not isinstance(obj, dict):
            problems.add("not_an_object", name, i, expected="a JSON object", found=type(obj).__name__)
            out.skipped.append((Row({"raw": line}, name, i), "not_an_object"))
            continue
        if duplicate_keys(obj, name, i, None, problems):
            out.skipped.append((Row(dict(obj), name, i), "duplicate_key"))
            continue
        out.rows.append(Row(dict(obj), name, i))


def _read_json(path, name, out, problems, encoding, kind, key_column=None):
    decoded = _decode(path, name, out, problems, encoding)
    if decoded is None:
        return
    text = decoded[0]
    try:
        doc = json.loads(text, object_pairs_hook=JsonObject.of)
    except json.JSONDecodeError as e:
        problems.add("malformed_json", name, e.lineno, expected="a JSON array of objects or records",
                     found=f"{e.msg} at column {e.colno}")
        return
    if key_column:
        return _keyed_records(doc, text, name, out, problems, key_column)
    if isinstance(doc, dict) and all(isinstance(v, list) for v in doc.values()) and doc:
        lists = list(doc.values())
        if doc.own:
            duplicate_keys(doc, name, 1, None, problems)
            return
        if len(lists) == 1 and all(isinstance(x, dict) for x in lists[0]):
            doc = lists[0]  # {"data": [{...}, ...]}
        else:  # column-oriented {"text": [...], "label": [...]}: no line per record, so number them
            out.rows.extend(Row(dict(zip(doc, vals)), name, i) for i, vals in enumerate(zip(*lists), start=1))
            return
    if not isinstance(doc, list):
        problems.add("not_an_object", name, 1, expected="a JSON array of objects", found=type(doc).__name__)
        return
    lines = element_lines(text)
    for i, obj in enumerate(doc):
        line = lines[i] if i < len(lines) else None
        if isinstance(obj, dict) and duplicate_keys(obj, name, line, None, problems):
            out.skipped.append((Row(dict(obj), name, line), "duplicate_key"))
        elif isinstance(obj, dict):
            out.rows.append(Row(dict(obj), name, line))
        else:
            problems.add("not_an_object", name, line, field=f"[{i}]", expected="a JSON object",
                         found=type(obj).__name__)
            out.skipped.append((Row({"raw": obj}, name, line), "not_an_object"))


def _keyed_records(doc, text: str, name: str, out: Ingested, problems: Problems, key_column: str) -> None:
    """{"key": [records], ...} -> the records, each with its key in `key_column` (data.json_key_column)."""
    shape = "an object whose values are lists of records (data.json_key_column)"
    if not isinstance(doc, dict) or not doc or not all(isinstance(v, list) for v in doc.values()):
        problems.add("json_shape", name, 1, expected=shape, found=f"{type(doc).__name__}" + (
            f" with keys {', '.join(list(doc)[:5])}" if isinstance(doc, dict) else ""),
            hint="remove data.json_key_column for a plain array of records")
        return
    lines = iter(keyed_element_lines(text))
    for key, records in doc.items():
        for i, obj in enumerate(records):
            line = next(lines, None)
            if not isinstance(obj, dict):
                problems.add("not_an_object", name, line, field=f"{key}[{i}]", expected="a JSON object",
                             found=type(obj).__name__)
                out.skipped.append((Row({"raw": obj}, name, line), "not_an_object"))
            elif key_column in obj:
                problems.add("duplicate_key", name, line, field=f"{key}[{i}].{key_column}",
                             expected=f"records without a {key_column!r} field (data.json_key_column fills it)",
                             found=f"{key_column!r} = {str(obj[key_column])[:40]!r}", hint="choose another column name")
                out.skipped.append((Row(dict(obj), name, line), "duplicate_key"))
            else:
                out.rows.append(Row({**obj, key_column: key}, name, line))


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
    decoded = _decode(path, name, out, problems, encoding)
    if decoded is None:
        return
    text = decoded[0]
    if kind == "html":
        text = html_to_text(text)
    out.rows.append(Row({"text": text}, name, 1))


def _read_pdf(path, name, out, problems, encoding, kind):
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    pages, damaged = [], []
    try:
        with _pypdf_errors() as errors:
            for i, page in enumerate(PdfReader(path).pages, start=1):
                seen = len(errors)
                pages.append(page.extract_text() or "")
                if len(errors) > seen and not pages[-1].strip():   # pypdf logs an undecodable stream, returns ''
                    damaged.append((i, errors[seen]))
    except (PyPdfError, OSError, ValueError) as e:
        problems.add("unreadable_file", name, expected="a readable PDF", found=str(e)[:120])
        return
    if not any(p.strip() for p in pages):
        if damaged:
            problems.add("damaged_pdf", name, expected="a PDF whose pages can be decoded",
                         found=f"{len(damaged)} of {len(pages)} page(s) with a damaged content stream "
                               f"(page {damaged[0][0]}: {damaged[0][1][:100]})",
                         hint="the file is corrupt: export or download it again")
        else:
            problems.add("empty_file", name, expected="extractable text", found=f"{len(pages)} page(s) without text",
                         hint="scanned PDFs need OCR first")
        return
    for i, why in damaged:
        problems.add("damaged_pdf_page", name, None, f"page {i}", expected="a decodable content stream",
                     found=why[:120], severity="warning", hint="the page's text is missing; it is dropped as empty")
    out.rows.extend(Row({"text": t}, name, None, i) for i, t in enumerate(pages, start=1))


@contextmanager
def _pypdf_errors() -> Iterator[list[str]]:
    """Collect what pypdf logs at warning level or above while reading (it logs damaged streams, not raises)."""
    found: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record.getMessage())

    logger, handler = logging.getLogger("pypdf"), _Collect(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


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
