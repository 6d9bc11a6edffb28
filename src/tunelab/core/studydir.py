"""The study folder of `tunelab tune`: every path in it, as `rundir.py` is for run folders.

    <runs_dir>/<study_name>/
      config.yaml        the config the study was started with (tune section included)
      study.db           the Optuna study (SQLite; absent when tune.storage names another database)
      data/              prepared data shared by the trials (each trial copies it: an ordinary run folder)
      trials/<n>/        one ordinary run folder per trial (config.yaml, status.json, metrics, best/ ...)
      workers/<i>.log    what each worker process printed (--workers N)
      final/             the best config trained once more, when no trial's weights could be reused
      best_config.yaml   the best trial's config, runnable with `tunelab run`
      trials.csv         one row per trial: number, state, values, parameters, steps, folder
      tune_report.html   optimisation plots and the final comparison table
"""

from __future__ import annotations

from pathlib import Path

from tunelab.core.rundir import DataDir, RunDir


class StudyDir:
    """One study folder (created on first use)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StudyDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path: return self.path / "config.yaml"
    @property
    def db_path(self) -> Path: return self.path / "study.db"
    @property
    def data(self) -> DataDir: return DataDir(self.path / "data")
    @property
    def trials_dir(self) -> Path: return self.path / "trials"
    @property
    def workers_dir(self) -> Path: return self.path / "workers"
    @property
    def final_name(self) -> str: return "final"
    @property
    def best_config_path(self) -> Path: return self.path / "best_config.yaml"
    @property
    def trials_csv(self) -> Path: return self.path / "trials.csv"
    @property
    def report_html(self) -> Path: return self.path / "tune_report.html"

    def trial(self, number: int) -> RunDir:
        """The run folder of trial `number`."""
        return RunDir(self.trials_dir / str(number))

    def worker_log(self, index: int) -> Path:
        return self.workers_dir / f"{index}.log"

    def default_storage(self) -> str:
        """The SQLAlchemy URL of the study's own SQLite database."""
        return f"sqlite:///{self.db_path.resolve()}"
