"""The runs table: one summary per run folder, read from its small files only and cached by their mtimes.

A summary comes from `config.yaml`, `status.json`, `metrics.json` and `tags.json` (never the
weights, the predictions or the step log), so a folder of 1,000 runs is read once in well under a
second and afterwards costs one `stat` per file per request: a summary is re-read only when one of
its files changed (see `benchmarks/ui_runs_page.py`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.rundir import DashboardDir, RunDir, RunDirError, StudyDir, atomic_write_json, read_json
from tunelab.report.html import headline

log = logging.getLogger(__name__)

# The summary needs only strings from config.yaml (task, model, method, created): the C base loader
# builds no typed values and reads a config ~30% faster than the C safe loader (measured: 1.75 vs 2.5 ms
# at load 11 on 2 cores); it is absent on builds without libyaml.
_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)

COLUMNS = ("name", "status", "task", "model", "method", "metric_value", "baseline_value", "gain", "train_seconds",
           "tokens_per_second", "created")


@dataclass
class Summary:
    """One row of the runs table."""

    name: str
    status: str = "new"
    stage: str | None = None
    error: str | None = None
    task: str = "?"
    model: str = "?"
    method: str = "?"
    created: str = ""
    updated: str = ""
    metric: str | None = None          # the fine-tuned model's headline test metric
    metric_value: float | None = None
    metric_ci: list[float] | None = None
    baseline: str | None = None        # the best baseline on that metric
    baseline_value: float | None = None
    baseline_ci: list[float] | None = None
    gain: float | None = None          # fine-tuned minus best baseline (signed so that > 0 is better)
    p_value: float | None = None       # fine-tuned vs that baseline (paired test)
    train_seconds: float | None = None
    tokens_per_second: float | None = None
    tags: list[str] = field(default_factory=list)
    problem: str | None = None         # a file that could not be read

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_config(rd: RunDir) -> tuple[dict, dict]:
    doc = yaml.load(rd.config_path.read_text(encoding="utf-8"), Loader=_LOADER) or {}
    return doc, doc.get("_meta") or {}


def _best_baseline(head: dict) -> dict | None:
    """The baseline the fine-tuned model is judged against: the best one measured on the headline metric."""
    measured = [b for b in head["baselines"] if b.get("value") is not None]
    if not measured:
        return None
    # `better` is true when the fine-tuned model beats that baseline; the best baseline is the one with the
    # smallest gain over it (a gain is signed so that > 0 means the fine-tuned model is better).
    return min(measured, key=_signed_gain)


def _signed_gain(b: dict) -> float:
    if not b["delta"]:
        return 0.0
    return abs(b["delta"]) if b["better"] else -abs(b["delta"])


def summarize(rd: RunDir) -> Summary:
    """The runs-table row of `rd`; unreadable files leave their fields empty and name the problem."""
    s = Summary(rd.name)
    try:
        cfg, meta = _read_config(rd)
        s.task, s.created = str(cfg.get("task", "?")), str(meta.get("created", ""))
        s.model = str((cfg.get("model") or {}).get("name", "?"))
        s.method = str((cfg.get("method") or {}).get("name", "?"))
        st = rd.status()
        s.status, s.stage, s.error, s.updated = rd.state(), st.get("stage"), st.get("error"), st.get("updated", "")
        metrics = rd.metrics()
        s.tags = rd.tags()
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RunDirError) as e:
        s.problem = str(e)
        return s
    train = metrics.get("train") or {}
    s.train_seconds, s.tokens_per_second = train.get("wall_seconds"), train.get("tokens_per_second")
    test = metrics.get("test") or {}
    head = headline(test)
    if head is None:
        return s
    s.metric, s.metric_value, s.metric_ci = head["metric"], head["value"], head["ci"]
    best = _best_baseline(head)
    if best is not None:
        s.baseline, s.baseline_value, s.baseline_ci = best["name"], best["value"], best.get("ci")
        s.gain, s.p_value = _signed_gain(best), best.get("p")
    return s


_STATUS = 1   # status.json's place in RunDir.summary_files()


def _stamp(rd: RunDir) -> tuple:
    out = []
    for p in rd.summary_files():
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


class RunIndex:
    """Summaries of every run folder under `runs_dir`, each re-read only when one of its small files changed.

    The summaries and their stamps are also kept in `<runs>/_ui/index.json`, so a restarted dashboard
    reads one file instead of every run (the first scan of 1,000 Banking77-sized runs takes seconds:
    parsing the YAML configs dominates); a stamp that no longer matches is re-read as usual.
    """

    def __init__(self, runs_dir: Path, persist: bool = True):
        self.runs_dir = Path(runs_dir)
        self.index_path = DashboardDir(self.runs_dir).index_path if persist else None
        self._cache: dict[str, tuple[tuple, Summary]] = self._load()
        self._lock = threading.Lock()
        # One scan at a time: a request arriving during the start-up scan waits for it and then finds
        # everything cached, instead of parsing every run a second time beside it.
        self._scan = threading.Lock()

    def _load(self) -> dict[str, tuple[tuple, Summary]]:
        if self.index_path is None:
            return {}
        try:
            doc = read_json(self.index_path)
            return {name: (_tuple(e["stamp"]), Summary(**e["summary"])) for name, e in doc.get("runs", {}).items()}
        except (RunDirError, KeyError, TypeError) as e:
            log.warning(f"{self.index_path}: not used ({e}); the runs are read again")
            return {}

    def _save(self) -> None:
        if self.index_path is None:
            return
        with self._lock:
            doc = {"runs": {name: {"stamp": stamp, "summary": s.as_dict()} for name, (stamp, s) in self._cache.items()}}
        try:
            atomic_write_json(self.index_path, doc, indent=None)
        except RunDirError as e:   # a read-only runs folder still gets a dashboard, only without the file
            log.warning(str(e))

    def run_dirs(self) -> list[RunDir]:
        """Folders with a config.yaml; `_ui`, `_serving` and hidden folders are not runs (nor are tuning studies,
        which `summaries` leaves out)."""
        try:
            entries = list(os.scandir(self.runs_dir))
        except FileNotFoundError:
            return []
        dirs = [RunDir(Path(e.path)) for e in entries if e.is_dir() and e.name[0] not in "._"]
        return [rd for rd in dirs if rd.config_path.is_file()]

    def summaries(self) -> list[Summary]:
        """Every run's summary (cached by the mtimes of its small files); a running run's liveness is re-checked."""
        with self._scan:
            return self._summaries()

    def _summaries(self) -> list[Summary]:
        out, seen, changed = [], set(), False
        for rd in self.run_dirs():
            stamp = _stamp(rd)
            # A study folder has a config.yaml but no status.json: only folders without one pay for the check.
            if stamp[_STATUS] is None and StudyDir(rd.path).is_study():
                continue
            with self._lock:
                hit = self._cache.get(rd.name)
            if hit is None or hit[0] != stamp or hit[1].status == "running":
                hit = (stamp, summarize(rd))
                changed = changed or hit[1].status != "running"
                with self._lock:
                    self._cache[rd.name] = hit
            out.append(hit[1])
            seen.add(rd.name)
        with self._lock:
            gone = set(self._cache) - seen
            for name in gone:
                del self._cache[name]
        if changed or gone:
            self._save()
        return out


def _tuple(stamp: list) -> tuple:
    return tuple(tuple(x) if isinstance(x, list) else x for x in stamp)


def _sort_key(column: str):
    def key(s: Summary):
        v = getattr(s, column, None)
        # Missing values sort last in either direction: (is-missing, value).
        return (v is None or v == "", v if isinstance(v, (int, float)) else str(v or "").lower())
    return key


def select(rows: list[Summary], q: str = "", status: str = "", task: str = "", tag: str = "",
           sort: str = "created", desc: bool = True) -> list[Summary]:
    """Filter (name/model/method substring, status, task, tag) and sort the runs table."""
    q = q.strip().lower()
    picked = [s for s in rows
              if (not q or q in s.name.lower() or q in s.model.lower() or q in s.method.lower())
              and (not status or s.status == status) and (not task or s.task == task)
              and (not tag or tag in s.tags)]
    column = sort if sort in COLUMNS else "created"
    present = [s for s in picked if getattr(s, column) not in (None, "")]
    missing = [s for s in picked if getattr(s, column) in (None, "")]
    present.sort(key=_sort_key(column), reverse=desc)
    return present + missing
