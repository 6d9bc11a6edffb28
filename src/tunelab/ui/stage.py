"""`tunelab ui [RUNS_DIR]`: the dashboard, served by the same web app as `tunelab serve`.

Same app factory, same sign-in (an API key -> a session cookie), same CSRF tokens, CSP and bounds
(serve/app.py, serve/auth.py); same binding rule: 127.0.0.1 unless API keys are configured. With
`--serve RUN…` the served models' API, metrics and playground pages join the app too.
"""

from __future__ import annotations

import logging
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
    from tunelab.ui.pages import router as dashboard_router

    if serving:
        app = serve_stage.build_app(state)
    else:
        app = create_app(state, [health_router(), serve_ui.login_router, home_router])
        app.mount("/ui/static", serve_ui.static_app(), name="static")
        app.add_exception_handler(SessionRequired, serve_ui.session_required)
    include(app, dashboard_router)
    return app


def run(runs_dir: Path, cfg: ServeConfig, serve_paths: list[Path] = (), parallel: int = 1,
        allow_incomplete: bool = False, max_upload_bytes: int = 50_000_000) -> None:
    """Serve the dashboard over `runs_dir` (and the models of `serve_paths`) until interrupted.

    Raises:
        ServeError: an address other than loopback without API keys, half a TLS pair, an incomplete served run.
    """
    import threading

    import uvicorn

    from tunelab.serve import stage as serve_stage
    from tunelab.serve.app import AppState
    from tunelab.serve.keys import KeyStore
    from tunelab.serve.metrics import Metrics
    from tunelab.ui.jobs import JobQueue
    from tunelab.ui.state import KEY, Dashboard

    serve_paths = [Path(p) for p in serve_paths]
    for p in serve_paths:
        serve_stage.check_servable(p, allow_incomplete)
    keys = KeyStore(cfg.keys_file)
    serve_stage.check_bind(cfg, keys)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    state = AppState(cfg, keys, Metrics(), None, tls=bool(cfg.ssl_certfile))
    jobs = JobQueue(runs_dir, parallel)
    state.extra[KEY] = Dashboard(runs_dir, jobs, max_upload_bytes)
    state.ready = not serve_paths
    server = uvicorn.Server(uvicorn.Config(build_app(state, bool(serve_paths)), host=cfg.host, port=cfg.port,
                                           log_level="warning", access_log=False, ssl_certfile=cfg.ssl_certfile,
                                           ssl_keyfile=cfg.ssl_keyfile, timeout_graceful_shutdown=5))
    scheme = "https" if cfg.ssl_certfile else "http"
    log.info(f"tunelab ui on {scheme}://{cfg.host}:{cfg.port}/ui/ over {runs_dir.resolve()} "
             f"(keys: {keys.path}, {keys.active_count()} active; sign in with one)")
    if keys.active_count() == 0:
        log.warning(f"no API key in {keys.path} yet: create one with `tunelab keys create NAME` to sign in")
    if serve_paths:
        threading.Thread(target=serve_stage.load_models_in_background,
                         args=(state, serve_paths, allow_incomplete, server), daemon=True).start()
    try:
        server.run()
    finally:
        jobs.close()
        if state.engine is not None:
            state.engine.stop()
