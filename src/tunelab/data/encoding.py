"""A file's bytes -> text, per file: a byte-order mark names the encoding (UTF-8, UTF-16, UTF-32), else the
configured one; UTF-16 without a mark and a UTF-16 setting on a file that is not UTF-16 get a hint
instead of a screen of garbled errors; undecodable lines are reported with a guess of what they are."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from tunelab.data.problems import Problems

# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
         (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))
_SAMPLE = 4096


@dataclass
class Decoded:
    text: str
    bad_lines: set[int]      # 1-based lines holding bytes that do not decode (replaced by U+FFFD)
    encoding: str            # the codec used
    why: str                 # "byte-order mark", "data.encoding" ...


def _wide(name: str) -> bool:
    return codecs.lookup(name).name.startswith(("utf-16", "utf-32"))


def utf16_without_bom(raw: bytes) -> str | None:
    """"utf-16-le"/"utf-16-be" when the bytes look like UTF-16 text without a byte-order mark (every
    other byte zero, as ASCII-range text is in UTF-16), else None."""
    sample = raw[:_SAMPLE]
    if len(sample) < 4:
        return None
    odd, even = sample[1::2], sample[0::2]
    if odd.count(0) > 0.6 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.6 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def decode_file(raw: bytes, name: str, encoding: str, problems: Problems) -> Decoded | None:
    """The text of a file's bytes; None (after recording a problem) when it is empty or plainly in
    another encoding than the one it would be read with."""
    if not raw.strip(b" \t\r\n\x00"):
        problems.add("empty_file", name, expected="at least one record", found=f"{len(raw)} bytes")
        return None
    for bom, codec, label in _BOMS:
        if raw.startswith(bom):
            return _decode(raw, name, codec, f"{label} byte-order mark", problems)
    if _wide(encoding) and b"\x00" not in raw[:_SAMPLE]:
        problems.add("wrong_encoding", name, expected=f"{encoding} text (data.encoding)",
                     found="no zero bytes, so not UTF-16/32" + (" (it reads as UTF-8)" if _is_utf8(raw) else ""),
                     hint="set the encoding per split, e.g. data.encoding: {train: utf-16, test: utf-8}; "
                          "files that start with a byte-order mark are recognised without it")
        return None
    guess = None if _wide(encoding) else utf16_without_bom(raw)
    if guess:
        problems.add("utf16_without_bom", name, expected=f"{encoding} text",
                     found="UTF-16 without a byte-order mark (every other byte is zero)",
                     hint=f"set data.encoding: {guess} (or per split: {{train: {guess}}}), or re-save the file as UTF-8")
        return None
    return _decode(raw, name, encoding, "data.encoding", problems)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _decode(raw: bytes, name: str, codec: str, why: str, problems: Problems) -> Decoded:
    try:
        return Decoded(raw.decode(codec), set(), codec, why)
    except UnicodeDecodeError:
        pass
    paired = _surrogate_pairs(raw) if codecs.lookup(codec).name == "utf-8" else None
    if paired is not None:
        return Decoded(paired, set(), "utf-8",
                       "characters beyond U+FFFF written as CESU-8 surrogate pairs (as Java and some "
                       "JSON writers emit them), each pair read as the character it encodes")
    if _wide(codec):   # lines cannot be cut from the bytes of a wide encoding: one problem for the file
        text = raw.decode(codec, errors="replace")
        problems.add("undecodable_file", name, expected=f"{codec} text ({why})", found="bytes that do not decode",
                     hint="re-save the file as UTF-8")
        return Decoded(text, set(), codec, why)
    bad: set[int] = set()
    body = raw[3:] if codec == "utf-8-sig" else raw
    for i, line in enumerate(body.split(b"\n"), start=1):
        try:
            line.decode(codec)
        except UnicodeDecodeError as e:
            bad.add(i)
            byte = line[e.start:e.start + 1].hex()
            problems.add("non_utf8", name, i, expected=f"{codec} text",
                         found=f"byte 0x{byte} at column {e.start + 1} ({_guess(line)})",
                         hint="re-save the file as UTF-8 or set data.encoding (e.g. latin-1, cp1252)")
    return Decoded(raw.decode(codec, errors="replace"), bad, codec, why)


def _surrogate_pairs(raw: bytes) -> str | None:
    """The text of UTF-8 bytes whose only fault is characters beyond U+FFFF encoded as surrogate pairs
    (CESU-8); None when other bytes do not decode or a surrogate is unpaired."""
    try:
        text = raw.decode("utf-8", errors="surrogatepass")
        return text.encode("utf-16-le", errors="surrogatepass").decode("utf-16-le")
    except UnicodeError:
        return None


def _guess(line: bytes) -> str:
    for enc in ("cp1252", "latin-1"):
        try:
            return f"reads as {enc}: {line.decode(enc).strip()[:40]!r}"
        except UnicodeDecodeError:
            continue
    return "unknown encoding"
