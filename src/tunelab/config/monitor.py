"""`monitor:` — drift and quality thresholds (`tunelab monitor`); filled in by the monitor stage."""

from __future__ import annotations

from tunelab.config._section import Section


class MonitorConfig(Section):
    """No settings yet."""
