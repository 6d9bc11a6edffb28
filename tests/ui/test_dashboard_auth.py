"""The dashboard behind the web app's sign-in: every page and JSON endpoint (walked from the app itself, with and
without `--serve`) answers 401 with a sign-in link, or a redirect to sign-in, without a session; forms refuse a
missing CSRF token; a non-loopback address is refused without API keys."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
from fastapi.routing import iter_route_contexts

from uiserver import Dashboard
from tunelab.config.serve import ServeConfig
from tunelab.serve.app import PUBLIC_PATHS, AppState
from tunelab.serve.keys import KeyStore
from tunelab.serve.metrics import Metrics
from tunelab.ui.stage import build_app

FILL = {"name": "intents-a", "filename": "config.yaml", "job_id": "0" * 12}


def app_routes(serving: bool) -> list[tuple[str, str]]:
    """(method, path) of every route of the `tunelab ui` app, path parameters filled with real values."""
    app = build_app(AppState(ServeConfig(), KeyStore("/nonexistent/keys.json"), Metrics(), None), serving)
    out = []
    for route in iter_route_contexts(app.routes):
        path = re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: FILL.get(m.group(1), "x"), route.path)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            out.append((method, path + ("/ui.js" if path == "/ui/static" else "")))
    return out


def _signed_out(r: httpx.Response) -> bool:
    if r.status_code == 401:
        return 'href="/ui/login"' in r.text or r.json()["error"]["code"] == "invalid_api_key"
    return r.status_code in (302, 303, 307) and r.headers["location"].endswith("/ui/login")


def check_routes(url: str, routes: list[tuple[str, str]]) -> int:
    """Request every route without a session: public paths answer, every other one is 401 or a sign-in redirect."""
    protected = 0
    for method, path in routes:
        r = httpx.request(method, url + path, data={} if method == "POST" else None, timeout=30)
        if path.startswith(PUBLIC_PATHS):
            assert r.status_code == 200 or path == "/ui/login", (method, path, r.status_code)
            continue
        assert _signed_out(r), (method, path, r.status_code, r.text[:300])
        protected += 1
    return protected


def test_every_page_and_endpoint_needs_a_session(dashboard):
    routes = app_routes(False)
    mine = [(m, p) for m, p in routes if p.startswith("/ui/") and not p.startswith(PUBLIC_PATHS)]
    assert len(mine) >= 15
    assert check_routes(dashboard.url, routes) == len([r for r in routes if not r[1].startswith(PUBLIC_PATHS)])
    # The same pages with a session are reached (so the 401s above are the sign-in, not a broken route).
    c = dashboard.session(dashboard.key)
    for method, path in mine:
        if method == "GET":
            assert c.get(path).status_code in (200, 303, 404), path   # 404: the filled-in job id is unknown


def test_serve_mode_adds_the_playground_to_the_same_app(dashboard, tmp_path):
    routes = app_routes(True)
    assert set(app_routes(False)) - {("GET", "/ui/")} <= set(routes)
    served = Dashboard(dashboard.runs, dashboard.keys_file, tmp_path / "serve.log", "--serve",
                       str(dashboard.runs / "intents-a"))
    try:
        check_routes(served.url, routes)
        c = served.session(dashboard.key)
        home = c.get("/ui/").text
        assert "Served models" in home and "intents-a" in home and 'href="/ui/runs"' in home
        assert c.get("/ui/chat?model=intents-a").status_code == 200
        assert "intents-b" in c.get("/ui/runs").text
    finally:
        served.stop()


def test_forms_need_the_csrf_token(dashboard):
    c = dashboard.session(dashboard.key)
    for path in ("/ui/runs/intents-a/tags", "/ui/new", "/ui/runs/intents-a/resume"):
        r = c.post(path, data={"tags": "x", "csrf_token": "wrong"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf", path
    assert c.get("/ui/api/runs").json()["runs"]


def test_other_addresses_need_api_keys(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "ui", str(tmp_path / "runs"), "--host", "0.0.0.0",
                          "--keys-file", str(tmp_path / "none.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "refusing to bind 0.0.0.0" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
