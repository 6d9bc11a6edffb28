"""Logging and progress bars.

Modules log through the stdlib (`logging.getLogger(__name__)`, all under the `tunelab` logger); the
library installs no handler, so an application decides where messages go. The CLI calls
`setup_cli_logging`, which prints them to stdout as plain lines (warnings prefixed). Progress bars are
tqdm bars on stderr with an ETA; `TUNELAB_PROGRESS=0` turns them off.
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

ROOT = "tunelab"


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` is when a message is logged (test runners swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


class _CliFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"warning: {msg}"
        return msg


def setup_cli_logging(verbose: bool = False) -> None:
    """Print tunelab's messages to stdout, one plain line each (idempotent). In a multi-process run the
    processes other than rank 0 print only warnings and errors: rank 0 speaks for the run."""
    from tunelab.core.ranks import process_rank

    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO if process_rank() == 0 else logging.WARNING)
    if not any(getattr(h, "_tunelab_cli", False) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(_CliFormatter())
        handler._tunelab_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def progress_enabled() -> bool:
    return os.environ.get("TUNELAB_PROGRESS", "1") not in ("0", "false", "no")


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True):
    """A tqdm progress bar with an ETA on stderr (updates at most every 10 s when stderr is not a terminal)."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=not progress_enabled(),
                mininterval=0.5 if interactive else 10.0, dynamic_ncols=True, file=sys.stderr)


def rate(count: int, seconds: float, unit: str) -> str:
    """"12.3 unit/s", or "" when the time is too short to measure a rate honestly."""
    return f" ({count / seconds:.1f} {unit}/s)" if seconds >= 0.05 else ""
