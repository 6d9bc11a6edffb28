"""`serve:` — serving defaults (`tunelab serve`); filled in by the serve stage."""

from __future__ import annotations

from tunelab.config._section import Section


class ServeConfig(Section):
    """No settings yet."""
