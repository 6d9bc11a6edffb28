"""Errors a user can act on.

Every stage raises a subclass of `UserError` for a mistake the user can fix (a config key, a data
row, a run folder in the wrong state); the CLI prints the message and exits with code 2, never a
traceback (`TUNELAB_DEBUG=1` shows it anyway). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names the file, the key and what to do."""


class RunDirError(UserError):
    """A folder that is not a run folder, or a run in the wrong state for what was asked."""


class Interrupted(UserError):
    """Work stopped on request (SIGINT/SIGTERM) after saving what lets it continue; the run is `interrupted`.

    The exit code follows the shell convention 128 + signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum
