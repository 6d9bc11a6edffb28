"""Which run answers for a served model id: the run itself, or the challenger last promoted in its place.

A model id is the name of the run folder `tunelab serve` was given (the root). `tunelab retrain` records a
promotion in the root's `promoted.json`; a running server watches that file and swaps the model behind
the id without a restart, and `tunelab monitor` compares traffic after the promotion with the promoted
run's training data. The file is the whole contract between them:

    {"model": root run name, "active": absolute path of the run now answering, "active_name": its name,
     "promoted": ISO-8601 UTC time of the decision, "previous": the run it replaced,
     "evidence": {...}  (the challenger's retrain.json decision), "history": [earlier promotions]}
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from tunelab.core.errors import RunDirError
from tunelab.core.rundir import RunDir, atomic_write_json, read_json


def utc_now() -> str:
    """ISO-8601 UTC with milliseconds, the request log's time format."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def promotion(root: RunDir) -> dict:
    """The root's promoted.json (empty when nothing was promoted)."""
    return read_json(root.promoted_path)


def active_run(root: RunDir) -> tuple[RunDir, datetime | None]:
    """The run answering for `root`'s model id and since when (None: the root itself, from the start).

    Raises:
        RunDirError: promoted.json names a run folder that is gone.
    """
    doc = promotion(root)
    if not doc.get("active"):
        return root, None
    path = Path(doc["active"])
    if not RunDir(path).is_run():
        raise RunDirError(f"{root.promoted_path} names {path} as the model answering for {root.name!r}, but that run "
                          "folder is gone; restore it, or delete promoted.json to serve the original run again")
    return RunDir.open(path), datetime.fromisoformat(doc["promoted"].replace("Z", "+00:00"))


def promote(root: RunDir, challenger: RunDir, evidence: dict) -> dict:
    """Record `challenger` as the run answering for `root`'s model id (atomically; watchers reload)."""
    before = promotion(root)
    history = list(before.get("history") or [])
    if before.get("active"):
        history.append({k: before[k] for k in ("active", "active_name", "promoted") if k in before})
    previous, _ = active_run(root)
    doc = {"model": root.name, "active": str(challenger.path.resolve()), "active_name": challenger.name,
           "promoted": utc_now(), "previous": str(previous.path.resolve()), "evidence": evidence, "history": history}
    atomic_write_json(root.promoted_path, doc)
    return doc
