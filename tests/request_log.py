"""A small writer of request-log lines that follows `tunelab serve`'s contract (serve/requestlog.py), for
monitor tests that need traffic without a server; the end-to-end test uses the real server instead.

    rows = [entry("where is my card", "card_arrival", i=i, model="bank") for i in range(200)]
    write(tmp_path / "requests.jsonl", rows)
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def entry(text: str | None, label: str | None, *, i: int, model: str, prompt_tokens: int | None = None,
          status: int = 200, latency_ms: float = 25.0, probability: float | None = None,
          route: str = "/v1/chat/completions", output: str | None = None, log_prompts: bool = True) -> dict:
    """One request's log line; request `i` happens i seconds after START."""
    ok = 200 <= status < 300
    return {"time": (START + timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": uuid.UUID(int=i + 1).hex, "key_id": "k1", "route": route, "model": model,
            "status": status, "error_type": None if ok else ("server_error" if status >= 500 else "invalid_request"),
            "latency_ms": latency_ms, "ttft_ms": latency_ms / 2 if ok else None,
            "prompt_tokens": prompt_tokens if prompt_tokens is not None else len((text or "").split()) + 5,
            "completion_tokens": 3 if ok else 0, "stream": False, "label": label if ok else None,
            "label_probability": probability if ok else None,
            "input": text if log_prompts else None, "output": (output or label) if (ok and log_prompts) else None}


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
