"""Capture what tunelab logs (the lines a CLI user would see) inside a `with` block."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def captured(name: str = "tunelab") -> Iterator[list[str]]:
    """Yield a list that receives every message logged under `name` (INFO and above) in the block."""
    lines: list[str] = []
    logger, handler = logging.getLogger(name), _Lines(lines)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
