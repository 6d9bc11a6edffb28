"""Tuning studies of the runs folder (`tunelab tune`'s study folders): the list and one study's page.

A study folder has a config.yaml like a run folder, so the runs table leaves it out
(`StudyDir.is_study`) and the Studies page lists it instead. Everything is read from the study's own
files: trials.csv once the study has finished (its `best` column marks the row best_config.yaml was made
from), and while it still searches, the state of each trial's run folder.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.rundir import RunDirError, StudyDir

# trials.csv's columns start "number, state, <objective>, <also_minimize...>" (tune/report.py trial_rows).
OBJECTIVE_COLUMN = 2


def study_dirs(runs_dir: Path) -> list[StudyDir]:
    """The study folders directly under `runs_dir`, by name."""
    try:
        entries = sorted(os.scandir(runs_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    dirs = [StudyDir(Path(e.path)) for e in entries if e.is_dir() and e.name[0] not in "._"]
    return [sd for sd in dirs if sd.is_study()]


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _from_csv(sd: StudyDir) -> tuple[list[str], list[dict]]:
    with sd.trials_csv.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [{k: (_number(v) if v else None) for k, v in r.items()} for r in reader]
        return list(reader.fieldnames or []), rows


def _from_folders(sd: StudyDir) -> tuple[list[str], list[dict]]:
    """While the study searches (no trials.csv yet): each trial folder's number and run state."""
    try:
        numbers = sorted(int(e.name) for e in os.scandir(sd.trials_dir) if e.is_dir() and e.name.isdigit())
    except FileNotFoundError:
        numbers = []
    return ["number", "state", "folder"], [{"number": n, "state": sd.trial(n).state(), "folder": str(sd.trial(n).path)}
                                           for n in numbers]


def summarize(sd: StudyDir) -> dict[str, Any]:
    """A study's task, model, objective, trials (rows of trials.csv or of the trial folders) and best trial."""
    out: dict[str, Any] = {"name": sd.path.name, "task": "?", "model": "?", "method": "?", "problem": None,
                           "finished": sd.trials_csv.is_file(), "downloads": sorted(sd.downloads())}
    try:
        cfg = yaml.safe_load(sd.config_path.read_text(encoding="utf-8")) or {}
        out.update(task=cfg.get("task", "?"), model=(cfg.get("model") or {}).get("name", "?"),
                   method=(cfg.get("method") or {}).get("name", "?"), space=(cfg.get("tune") or {}).get("space") or {})
        header, rows = _from_csv(sd) if out["finished"] else _from_folders(sd)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, csv.Error, RunDirError) as e:
        out.update(problem=f"{sd.path}: {e}", header=[], rows=[], objective=None, best=None, states={})
        return out
    objective = header[OBJECTIVE_COLUMN] if out["finished"] and len(header) > OBJECTIVE_COLUMN else None
    best = next((r for r in rows if r.get("best") == "True"), None)   # csv.DictWriter wrote a bool
    states: dict[str, int] = {}
    for r in rows:
        states[str(r["state"])] = states.get(str(r["state"]), 0) + 1
    out.update(header=[h for h in header if h != "best"], rows=rows, objective=objective, states=states,
               best=None if best is None else {"number": best["number"], "value": best.get(objective)})
    return out
