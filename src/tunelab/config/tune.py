"""`tune:` — hyper-parameter search (`tunelab tune`); filled in by the tune stage."""

from __future__ import annotations

from tunelab.config._section import Section


class TuneConfig(Section):
    """No settings yet."""
