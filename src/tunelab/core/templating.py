"""The Jinja2 set-up shared by report.html and the web app (`tunelab serve`'s pages, the `tunelab ui` dashboard).

Templates live in the package (`tunelab/templates/`, its stylesheet in `tunelab/templates/static/`), so a
wheel carries them and nothing is fetched at run time. Autoescape is on for every template: run folders
hold user text (prompts with chat markup, labels, predictions) that must show as text, never as HTML.
The number filters are registered here once so every page formats a metric and a p-value the same way.

Template API (for pages that extend `base.html`):
    blocks     title, head (extra <link>/<meta>), header, nav, content, scripts (external <script src> only)
    variables  css_href  -- when set, the stylesheet is linked (web app; CSP: no inline code); when unset,
                            it is inlined (report.html: one offline file)
               nav       -- a list of {"href", "label"} shown under the header
    filters    num (a metric value), pvalue (a p-value)
    macros     `{% import "macros.html" as m %}`: table, grid, cell, metric, ci, p_value, not_measured, plot
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = TEMPLATES_DIR / "static"          # the web app mounts this folder (e.g. at /static)
STYLESHEET = STATIC_DIR / "tunelab.css"


def num(v: Any) -> str:
    """A metric value as pages show it: 4 decimals below 10, thousands separators above; None is 'not measured'."""
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.2f}"
    return str(v)


def pvalue(p: Any) -> str:
    """A p-value with 3 significant digits; anything else is 'not measured'."""
    return f"{p:.3g}" if isinstance(p, (int, float)) and not isinstance(p, bool) else "not measured"


@functools.cache
def inline_css():
    """The stylesheet as trusted markup for a <style> element (it is our own file; escaping would break it)."""
    from markupsafe import Markup

    css = STYLESHEET.read_text(encoding="utf-8")
    if "</" in css:   # would end the <style> element early
        raise ValueError(f"{STYLESHEET}: '</' is not allowed in the stylesheet")
    return Markup(css)


def install(env):
    """Register tunelab's filters and globals on a Jinja2 environment (ours, or FastAPI's `Jinja2Templates.env`)."""
    env.filters.update(num=num, pvalue=pvalue)
    env.globals["inline_css"] = inline_css
    return env


@functools.cache
def environment():
    """The Jinja2 environment over `tunelab/templates/`: autoescape on, undefined variables are errors."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return install(env)


def render(template: str, /, **context: Any) -> str:
    """Render `template` (a path under `tunelab/templates/`) with `context`."""
    return environment().get_template(template).render(**context)
