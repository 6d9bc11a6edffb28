"""The prepared-data cache: a fingerprint of everything that shapes the prepared splits, and the
reason a previous result cannot be reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunelab.config import Config, differences
from tunelab.core.rundir import SPLITS, DataDir, RunDirError
from tunelab.data.ingest import expand, sha256_file

# Bump when the prepared format or a processing step changes meaning, so old caches rebuild.
FORMAT_VERSION = 1


def tokenizer_identity(tokenizer) -> dict | None:
    """What identifies a tokenizer's behaviour: class, name, vocabulary and chat template hashes."""
    if tokenizer is None:
        return None
    vocab = getattr(tokenizer, "get_vocab", lambda: {})()
    vocab_hash = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"class": type(tokenizer).__name__, "name": getattr(tokenizer, "name_or_path", None),
            "vocab_size": len(vocab), "vocab_sha256": vocab_hash[:16],
            "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest()[:16]}


def fingerprint_parts(cfg: Config, tokenizer) -> dict:
    """Every input that changes the prepared data, as a comparable dict."""
    base = Path(cfg.base_dir)
    inputs = {}
    for split in SPLITS:
        spec = getattr(cfg.data, split)
        if spec:
            inputs[split] = {str(p): sha256_file(p) for p in expand(spec, base)}
    return {"format": FORMAT_VERSION, "inputs": inputs, "data": cfg.data.model_dump(mode="json", by_alias=True),
            "model": cfg.model.name, "task": cfg.task, "seed": cfg.train.seed,
            "max_labels": cfg.eval.max_labels, "references": cfg.eval.references,
            "tokenizer": tokenizer_identity(tokenizer)}


def fingerprint(parts: dict) -> str:
    """A short stable hash of the fingerprint parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def why_rebuild(data: DataDir, parts: dict) -> str | None:
    """None when `data` holds a complete result for `parts`, else the reason to rebuild."""
    if not data.manifest_path.is_file():
        return f"no prepared data in {data.path}"
    try:
        old = data.manifest().get("fingerprint_parts", {})
    except RunDirError:
        return "manifest.json is unreadable"
    changes = differences_of_parts(old, parts)
    if changes:
        return "; ".join(changes[:6]) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")
    missing = data.missing()
    return f"missing {', '.join(missing)}" if missing else None


def differences_of_parts(old: dict, new: dict) -> list[str]:
    """What changed between two fingerprints' parts, one line each (`train input a.csv changed`)."""
    out = []
    for split in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
        a, b = old.get("inputs", {}).get(split, {}), new["inputs"].get(split, {})
        for path in sorted(set(a) | set(b)):
            if a.get(path) != b.get(path):
                state = "added" if path not in a else "removed" if path not in b else "changed"
                out.append(f"{split} input {Path(path).name} {state}")
    out += differences(old.get("data", {}), new["data"], "data")
    for key in ("format", "model", "task", "seed", "max_labels", "references"):
        if old.get(key) != new[key]:
            out.append(f"{key} changed ({old.get(key)!r} -> {new[key]!r})")
    if old.get("tokenizer") != new["tokenizer"]:
        what = [k for k in (new["tokenizer"] or {}) if (old.get("tokenizer") or {}).get(k) != new["tokenizer"][k]]
        out.append(f"tokenizer changed ({', '.join(what) or 'none before'})")
    return out
