"""The request log: one JSON object per request, appended by a writer thread, rotated by size.

The format is a contract with `tunelab monitor` (issue 12) — fields may be added, never renamed:

    {"time": "2025-01-31T12:00:00.123Z", "request_id": str, "key_id": str | null, "route": str,
     "model": str | null, "status": int, "error_type": str | null, "latency_ms": float,
     "ttft_ms": float | null, "prompt_tokens": int, "completion_tokens": int, "stream": bool,
     "label": str | null, "label_probability": float | null, "input": str | null, "output": str | null}

`key_id` is the key's public id, never the key. `input`/`output` are written only with
`serve.log_prompts`, PII redacted (data/clean.py's `redact_pii`). Default path:
`<runs folder>/_serving/requests.jsonl` (core/rundir.py `request_log_path`); at `serve.log_max_bytes`
the file becomes `requests.jsonl.1` (older ones shift to `.2`, ...), so readers take `requests.jsonl*`.
Handlers never touch the file: a line is queued, and one thread writes, so concurrent requests never
interleave within a line and the event loop never waits for the disk.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path

from tunelab.data.clean import redact_pii

log = logging.getLogger(__name__)

FIELDS = ("time", "request_id", "key_id", "route", "model", "status", "error_type", "latency_ms", "ttft_ms",
          "prompt_tokens", "completion_tokens", "stream", "label", "label_probability", "input", "output")


def utc_now_ms() -> str:
    """ISO-8601 UTC time with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestLog:
    """Append-only JSONL writer with size rotation; `write` never blocks on the disk."""

    def __init__(self, path: Path, max_bytes: int, backups: int, log_prompts: bool):
        self.path, self.max_bytes, self.backups, self.log_prompts = Path(path), max_bytes, backups, log_prompts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tunelab-request-log", daemon=True)
        self._thread.start()

    def entry(self, **values) -> dict:
        """A complete log line: every contract field, text fields only when prompt logging is on (redacted)."""
        doc = {k: values.get(k) for k in FIELDS}
        if self.log_prompts:
            doc["input"] = redact_pii(doc["input"]) if doc["input"] is not None else None
            doc["output"] = redact_pii(doc["output"]) if doc["output"] is not None else None
        else:
            doc["input"] = doc["output"] = None
        return doc

    def write(self, doc: dict) -> None:
        self._q.put(json.dumps(doc, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._q.put(None)
        self._thread.join(timeout=10)

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def _run(self) -> None:
        while True:
            line = self._q.get()
            if line is None:
                return
            try:
                if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
                    self._rotate()
                with self.path.open("a", encoding="utf-8") as f:   # O_APPEND: other writers never interleave a line
                    f.write(line)
                    while True:   # drain what queued meanwhile in the same open
                        try:
                            more = self._q.get_nowait()
                        except queue.Empty:
                            break
                        if more is None:
                            return
                        f.write(more)
                        if f.tell() >= self.max_bytes:
                            break
            except OSError as e:
                log.error(f"request log {self.path}: {e}")
