"""Waiting in tests for something a real process does in its own time, with an upper bound."""

from __future__ import annotations

import time


def wait_for(predicate, seconds: float, what: str, poll: float = 0.2):
    """Poll `predicate` until it returns a true value (returned); AssertionError after `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")
