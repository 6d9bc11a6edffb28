"""What the dashboard's handlers share: the runs folder, its index, the job queue and cached run pages.

It lives at `app.state.tunelab.extra["dashboard"]` of the one web app (serve/app.py's `AppState`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from tunelab.core.rundir import DashboardDir, RunDir, StudyDir
from tunelab.ui.index import RunIndex
from tunelab.ui.jobs import JobQueue

KEY = "dashboard"
CACHED_PAGES = 32   # a run page's data holds its report's figures (up to ~1 MB): keep the recent ones only


class RunNotFound(LookupError):
    """A name that is not a run (or study) folder of the dashboard's runs folder (answered 404)."""


@dataclass
class Dashboard:
    runs_dir: Path
    jobs: JobQueue
    max_upload_bytes: int = 50_000_000
    index: RunIndex = None  # type: ignore[assignment]
    _pages: OrderedDict = field(default_factory=OrderedDict)   # key -> (stamp, value), least recent first
    _page_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.runs_dir = Path(self.runs_dir).resolve()
        if self.index is None:
            self.index = RunIndex(self.runs_dir)

    @property
    def dirs(self) -> DashboardDir:
        return DashboardDir(self.runs_dir)

    def _folder(self, name: str) -> Path:
        """`name` as a plain folder name of the runs folder (not `_ui`, hidden, or a path)."""
        if not name or name[0] in "._" or "/" in name or "\\" in name:
            raise RunNotFound(name)
        return self.runs_dir / name

    def run(self, name: str) -> RunDir:
        """The run folder `name` (a plain folder name of the runs folder that holds a run)."""
        rd = RunDir(self._folder(name))
        if not rd.is_run():
            raise RunNotFound(name)
        return rd

    def study(self, name: str) -> StudyDir:
        """The study folder `name` of the runs folder (`tunelab tune`'s)."""
        sd = StudyDir(self._folder(name))
        if not sd.is_study():
            raise RunNotFound(name)
        return sd

    def cached(self, key: str, stamp: tuple, build):
        """`build()` once per `stamp` of `key` (run pages: re-rendered only when their files changed).

        One build at a time: the report's figures are drawn with matplotlib, which is not thread-safe.
        """
        with self._page_lock:
            hit = self._pages.get(key)
            if hit is None or hit[0] != stamp:
                hit = (stamp, build())
                self._pages[key] = hit
            self._pages.move_to_end(key)
            while len(self._pages) > CACHED_PAGES:
                self._pages.popitem(last=False)
            return hit[1]


def dashboard(request: Request) -> Dashboard:
    return request.app.state.tunelab.extra[KEY]
