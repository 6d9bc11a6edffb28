"""`TUNELAB_HOME`: the per-user cache (converted models, hardware measurements)."""

from __future__ import annotations

import os
from pathlib import Path


def tunelab_home() -> Path:
    """The cache folder: `$TUNELAB_HOME`, default `~/.cache/tunelab`."""
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab")).expanduser()
