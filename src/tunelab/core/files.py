"""Crash-safe file operations: atomic writes (temp file + rename), JSON/JSONL readers that name the
damaged line, and folder removal that never leaves a half-deleted folder under its real name.

A process killed at any moment (kill -9, power loss) leaves either the old file or the new one,
never a mix; leftovers are dot-named temp files and folders that `sweep` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from tunelab.core.errors import RunDirError

# Dot-named leftovers of writes and removals a killed process did not finish (see `sweep`).
LEFTOVER_TAGS = (".tmp-", ".partial-", ".old-", ".trash-")


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` through a temp file in the same folder and an atomic rename; `durable`: fsync
    first (a cache that can be recomputed, e.g. a run's summary file, skips it: ~ms per file on a disk).

    Raises:
        RunDirError: the folder is not writable (read-only, full disk); the message names the path.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {e.strerror or e}") from None


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Write `text` (UTF-8) to `path` through a temp file in the same folder and an atomic rename."""
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: Path, doc: Any, indent: int | None = 2, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(doc, indent=indent, ensure_ascii=False) + "\n", durable)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[dict]:
    """The objects of a JSONL file ([] when it does not exist).

    Args:
        torn_tail_ok: an append-only log may end in a half-written line when its writer was killed;
            such a last line (no newline after it) is ignored instead of refused.

    Raises:
        RunDirError: a line is not JSON; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if torn_tail_ok and i == len(lines):
                break
            raise RunDirError(f"{path}:{i}: not valid JSON ({e.msg}): the file is damaged") from None
    return out


def read_json(path: Path) -> dict:
    """A JSON file's object ({} when it does not exist).

    Raises:
        RunDirError: the file is not valid JSON.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e}): the file is damaged") from None


def remove_tree(path: Path) -> None:
    """Remove a folder as one step: renamed to a dot-named trash folder first, then deleted, so a
    process killed mid-way never leaves a partly deleted folder under its real name."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def sweep(folder: Path) -> list[str]:
    """Remove the dot-named leftovers (temp files and folders) killed processes left directly in `folder`."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and any(tag in p.name for tag in LEFTOVER_TAGS):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def check_writable(folder: Path) -> None:
    """Raise RunDirError unless a file can be created in `folder` (read-only folder or file system)."""
    probe = Path(folder) / f".write-probe.tmp-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"{folder} is not writable ({e.strerror or e}): tunelab records every stage's status and "
                          "outputs in the run folder; fix its permissions or copy it to a writable place") from None
