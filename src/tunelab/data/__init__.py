"""The `prepare` stage: raw files and documents -> clean, de-duplicated, leak-checked splits."""

from tunelab.data.prepare import Prepared, prepare, run
from tunelab.data.problems import DataError, Problem

__all__ = ["DataError", "Prepared", "Problem", "prepare", "run"]
