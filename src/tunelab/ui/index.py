"""The runs table: one summary row per run folder, read from the run's own summary file and cached by stamps.

Every run keeps its runs-table row in `summary.json` (`RunDir.refresh_summary`: rewritten by each writer of
config.yaml, status.json, metrics.json and tags.json, with the (mtime, size) stamps of those files). The
index reads that one small file per run and checks its stamps against four `stat`s; only a folder whose
summary file is missing or stale (made by an older tunelab, or edited since) is summarized from its files
(YAML config and a metrics.json that holds, at Banking77 size, 77x77 confusion matrices), and its summary
file is then written so the next scan is cheap. Afterwards a request costs one `stat` per file per run:
a row is re-read only when one of its files changed. The runs page does not wait long for a scan
(`RunIndex.summaries_within`): while a first scan of old folders is running it shows the rows read so
far. `benchmarks/ui_runs_page.py` times the page over 1,000 run folders written by RunDir: a dashboard
that has never seen them, and one restarted.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from tunelab.core.rundir import (DashboardDir, RunDir, RunDirError, StudyDir, atomic_write_json, read_json,
                                 stamp_from_json)
from tunelab.report.summary import Summary, summarize

log = logging.getLogger(__name__)

COLUMNS = ("name", "status", "task", "model", "method", "metric_value", "baseline_value", "gain", "train_seconds",
           "tokens_per_second", "created")
__all__ = ["COLUMNS", "RunIndex", "Summary", "read_row", "select", "summarize"]

_STATUS = 1   # status.json's place in RunDir.summary_files()


def read_row(rd: RunDir, stamp: tuple | None = None) -> tuple[Summary, bool]:
    """`rd`'s row from its summary file when it is in step with the run's files (`stamp`), else summarized
    from those files; the flag says whether it was summarized (so the caller may store it)."""
    row = rd.read_summary(stamp)
    if row is not None:
        return Summary.from_dict(row), False
    return summarize(rd), True


class RunIndex:
    """Summaries of every run folder under `runs_dir`, each re-read only when one of its small files changed.

    A run's row comes from its summary file (see `read_row`). The rows and their stamps are also kept in
    `<runs>/_ui/index.json`, so a restarted dashboard reads one file instead of one per run; a stamp that
    no longer matches is re-read as usual.
    """

    def __init__(self, runs_dir: Path, persist: bool = True):
        self.runs_dir = Path(runs_dir)
        self.index_path = DashboardDir(self.runs_dir).index_path if persist else None
        self._cache: dict[str, tuple[tuple, Summary]] = self._load()
        self._lock = threading.Lock()
        # One scan at a time: a request arriving during the start-up scan waits for it and then finds
        # everything cached, instead of parsing every run a second time beside it.
        self._scan = threading.Lock()
        self._writable = True
        self._left = 0   # folders the running scan has still to look at

    def _load(self) -> dict[str, tuple[tuple, Summary]]:
        if self.index_path is None:
            return {}
        try:
            doc = read_json(self.index_path)
            return {name: (stamp_from_json(e["stamp"]), Summary.from_dict(e["summary"])) for name, e in doc.get("runs", {}).items()}
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

    def summaries_within(self, wait_s: float) -> tuple[list[Summary], int]:
        """Every run's summary if a scan ends within `wait_s`; otherwise the rows known so far (read by the running
        scan, or kept in the index file) and how many folders that scan has still to read (0: the rows are complete).

        A page served this way never waits for a long first scan (folders made by a tunelab without summary files)."""
        if self._scan.acquire(timeout=wait_s):
            try:
                return self._summaries(), 0
            finally:
                self._scan.release()
        with self._lock:
            return [s for _, s in self._cache.values()], max(self._left, 1)

    def _summaries(self) -> list[Summary]:
        out, seen, changed = [], set(), False
        dirs = self.run_dirs()
        for i, rd in enumerate(dirs):
            self._left = len(dirs) - i
            stamp = rd.summary_stamp()
            # A study folder has a config.yaml but no status.json: only folders without one pay for the check.
            if stamp[_STATUS] is None and StudyDir(rd.path).is_study():
                continue
            with self._lock:
                hit = self._cache.get(rd.name)
            if hit is None or hit[0] != stamp or hit[1].status == "running":
                row, summarized = read_row(rd, stamp)
                if summarized:
                    self._store(rd, row, stamp)
                hit = (stamp, row)
                changed = changed or row.status != "running"
                with self._lock:
                    self._cache[rd.name] = hit
            out.append(hit[1])
            seen.add(rd.name)
        self._left = 0
        with self._lock:
            gone = set(self._cache) - seen
            for name in gone:
                del self._cache[name]
        if changed or gone:
            self._save()
        return out

    def _store(self, rd: RunDir, row: Summary, stamp: tuple) -> None:
        """Write the summary file of a folder that lacked one (or had a stale one): the next scan reads it instead
        of the run's files. Not when a file changed meanwhile (its writer stores its own), nor in a read-only folder."""
        if not self._writable or rd.summary_stamp() != stamp:
            return
        try:
            rd.write_summary(row.as_dict(), stamp)
        except RunDirError as e:
            self._writable = False   # said once, not once per run
            log.warning(f"{e}; run summaries are read from each run's files on every start")


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
