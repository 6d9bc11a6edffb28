"""What an export folder says about itself (`tunelab_export.json`), so it can be served without its run folder."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.core.errors import RunDirError

EXPORT_INFO = "tunelab_export.json"   # what was exported from which run, inside the export folder


def is_export(folder: Path) -> bool:
    """True when `folder` was written by `tunelab export`."""
    return (Path(folder) / EXPORT_INFO).is_file()


def read_export(folder: Path) -> dict:
    """The export's description: run, task, format, and (since serving needs them) config, labels, columns.

    Raises:
        RunDirError: the file is damaged, or the export predates the fields serving needs.
    """
    path = Path(folder) / EXPORT_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} cannot be read ({e}): export the run again with `tunelab export RUN`") from None
    if "config" not in info:
        raise RunDirError(f"{path} has no `config`: it was written by an older tunelab; export the run again "
                          "with `tunelab export RUN` to serve it")
    return info
