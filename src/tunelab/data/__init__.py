"""The `prepare` stage: raw files and documents -> clean, de-duplicated, leak-checked splits (`stage.py`)."""

from tunelab.data.problems import DataError, Problem
from tunelab.data.stage import Prepared, load_prepared, prepare, run

__all__ = ["DataError", "Prepared", "Problem", "load_prepared", "prepare", "run"]
