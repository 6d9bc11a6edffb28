"""The run folder: every stage reads and writes one, never loose paths."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab import __version__
from tunelab.config import Config, dump_config, config_from_dict


def git_sha() -> str | None:
    """The commit of the tunelab checkout (None when installed from a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class RunDir:
    path: Path

    @property
    def config_path(self) -> Path: return self.path / "config.yaml"
    @property
    def data_dir(self) -> Path: return self.path / "data"
    @property
    def metrics_jsonl(self) -> Path: return self.path / "metrics.jsonl"
    @property
    def metrics_json(self) -> Path: return self.path / "metrics.json"
    @property
    def best(self) -> Path: return self.path / "best"
    @property
    def last(self) -> Path: return self.path / "last"

    @classmethod
    def create(cls, cfg: Config) -> "RunDir":
        """Make `runs/<name>/` and write the resolved config with version and git sha."""
        rd = cls(cfg.run_dir())
        rd.path.mkdir(parents=True, exist_ok=True)
        meta = {"tunelab_version": __version__, "git_sha": git_sha(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        doc = {**dump_config(cfg), "_meta": meta}
        rd.config_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return rd

    def config(self) -> Config:
        """The resolved config this run was made with."""
        raw = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        raw.pop("_meta", None)
        return config_from_dict(raw, source=str(self.config_path))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl."""
        with self.metrics_jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        if not self.metrics_jsonl.exists():
            return []
        return [json.loads(l) for l in self.metrics_jsonl.read_text(encoding="utf-8").splitlines() if l.strip()]

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_json.read_text(encoding="utf-8")) if self.metrics_json.exists() else {}

    def update_metrics(self, section: str, values: dict[str, Any]) -> dict[str, Any]:
        """Merge `values` into metrics.json under `section` and return the whole document."""
        doc = self.metrics()
        doc.setdefault(section, {}).update(values)
        self.metrics_json.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        return doc
