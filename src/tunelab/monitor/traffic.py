"""Production traffic: the request log `tunelab serve` writes, read, checked against its contract and filtered.

The contract (serve/requestlog.py; fields may be added, never renamed), one JSON object per line:

    {"time": ISO-8601 UTC with ms, "request_id": str, "key_id": str|null, "route": str, "model": str|null,
     "status": int, "error_type": str|null, "latency_ms": float, "ttft_ms": float|null,
     "prompt_tokens": int, "completion_tokens": int, "stream": bool, "label": str|null,
     "label_probability": float|null, "input": str|null, "output": str|null}

`input`/`output` are present only when the server ran with `serve.log_prompts` (PII redacted). A log
path `requests.jsonl` also reads its rotated copies `requests.jsonl.1`, `.2`, ... (oldest first). A line
that breaks the contract is an error naming its file, line and field; the last line of a file that is
still being written (no newline yet) is skipped and counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tunelab.data.problems import Problems

# field -> (accepted types, may be null)
CONTRACT: dict[str, tuple[tuple[type, ...], bool]] = {
    "time": ((str,), False), "request_id": ((str,), False), "key_id": ((str,), True), "route": ((str,), False),
    "model": ((str,), True), "status": ((int,), False), "error_type": ((str,), True),
    "latency_ms": ((int, float), False), "ttft_ms": ((int, float), True), "prompt_tokens": ((int,), False),
    "completion_tokens": ((int,), False), "stream": ((bool,), False), "label": ((str,), True),
    "label_probability": ((int, float), True), "input": ((str,), True), "output": ((str,), True),
}
# Routes whose requests a model answered (the others are health checks, metrics scrapes, pages).
MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/classifications", "/ui/chat", "/ui/classify")


@dataclass
class Traffic:
    """The monitored model's requests in time order, and what reading the logs skipped (with reasons)."""

    requests: list[dict]
    files: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def has_inputs(self) -> bool:
        """Whether the log holds input text (the server ran with serve.log_prompts)."""
        return any(r.get("input") is not None for r in self.requests)

    @property
    def has_outputs(self) -> bool:
        return any(r.get("output") is not None for r in self.requests)


def log_files(paths: list[Path]) -> list[Path]:
    """Each given log with its rotated copies (`x.jsonl.2`, `x.jsonl.1`, then `x.jsonl`), oldest first."""
    out: list[Path] = []
    for p in map(Path, paths):
        rotated = sorted((q for q in p.parent.glob(p.name + ".*") if re.fullmatch(r"\d+", q.suffix[1:])),
                         key=lambda q: -int(q.suffix[1:])) if p.parent.is_dir() else []
        for q in rotated + [p]:
            if q not in out:
                out.append(q)
    return out


def _check(doc, file: str, line: int, problems: Problems) -> bool:
    if not isinstance(doc, dict):
        problems.add("not_an_object", file, line, None, "a JSON object per line", type(doc).__name__)
        return False
    ok = True
    for name, (types, nullable) in CONTRACT.items():
        value = doc.get(name)
        if name not in doc and nullable:
            continue   # an older writer may lack an optional field; absent reads as null
        if value is None and nullable:
            continue
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            what = "missing" if name not in doc else f"{type(value).__name__} {str(value)[:40]!r}"
            problems.add("request_log_field", file, line, name, " or ".join(t.__name__ for t in types)
                         + (" or null" if nullable else ""), what)
            ok = False
    if ok:
        try:
            parse_time(doc["time"])
        except ValueError:
            problems.add("request_log_field", file, line, "time", "ISO-8601 time", repr(doc["time"])[:40])
            ok = False
    return ok


def parse_time(value: str) -> datetime:
    """An ISO-8601 time of the log (`2025-01-31T12:00:00.123Z`) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def read_requests(paths: list[Path]) -> tuple[list[dict], list[str], dict[str, int]]:
    """Every request line of the logs (with rotated copies), deduplicated by request id, in time order.

    Raises:
        DataError: a missing log, or lines that break the contract (each with file, line and field).
    """
    problems, skipped, seen, rows, files = Problems(), {}, set(), [], []
    for path in log_files(paths):
        if not path.is_file():
            problems.add("missing_file", str(path), None, None, "a request log (JSONL)", "no such file",
                         hint="`tunelab serve` writes <runs>/_serving/requests.jsonl unless serve.request_log says otherwise")
            continue
        files.append(str(path))
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except json.JSONDecodeError as e:
                if i == len(lines) and not text.endswith("\n"):
                    skipped["incomplete_last_line"] = skipped.get("incomplete_last_line", 0) + 1
                    continue
                problems.add("malformed_json", str(path), i, None, "one JSON object per line", e.msg)
                continue
            if _check(doc, str(path), i, problems) and doc["request_id"] not in seen:
                seen.add(doc["request_id"])
                rows.append(doc)
            elif isinstance(doc, dict) and doc.get("request_id") in seen:
                skipped["duplicate_request_id"] = skipped.get("duplicate_request_id", 0) + 1
    problems.raise_if_errors("cannot read the request log")
    rows.sort(key=lambda r: parse_time(r["time"]))
    return rows, files, skipped


def load_traffic(paths: list[Path], model: str, since: datetime | None = None) -> Traffic:
    """The requests the model id `model` answered (model routes only), after `since` when given."""
    rows, files, skipped = read_requests(paths)
    keep = []
    for r in rows:
        reason = None
        if r.get("model") != model:
            reason = "other_model"
        elif r["route"] not in MODEL_ROUTES:
            reason = "not_a_model_route"
        elif since is not None and parse_time(r["time"]) < since:
            reason = "before_promotion"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            keep.append(r)
    return Traffic(keep, files, skipped)


def is_error(r: dict) -> bool:
    """A request the server failed (5xx) or turned away for load (429); other 4xx are the client's mistakes."""
    return r["status"] >= 500 or r["status"] == 429


def answered(r: dict) -> bool:
    return 200 <= r["status"] < 300
