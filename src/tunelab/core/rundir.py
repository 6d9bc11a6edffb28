"""The run folder: every path, reader and writer of `runs/<name>/`, and the run's recorded state.

This is the only module that spells a run-folder file name. A run folder describes itself:
`status.json` says whether the run is `running`, `complete`, `failed` (with the error) or
`interrupted`, and which stage wrote which file; `config.yaml` is the resolved config with the
tunelab version and git sha. Files are written atomically (a temp file renamed into place), model
folders (`best/`, `last/`) as a temp folder renamed into place after their completion marker. A
stage that changes the model removes everything derived from the old one before it starts.

Layout (`data/` may also stand alone, e.g. for `tunelab validate`: see `DataDir`):

    config.yaml  status.json  trainable.json
    data/{train,validation,test}.jsonl  data/manifest.json  data/dropped.jsonl  data/report.md
    metrics.jsonl (every logged step)  metrics.json (final numbers by section)
    checkpoints/  best/  last/  predictions.jsonl  report.md  report.html  loss.png  export/
    monitor/{status.json,report.html,windows.jsonl,candidates.jsonl,reference.json}  retrain_recommendation.json
    retrain/ (a challenger's data)  retrain.json (its comparison with the champion)  promoted.json
    tags.json (labels a person gave the run in the dashboard)
    summary.json (the run's runs-table row, rewritten by every writer of config/status/metrics/tags)

Beside the run folders, `tunelab serve` keeps its request log in `<runs folder>/_serving/` (see
`request_log_path`), and the dashboard (`tunelab ui`) its uploads, the configs it started and its job
logs in `<runs folder>/_ui/` (see `DashboardDir`); the leading underscore keeps them from ever being
run names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from tunelab import __version__
from tunelab.config import Config, check_name, config_from_dict, dump_config
from tunelab.core.errors import Interrupted, RunDirError, UserError
from tunelab.core.ranks import is_main_process
# Re-exported: stages import the crash-safe writers from here with the paths they write.
from tunelab.core.files import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable,  # noqa: F401
                                read_json, read_jsonl, remove_tree, sweep, write_jsonl)

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
STAGES = ("prepare", "train", "evaluate", "report", "export", "monitor")

# What each stage writes: file or folder names, and ("metrics", section) for parts of metrics.json.
OUTPUTS: dict[str, tuple] = {
    "prepare": ("data",),
    "train": ("checkpoints", "best", "last", "metrics.jsonl", "trainable.json", "tensorboard", ("metrics", "train")),
    "evaluate": ("predictions.jsonl", ("metrics", "test"), ("metrics", "eval_seconds"), ("metrics", "forgetting"),
                 ("metrics", "evaluation"), ("metrics", "verdict")),
    "report": ("report.md", "report.html", "loss.png"),
    "export": ("export",),
    "monitor": ("monitor", "retrain_recommendation.json"),
}
# The stages whose outputs are derived from a stage's outputs: re-running the stage removes them.
DERIVED: dict[str, tuple[str, ...]] = {
    "prepare": ("train", "evaluate", "report", "export", "monitor"),
    "train": ("evaluate", "report", "export", "monitor"),
    "evaluate": ("report", "export"),
    "report": (),
    "export": (),
    "monitor": (),
}
# Stages whose outcome is the run's outcome; an export that fails leaves the run as it was.
LIFECYCLE = ("prepare", "train", "evaluate", "report")
MODEL_MARKER = ".tunelab-complete"   # written last into best/ and last/: the folder is whole
# Written last into a Trainer checkpoint folder (after the Trainer saved it): the checkpoint is whole.
CHECKPOINT_MARKER = "tunelab_checkpoint.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")   # transformers' PREFIX_CHECKPOINT_DIR + step
DASHBOARD_DIR = "_ui"   # under the runs folder; `check_name` refuses names starting with "_"
SERVING_DIR = "_serving"   # under the runs folder; `check_name` refuses names starting with "_"


# ---------------------------------------------------------------- model folders


@contextmanager
def atomic_folder(final: Path, marker: dict | None = None) -> Iterator[Path]:
    """Yield a temp folder to fill; on success write the completion marker and rename it to `final`.

    A crash leaves only the temp folder (removed by the next write), never a half-written `final`.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        atomic_write_json(tmp / MODEL_MARKER, {"written": _now(), **(marker or {})})
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_complete_model(folder: Path) -> bool:
    """True when `folder` was fully written by `atomic_folder` (its completion marker is present)."""
    return (Path(folder) / MODEL_MARKER).is_file()


def model_marker(folder: Path) -> dict:
    """What the completion marker of a model folder records (e.g. the step), {} when it has none."""
    try:
        return read_json(Path(folder) / MODEL_MARKER)
    except RunDirError:
        return {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def git_sha() -> str | None:
    """The commit of the tunelab checkout (None when installed from a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def request_log_path(runs_dir: Path) -> Path:
    """The request log `tunelab serve` appends to (JSONL; rotated copies get `.1`, `.2`, ...)."""
    return Path(runs_dir) / SERVING_DIR / "requests.jsonl"


# ---------------------------------------------------------------- prepared data


class DataDir:
    """The prepared-data folder (`data/` of a run, or a scratch folder for `tunelab validate`)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path: return self.path / "manifest.json"
    @property
    def dropped_path(self) -> Path: return self.path / "dropped.jsonl"
    @property
    def report_path(self) -> Path: return self.path / "report.md"

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.jsonl"

    def manifest(self) -> dict:
        return read_json(self.manifest_path)

    def dropped(self) -> list[dict]:
        """The rows prepare dropped, each with its split, reason, id (file:line) and text."""
        return read_jsonl(self.dropped_path)

    def splits(self) -> dict[str, list[dict]]:
        return {s: read_jsonl(self.split_path(s)) for s in SPLITS}

    def missing(self) -> list[str]:
        """Names of the files a complete prepared result needs but lacks."""
        need = [self.manifest_path] + [self.split_path(s) for s in SPLITS]
        return [p.name for p in need if not p.is_file()]

    def write(self, splits: dict[str, list[dict]], manifest: dict, dropped: list[dict], report: str) -> None:
        """Write the splits, dropped rows and report, then the manifest: its presence marks a complete result."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        for s in SPLITS:
            write_jsonl(self.split_path(s), splits[s])
        write_jsonl(self.dropped_path, dropped)
        atomic_write_text(self.report_path, report)
        atomic_write_json(self.manifest_path, manifest, indent=1)


# ---------------------------------------------------------------- the dashboard's own folder


class DashboardDir:
    """`<runs folder>/_ui/`: files the dashboard (`tunelab ui`) keeps beside the runs it shows."""

    def __init__(self, runs_dir: Path):
        self.path = Path(runs_dir) / DASHBOARD_DIR

    @property
    def uploads(self) -> Path: return self.path / "uploads"
    @property
    def configs(self) -> Path: return self.path / "configs"
    @property
    def jobs(self) -> Path: return self.path / "jobs"
    @property
    def index_path(self) -> Path: return self.path / "index.json"   # the runs table's summaries, by file stamps

    def config_path(self, name: str) -> Path:
        """The config the dashboard writes for a run it starts."""
        return self.configs / f"{check_name(name)}.yaml"

    def job_log(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.log"


# ---------------------------------------------------------------- the run folder


def stamp_from_json(stamp: list) -> tuple:
    """A `RunDir.summary_stamp()` read back from JSON (which stores its pairs as lists)."""
    return tuple(tuple(x) if isinstance(x, list) else x for x in stamp)


class RunDir:
    """One run folder. Open an existing one with `RunDir.open`, start one with `RunDir.create`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------ paths

    @property
    def name(self) -> str: return self.path.name
    @property
    def config_path(self) -> Path: return self.path / "config.yaml"
    @property
    def status_path(self) -> Path: return self.path / "status.json"
    @property
    def data(self) -> DataDir: return DataDir(self.path / "data")
    @property
    def data_dir(self) -> Path: return self.path / "data"
    @property
    def metrics_jsonl(self) -> Path: return self.path / "metrics.jsonl"
    @property
    def metrics_json(self) -> Path: return self.path / "metrics.json"
    @property
    def checkpoints(self) -> Path: return self.path / "checkpoints"
    @property
    def best(self) -> Path: return self.path / "best"
    @property
    def last(self) -> Path: return self.path / "last"
    @property
    def predictions_path(self) -> Path: return self.path / "predictions.jsonl"
    @property
    def report_md(self) -> Path: return self.path / "report.md"
    @property
    def report_html(self) -> Path: return self.path / "report.html"
    @property
    def loss_plot(self) -> Path: return self.path / "loss.png"
    @property
    def trainable_path(self) -> Path: return self.path / "trainable.json"
    @property
    def export_dir(self) -> Path: return self.path / "export"
    @property
    def tensorboard_dir(self) -> Path: return self.path / "tensorboard"
    @property
    def monitor_dir(self) -> Path: return self.path / "monitor"
    @property
    def monitor_status(self) -> Path: return self.monitor_dir / "status.json"
    @property
    def monitor_report(self) -> Path: return self.monitor_dir / "report.html"
    @property
    def monitor_windows(self) -> Path: return self.monitor_dir / "windows.jsonl"
    @property
    def monitor_candidates(self) -> Path: return self.monitor_dir / "candidates.jsonl"
    @property
    def monitor_reference(self) -> Path: return self.monitor_dir / "reference.json"
    @property
    def retrain_recommendation(self) -> Path: return self.path / "retrain_recommendation.json"
    @property
    def retrain_dir(self) -> Path: return self.path / "retrain"
    @property
    def retrain_new(self) -> Path: return self.retrain_dir / "new"                # copies of the new labelled files
    @property
    def retrain_new_data(self) -> DataDir: return DataDir(self.retrain_dir / "new_prepared")
    @property
    def retrain_test(self) -> Path: return self.retrain_dir / "test"              # old test + new held-out part

    def retrain_part(self, part: str) -> Path:
        """A file of a challenger's data in its run's columns: `train`, `validation` (under retrain/), or
        `old_test`, `new_holdout` (under retrain/test/, which the challenger's data.test names)."""
        folder = self.retrain_test if part in ("old_test", "new_holdout") else self.retrain_dir
        return folder / f"{part}.jsonl"
    @property
    def retrain_json(self) -> Path: return self.path / "retrain.json"
    @property
    def promoted_path(self) -> Path: return self.path / "promoted.json"
    @property
    def mlflow_db(self) -> Path: return self.path.parent / "mlflow.db"   # shared by the runs of one folder
    @property
    def tags_path(self) -> Path: return self.path / "tags.json"
    @property
    def summary_path(self) -> Path: return self.path / "summary.json"   # the row below, with its sources' stamps

    def summary_files(self) -> tuple[Path, ...]:
        """The small files a one-line summary of the run is computed from (the dashboard caches by their stamps)."""
        return (self.config_path, self.status_path, self.metrics_json, self.tags_path)

    def summary_stamp(self) -> tuple:
        """(mtime_ns, size) of each of `summary_files()`, None for an absent one: changes whenever the row may."""
        out = []
        for p in self.summary_files():
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def read_summary(self, stamp: tuple | None = None) -> dict | None:
        """summary.json's row when it was computed from the files as they are now (`stamp`, default read
        here), else None (absent, damaged, or stale: a file changed after it, e.g. by an older tunelab or by
        hand). A `running` row whose process is gone reads `interrupted`, as `state()` does."""
        try:
            doc = read_json(self.summary_path)
        except RunDirError:
            return None
        row = doc.get("row")
        recorded = doc.get("sources")
        if not isinstance(row, dict) or not isinstance(recorded, list):
            return None
        if stamp_from_json(recorded) != (stamp or self.summary_stamp()):
            return None
        row = {**row, "name": self.name}   # a copied folder keeps its summary file, not its old name
        if row.get("status") == "running" and not _alive(doc.get("pid"), doc.get("host")):
            row["status"] = "interrupted"
        return row

    def write_summary(self, row: dict, stamp: tuple) -> None:
        """Store the runs-table `row` computed from the files whose `summary_stamp()` was `stamp`."""
        st = self.status() if self.status_path.is_file() else {}
        atomic_write_json(self.summary_path, {"sources": stamp, "pid": st.get("pid"), "host": st.get("host"),
                                              "row": row}, indent=None, durable=False)

    def refresh_summary(self) -> dict | None:
        """Recompute and store the runs-table row (every writer of its source files calls this); returns it.

        The row is stored only when no source changed while it was computed (another writer then stores
        its own). A failure to store is logged, never raised: the row is a cache of the run's own files.
        """
        if not is_main_process():
            return None
        from tunelab.report.summary import summarize   # the report package imports this module
        before = self.summary_stamp()
        try:
            row = summarize(self).as_dict()
            if self.summary_stamp() == before:
                self.write_summary(row, before)
        except Exception as e:   # a cache must never fail the stage writing the run's files; readers see it is stale
            log.warning(f"{self.summary_path} not written: {type(e).__name__}: {e}")
            return None
        return row

    def downloads(self) -> dict[str, Path]:
        """The run's files a person may download, by file name (only those present)."""
        files = (self.report_html, self.report_md, self.config_path, self.metrics_json, self.metrics_jsonl,
                 self.predictions_path, self.data.manifest_path, self.data.dropped_path, self.loss_plot)
        return {p.name: p for p in files if p.is_file()}

    # ------------------------------------------------------------ opening and creating

    @classmethod
    def for_config(cls, cfg: Config) -> "RunDir":
        return cls(Path(cfg.runs_dir) / check_name(cfg.name))

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """An existing run folder.

        Raises:
            RunDirError: the folder does not exist or is not a run folder.
        """
        rd = cls(Path(path))
        if not rd.path.is_dir():
            raise RunDirError(f"{rd.path} is not a run folder: it does not exist")
        if not rd.config_path.is_file():
            raise RunDirError(f"{rd.path} is not a tunelab run folder (no config.yaml); run folders are made by "
                              "`tunelab run|train|prepare CONFIG`")
        return rd

    def is_run(self) -> bool:
        return self.config_path.is_file()

    @classmethod
    def create(cls, cfg: Config, overwrite: bool = False, stage: str = "train") -> "RunDir":
        """The run folder for `cfg`, created or replaced, with the resolved config written.

        A folder holding only prepared data (nothing trained) is reused; one holding more is refused
        unless `overwrite`, so a second run of the same name never destroys the first.

        Raises:
            RunDirError: the folder holds another run (and not `overwrite`), or is not a run folder.
        """
        rd = cls.for_config(cfg)
        if rd.path.exists() and any(rd.path.iterdir()):
            if overwrite:
                rd.refuse_if_busy()
                if not rd.is_run():
                    raise RunDirError(f"{rd.path} exists and is not a tunelab run folder: refusing to delete it "
                                      "(choose another name= or runs_dir=)")
                log.info(f"--overwrite: removing the earlier run in {rd.path} ({rd.state()}, stage "
                         f"{rd.status().get('stage') or 'none'})")
                remove_tree(rd.path)
            elif not rd.is_run():
                raise RunDirError(f"{rd.path} exists and is not a tunelab run folder; choose another name= or runs_dir=")
            elif rd.done_beyond("prepare") and not (stage == "prepare" and rd.same_config(cfg)):
                raise RunDirError(rd.occupied_message())
        try:
            rd.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create the run folder {rd.path}: {e.strerror or e}") from None
        check_writable(rd.path)
        rd.write_config(cfg)
        return rd

    def refuse_if_busy(self) -> None:
        """Raise RunDirError when a live process is working on this run (its status says `running`)."""
        if self.state() == "running":
            st = self.status()
            raise RunDirError(f"{self.path} is being worked on by process {st.get('pid')} on {st.get('host')} "
                              f"(stage {st.get('stage')}): wait for it or stop it first")

    def done_beyond(self, stage: str) -> bool:
        """True when a stage after `stage` has started in this folder (or left outputs behind)."""
        later = STAGES[STAGES.index(stage) + 1:]
        started = self.status().get("stages", {})
        return any(s in started for s in later) or self.best.exists() or self.metrics_jsonl.exists()

    def same_config(self, cfg: Config) -> bool:
        return self.is_run() and self.raw_config() == dump_config(cfg)

    def occupied_message(self) -> str:
        st = self.status()
        state = self.state()
        when = st.get("updated", "?")
        score = ""
        ft = (self.metrics().get("test") or {}).get("finetuned_full_test") or (self.metrics().get("test") or {}).get("finetuned") or {}
        if isinstance(ft.get("accuracy"), float):
            score = f", fine-tuned accuracy {ft['accuracy']:.4f}"
        return (f"{self.path} already holds a run ({state}, last updated {when}{score}). A new run never replaces "
                "it silently: add --overwrite to replace it, --resume to continue it, or choose another name "
                f"(e.g. name={self.name}-2)")

    # ------------------------------------------------------------ config

    def write_config(self, cfg: Config) -> None:
        """Write the resolved config with tunelab's version, git sha and creation time."""
        meta = {"tunelab_version": __version__, "git_sha": git_sha(), "created": _now()}
        atomic_write_text(self.config_path, yaml.safe_dump({**dump_config(cfg), "_meta": meta}, sort_keys=False))
        self.refresh_summary()

    def raw_config(self) -> dict:
        """config.yaml as written, without its `_meta` block."""
        try:
            raw = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise RunDirError(f"{self.config_path} cannot be read: {e}") from None
        raw.pop("_meta", None)
        return raw

    def config_meta(self) -> dict:
        try:
            return (yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}).get("_meta") or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}

    def config(self) -> Config:
        """The resolved config this run was made with."""
        return config_from_dict(self.raw_config(), source=str(self.config_path))

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        """status.json as written (empty before the first stage)."""
        return read_json(self.status_path)

    def state(self) -> str:
        """`running`, `complete`, `failed`, `interrupted` or `new`; a `running` run whose process is gone
        (killed, machine rebooted) reads as `interrupted`."""
        st = self.status()
        state = st.get("status", "new")
        if state == "running" and not _alive(st.get("pid"), st.get("host")):
            return "interrupted"
        return state

    def stage_state(self, stage: str) -> str | None:
        return (self.status().get("stages", {}).get(stage) or {}).get("status")

    def _write_status(self, st: dict) -> None:
        st["updated"] = _now()
        atomic_write_json(self.status_path, st)
        self.refresh_summary()

    def invalidate(self, stages: Iterable[str]) -> list[str]:
        """Remove the outputs (files, folders, metrics.json sections) and the status entries of `stages`."""
        removed: list[str] = []
        sections = []
        for stage in stages:
            for out in OUTPUTS[stage]:
                if isinstance(out, tuple):
                    sections.append(out[1])
                    continue
                p = self.path / out
                if p.is_dir():
                    remove_tree(p)
                    removed.append(out + "/")
                elif p.exists():
                    p.unlink()
                    removed.append(out)
        doc = self.metrics()
        gone = [s for s in sections if s in doc]
        if gone:
            atomic_write_json(self.metrics_json, {k: v for k, v in doc.items() if k not in gone})
            removed += [f"metrics.json:{s}" for s in gone]
            self.refresh_summary()
        if removed:   # said, so a user who finds them gone knows why (never left beside a newer result)
            log.info(f"removed the earlier {', '.join(removed)} of {self.name}")
        st = self.status()
        if any(s in st.get("stages", {}) for s in stages):
            st["stages"] = {k: v for k, v in st["stages"].items() if k not in stages}
            self._write_status(st)
        return removed

    @contextmanager
    def stage(self, name: str, fresh: bool = True, derived: Iterable[str] | None = None) -> Iterator[dict]:
        """Record `name` as running; on exit record it complete, failed (with the error) or interrupted.

        Everything derived from this stage's earlier outputs (`derived`, default DERIVED[name]) is
        removed first, so nothing stale is left beside the new result; with `fresh`, so are the
        stage's own earlier outputs (a resumed stage keeps them). Yields the stage's status entry.
        In a multi-process run only rank 0 records anything; the other processes write nothing.
        """
        if not is_main_process():
            yield {}
            return
        check_writable(self.path)
        self.invalidate(tuple(DERIVED[name] if derived is None else derived) + ((name,) if fresh else ()))
        entry = {"status": "running", "started": _now(), "pid": os.getpid()}
        self._record(name, entry, running=True)
        try:
            yield entry
        except BaseException as e:
            interrupted = isinstance(e, (KeyboardInterrupt, SystemExit, Interrupted))
            message = (str(e) or type(e).__name__) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            entry.update(status="interrupted" if interrupted else "failed", finished=_now(),
                         error=None if interrupted else message[:2000])
            self._record(name, entry)
            raise
        entry.update(status="complete", finished=_now(), wrote=self._present(name))
        self._record(name, entry)

    def set_goal(self, stage: str, keep_later: bool = False) -> None:
        """Record the last lifecycle stage the command now working on this run will do: until that stage
        completes, a completed earlier one leaves the run `running` (read as `interrupted` once the process
        is gone), so a kill between two stages never leaves a `complete` run. `keep_later`: keep a later
        goal already recorded (a training process launched by a `tunelab run`, which goes on to evaluate)."""
        if not is_main_process():
            return
        check_writable(self.path)
        st = self.status()
        old = st.get("goal")
        if keep_later and old in LIFECYCLE and LIFECYCLE.index(old) > LIFECYCLE.index(stage):
            return
        st["goal"] = stage
        self._write_status(st)

    def fail_stage(self, name: str, message: str) -> None:
        """Record the running stage `name` as failed with `message` from outside its `stage()` block
        (the stall watchdog, about to end a process whose main thread is stuck)."""
        entry = dict(self.status().get("stages", {}).get(name) or {})
        entry.update(status="failed", finished=_now(), error=message[:2000])
        self._record(name, entry)

    def _record(self, name: str, entry: dict, running: bool = False) -> None:
        """Write a stage's entry; a lifecycle stage's outcome is also the run's outcome."""
        st = self.status()
        st.setdefault("stages", {})[name] = entry
        if name in LIFECYCLE:
            status, goal = entry["status"], st.get("goal")
            if status == "complete" and goal in LIFECYCLE and LIFECYCLE.index(name) < LIFECYCLE.index(goal):
                status = "running"   # the command goes on to its goal (see set_goal)
            st.update(status=status, stage=name, error=entry.get("error"))
            if running:
                st.update(pid=os.getpid(), host=socket.gethostname())
        self._write_status(st)

    def _present(self, stage: str) -> list[str]:
        out = []
        doc = self.metrics()
        for o in OUTPUTS[stage]:
            if isinstance(o, tuple):
                if o[1] in doc:
                    out.append(f"metrics.json:{o[1]}")
            elif (self.path / o).exists():
                out.append(o + ("/" if (self.path / o).is_dir() else ""))
        return out

    def model_stamp(self) -> str | None:
        """When `best/` was completed (its marker's time): changes whenever the run's model does."""
        return (read_json(self.best / MODEL_MARKER) or {}).get("written")

    def require_trained(self, allow_incomplete: bool = False, what: str | None = None) -> Path:
        """The `best/` model folder of a run whose training completed; `what` (e.g. "serve it") names what
        the caller cannot do otherwise.

        Raises:
            RunDirError: training never ran, did not finish, or left an incomplete model folder;
                the message says what is missing and how to continue.
        """
        train = self.stage_state("train")
        state = self.state()
        problem = None
        if train is None:
            problem = "it has not been trained (only " + (", ".join(self.status().get("stages", {})) or "created") + ")"
        elif train != "complete":
            error = (self.status().get("stages", {}).get("train") or {}).get("error")
            running = train == "running" and state == "interrupted"
            problem = ("its training was interrupted before it finished (the process ended without recording an "
                       "outcome)" if running else f"its training is {train}" + (f": {error}" if error else ""))
        elif not is_complete_model(self.best):
            problem = "its best/ model folder is missing or incomplete"
        if problem is None:
            return self.best
        if allow_incomplete and self.best.is_dir():
            return self.best
        raise RunDirError(f"{self.path}: {f'cannot {what}: ' if what else ''}{problem}. Continue it with "
                          f"`tunelab train {self.config_path} --resume` "
                          "or train it again; --allow-incomplete uses whatever best/ holds")

    def require_complete(self, what: str, allow_incomplete: bool = False) -> Path:
        """`best/` of a run whose last stage completed (for export and serving).

        Raises:
            RunDirError: as `require_trained`, or a later stage failed (e.g. the forgetting gate).
        """
        best = self.require_trained(allow_incomplete, what)
        state = self.state()
        if state != "complete" and not allow_incomplete:
            st = self.status()
            raise RunDirError(f"{self.path}: cannot {what}: the run is {state} at stage {st.get('stage')}"
                              + (f" ({st['error']})" if st.get("error") else "")
                              + "; fix and re-run that stage, or pass --allow-incomplete")
        return best

    # ------------------------------------------------------------ metrics and logs

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (appends of one line are atomic enough for a log)."""
        with self.metrics_jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records; a last line torn by a killed writer is ignored."""
        return read_jsonl(self.metrics_jsonl, torn_tail_ok=True)

    def log_lines(self) -> int:
        """How many whole lines metrics.jsonl holds (a checkpoint records it to cut the log back on resume)."""
        if not self.metrics_jsonl.is_file():
            return 0
        return self.metrics_jsonl.read_bytes().count(b"\n")

    def truncate_log(self, lines: int) -> int:
        """Keep the first `lines` whole lines of metrics.jsonl (what a resumed run logs again goes after
        them); returns how many lines, counting a torn last one, were removed."""
        if not self.metrics_jsonl.is_file():
            return 0
        parts = self.metrics_jsonl.read_bytes().split(b"\n")
        whole = parts[:min(lines, len(parts) - 1)]
        extra = len(parts) - 1 - len(whole) + (1 if parts[-1] else 0)
        atomic_write_bytes(self.metrics_jsonl, b"".join(p + b"\n" for p in whole))
        return max(extra, 0)

    # ------------------------------------------------------------ resumable checkpoints

    def checkpoint_path(self, step: int) -> Path:
        """The Trainer's checkpoint folder for `step` (transformers names it checkpoint-<step>)."""
        return self.checkpoints / f"checkpoint-{step}"

    def checkpoint_best(self, checkpoint: Path) -> Path:
        """Where `best/` as it was at `checkpoint` is kept (hard links), beside the checkpoint folder:
        inside it the Trainer would take it for a second adapter to load."""
        return Path(checkpoint).with_name(Path(checkpoint).name + ".best")

    def checkpoint_folders(self) -> list[tuple[int, Path]]:
        """(step, folder) of every checkpoint folder, complete or not, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir()
                 if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))]
        return sorted(found)

    def mark_checkpoint(self, checkpoint: Path, about: dict) -> None:
        """Write the completion marker of a checkpoint the Trainer finished saving: `about` plus every
        file's size, so a checkpoint whose files were later cut short or deleted reads as incomplete."""
        files = {str(p.relative_to(checkpoint)): p.stat().st_size for p in sorted(Path(checkpoint).rglob("*"))
                 if p.is_file() and p.name != CHECKPOINT_MARKER}
        atomic_write_json(Path(checkpoint) / CHECKPOINT_MARKER, {"written": _now(), **about, "files": files})

    def checkpoint_marker(self, checkpoint: Path) -> dict | None:
        """The marker of a complete checkpoint, or None (no marker, a damaged one, or files that
        differ from those it lists)."""
        try:
            marker = read_json(Path(checkpoint) / CHECKPOINT_MARKER)
        except RunDirError:
            return None
        files = marker.get("files")
        if not marker or not files:
            return None
        for rel, size in files.items():
            f = Path(checkpoint) / rel
            if not f.is_file() or f.stat().st_size != size:
                return None
        return marker

    def remove_checkpoint(self, checkpoint: Path) -> None:
        """Delete a checkpoint (its marker first, so a removal cut short never looks complete) and its best/ copy."""
        (Path(checkpoint) / CHECKPOINT_MARKER).unlink(missing_ok=True)
        remove_tree(Path(checkpoint))
        remove_tree(self.checkpoint_best(checkpoint))

    def metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_json)

    def update_metrics(self, section: str, values: dict[str, Any]) -> dict[str, Any]:
        """Merge `values` into metrics.json under `section` and return the whole document."""
        doc = self.metrics()
        doc.setdefault(section, {}).update(values)
        atomic_write_json(self.metrics_json, doc)
        self.refresh_summary()
        return doc

    def set_metrics(self, section: str, values: dict[str, Any]) -> dict[str, Any]:
        """Replace metrics.json's `section` with `values` and return the whole document."""
        doc = self.metrics()
        doc[section] = values
        atomic_write_json(self.metrics_json, doc)
        self.refresh_summary()
        return doc

    def write_predictions(self, rows: Iterable[dict]) -> None:
        write_jsonl(self.predictions_path, rows)

    def predictions(self) -> list[dict]:
        return read_jsonl(self.predictions_path)

    def read_log_tail(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """metrics.jsonl records that start at byte `offset` or later, and the offset after the last whole line.

        A line still being appended (no newline yet) is left for the next call, so a live reader
        polling with the returned offset sees every record exactly once.
        """
        try:
            with self.metrics_jsonl.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            return [], 0
        whole = chunk[: chunk.rfind(b"\n") + 1]
        rows = []
        for line in whole.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue   # a damaged line is skipped, not fatal, for a live view
        return rows, offset + len(whole)

    def tags(self) -> list[str]:
        """Labels a person gave the run (dashboard), in the order given."""
        try:
            tags = read_json(self.tags_path).get("tags") or []
        except RunDirError:
            return []
        return [str(t) for t in tags]

    def set_tags(self, tags: Iterable[str]) -> list[str]:
        """Replace the run's tags (stripped, de-duplicated, empty ones dropped)."""
        clean = list(dict.fromkeys(t.strip() for t in tags if t and t.strip()))
        atomic_write_json(self.tags_path, {"tags": clean})
        self.refresh_summary()
        return clean

    def write_trainable(self, about: dict) -> None:
        atomic_write_json(self.trainable_path, about)

    def write_report(self, markdown: str, html: str | None) -> Path:
        atomic_write_text(self.report_md, markdown)
        if html is None:
            return self.report_md
        atomic_write_text(self.report_html, html)
        return self.report_html


def _alive(pid: Any, host: Any) -> bool:
    """Whether process `pid` still runs (on another host we cannot tell, so assume it does)."""
    if not isinstance(pid, int):
        return False
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the study folder of `tunelab tune`


class StudyDir:
    """The study folder of `tunelab tune` (created on first use): every path in it.

        <runs_dir>/<study_name>/
          config.yaml        the config the study was started with (tune section included)
          study.db           the Optuna study (SQLite; absent when tune.storage names another database)
          data/              prepared data shared by the trials (each trial copies it: an ordinary run folder)
          trials/<n>/        one ordinary run folder per trial (config.yaml, status.json, metrics, best/ ...)
          workers/<i>.log    what each worker process printed (--workers N)
          final/             the best config trained once more, when no trial's weights could be reused
          start/             the starting config (tune.enqueue[0]) trained once more, when its trial's weights are gone
          best_config.yaml   the best trial's config, runnable with `tunelab run`
          trials.csv         one row per trial: number, state, values, parameters, steps, folder
          tune_report.html   optimisation plots and the final comparison table
    """

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
    def start_name(self) -> str: return "start"
    @property
    def best_config_path(self) -> Path: return self.path / "best_config.yaml"
    @property
    def trials_csv(self) -> Path: return self.path / "trials.csv"
    @property
    def report_html(self) -> Path: return self.path / "tune_report.html"

    def is_study(self) -> bool:
        """A study folder (not a run folder, though it too has a config.yaml): one with trials or its database."""
        return self.config_path.is_file() and (self.trials_dir.is_dir() or self.db_path.is_file())

    def downloads(self) -> dict[str, Path]:
        """The study's files a person may download, by file name (only those present)."""
        files = (self.report_html, self.trials_csv, self.best_config_path, self.config_path)
        return {p.name: p for p in files if p.is_file()}

    def trial(self, number: int) -> RunDir:
        """The run folder of trial `number`."""
        return RunDir(self.trials_dir / str(number))

    def worker_log(self, index: int) -> Path:
        return self.workers_dir / f"{index}.log"

    def default_storage(self) -> str:
        """The SQLAlchemy URL of the study's own SQLite database."""
        return f"sqlite:///{self.db_path.resolve()}"
