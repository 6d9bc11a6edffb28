"""`tunelab ui [RUNS_DIR]`: the dashboard, served by the same web app as `tunelab serve`.

Same app factory, same sign-in (an API key -> a session cookie), same CSRF tokens, CSP and bounds
(serve/app.py, serve/auth.py); same binding rule: 127.0.0.1 unless API keys are configured. With
`--serve RUN…` the served models' API, metrics and playground pages join the app too.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse

from tunelab.config.serve import ServeConfig
from tunelab.serve.auth import require_session

log = logging.getLogger(__name__)

home_router = APIRouter(prefix="/ui", dependencies=[Depends(require_session)])


@home_router.get("/")
async def home():
    """Without served models the app's home is the runs table (signing in lands here)."""
    return RedirectResponse("/ui/runs", status_code=303)


def build_app(state, serving: bool):
    """The app over `state` (its `extra["dashboard"]` set): dashboard pages, and the serve routes when `serving`."""
    from tunelab.serve import stage as serve_stage
    from tunelab.serve import ui as serve_ui
    from tunelab.serve.app import create_app, health_router, include
    from tunelab.serve.auth import SessionRequired
    from tunelab.ui.pages import NAV
    from tunelab.ui.pages import router as dashboard_router

    if serving:
        app = serve_stage.build_app(state)
    else:
        app = create_app(state, [health_router(), serve_ui.login_router, home_router])
        app.mount("/ui/static", serve_ui.static_app(), name="static")
        app.add_exception_handler(SessionRequired, serve_ui.session_required)
    include(app, dashboard_router)
    serve_ui.templates.env.globals["app_nav"] = NAV   # every page of the app links the dashboard
    return app


def run(runs_dir: Path, cfg: ServeConfig, serve_paths: list[Path] = (), parallel: int = 1,
        allow_incomplete: bool = False, max_upload_bytes: int = 50_000_000) -> None:
    """Serve the dashboard over `runs_dir` (and the models of `serve_paths`) until interrupted.

    Raises:
        ServeError: an address other than loopback without API keys, half a TLS pair, an incomplete served run.
    """
    from tunelab.serve import stage as serve_stage
    from tunelab.ui.jobs import JobQueue
    from tunelab.ui.state import KEY, Dashboard

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs = JobQueue(runs_dir, parallel)

    def build(state):
        dash = state.extra[KEY] = Dashboard(runs_dir, jobs, max_upload_bytes)
        # Read every run's summary now, not when the first person opens the runs page.
        threading.Thread(target=dash.index.summaries, name="tunelab-ui-index", daemon=True).start()
        return build_app(state, bool(serve_paths))

    log.info(f"dashboard over {runs_dir.resolve()}: sign in at /ui/login with an API key (tunelab keys create NAME)")
    try:
        serve_stage.run([Path(p) for p in serve_paths], cfg, allow_incomplete, build=build, title="tunelab ui")
    finally:
        jobs.close()
