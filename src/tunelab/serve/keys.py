"""API keys: created, listed and revoked by `tunelab keys`, stored as salted hashes, checked in constant time.

A key reads `tlk_<id>_<secret>`: the id (public, logged as `key_id`) finds the stored entry, the
secret (256 random bits) is hashed with the entry's salt and compared with `hmac.compare_digest`.
SHA-256 is enough here: a slow password hash defends low-entropy secrets against guessing, and a
256-bit random secret cannot be guessed; it also keeps checking a key at microseconds per request.
The store is one JSON file (default `$TUNELAB_HOME/keys.json`, mode 0600) holding no secret; a
running server re-reads it when it changes, so a revoked key stops working without a restart.

Scopes: `api` keys may call everything; `metrics` keys (scrape tokens) may only read `/metrics`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.errors import UserError
from tunelab.core.home import tunelab_home
from tunelab.core.rundir import atomic_write_json

PREFIX = "tlk"
SCOPES = ("api", "metrics")


class KeyStoreError(UserError):
    """A key-store problem the user can fix (unknown key id, damaged file)."""


def default_keys_file() -> Path:
    """Where keys live unless `--keys-file`/`serve.keys_file` says otherwise."""
    return tunelab_home() / "keys.json"


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as: the key's id and name (never the key) and its scope."""
    key_id: str
    name: str
    scope: str


class KeyStore:
    """The key file: create/list/revoke (CLI) and verify (server, thread-safe, reloads on change)."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else default_keys_file()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, dict] = {}

    # ------------------------------------------------------------ file

    def _load(self) -> dict[str, dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, {}
            return self._entries
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise KeyStoreError(f"{self.path}: the key file cannot be read ({e}); fix or remove it") from None
            self._entries = {k["id"]: k for k in doc.get("keys", [])}
            self._stamp = stamp
        return self._entries

    def _save(self, entries: dict[str, dict]) -> None:
        atomic_write_json(self.path, {"keys": list(entries.values())})
        os.chmod(self.path, 0o600)

    # ------------------------------------------------------------ CLI

    def create(self, name: str, scope: str = "api") -> tuple[str, dict]:
        """Make a key; returns the key (shown once, never stored) and its stored entry."""
        if scope not in SCOPES:
            raise KeyStoreError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        with self._lock:
            entries = dict(self._load())
            key_id = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_hex(16)
            entry = {"id": key_id, "name": name, "scope": scope, "salt": salt, "hash": _digest(salt, secret),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "revoked": None}
            entries[key_id] = entry
            self._save(entries)
        return f"{PREFIX}_{key_id}_{secret}", entry

    def list(self) -> list[dict]:
        """Every stored entry (id, name, scope, created, revoked), without salts and hashes."""
        with self._lock:
            return [{k: v for k, v in e.items() if k not in ("salt", "hash")} for e in self._load().values()]

    def revoke(self, key_id: str) -> dict:
        """Mark a key revoked (kept in the file, so its id in old request logs still means something)."""
        with self._lock:
            entries = dict(self._load())
            if key_id not in entries:
                raise KeyStoreError(f"no key with id {key_id!r} in {self.path} (see `tunelab keys list`)")
            entries[key_id] = {**entries[key_id], "revoked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._save(entries)
            return entries[key_id]

    # ------------------------------------------------------------ server

    def is_live(self, key_id: str) -> bool:
        """Whether `key_id` names a key that exists and is not revoked."""
        with self._lock:
            e = self._load().get(key_id)
        return bool(e) and not e.get("revoked")

    def active_count(self) -> int:
        with self._lock:
            return sum(1 for e in self._load().values() if not e.get("revoked"))

    def verify(self, key: str | None) -> Principal | None:
        """The key's principal when it is a live key of this store, else None (constant-time on the secret)."""
        if not key or not key.startswith(PREFIX + "_"):
            return None
        parts = key.split("_", 2)
        if len(parts) != 3:
            return None
        _, key_id, secret = parts
        with self._lock:
            entry = self._load().get(key_id)
        # Hash and compare even for an unknown id, so timing does not tell which ids exist.
        salt = entry["salt"] if entry else "00" * 16
        expected = entry["hash"] if entry else "0" * 64
        ok = hmac.compare_digest(_digest(salt, secret), expected)
        if not ok or entry is None or entry.get("revoked"):
            return None
        return Principal(key_id, entry.get("name", ""), entry.get("scope", "api"))
