"""`tunelab serve RUN_OR_EXPORT…`: check what is asked, bind safely, load the models, serve until stopped.

Refusals come before anything binds: a run that is not complete, an address other than loopback
without any API key configured, half a TLS pair. The app answers /health (503) while the models load
in a background thread, then 200.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from pathlib import Path

from tunelab.config.serve import ServeConfig
from tunelab.core.errors import UserError
from tunelab.core.rundir import RunDir, request_log_path
from tunelab.export.bundle import is_export, read_export

log = logging.getLogger(__name__)


class ServeError(UserError):
    """A serving setup that is refused (unsafe bind, incomplete run, bad TLS files)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_servable(path: Path, allow_incomplete: bool = False) -> Path:
    """The runs folder a served folder belongs to; refuses a run that is not complete (with the reason)."""
    path = Path(path)
    if is_export(path):
        run = Path(read_export(path).get("run") or "")
        return run.parent if run.is_dir() else path.resolve().parent
    rd = RunDir.open(path)
    rd.require_complete("serve it", allow_incomplete)
    return rd.path.resolve().parent


def serve_config(paths: list[Path], overrides: dict) -> ServeConfig:
    """The first folder's `serve:` section (from its config), with the command line's values on top."""
    first = Path(paths[0])
    if is_export(first):
        from tunelab.config import config_from_dict

        base = config_from_dict(read_export(first)["config"]).serve
    else:
        base = RunDir.open(first).config().serve
    values = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return ServeConfig(**values)
    except ValueError as e:
        raise ServeError(f"serve settings: {e}") from None


def check_bind(cfg: ServeConfig, keys) -> None:
    """Refuse a non-loopback address without API keys, and half a TLS pair."""
    if not is_loopback(cfg.host) and keys.active_count() == 0:
        raise ServeError(f"refusing to bind {cfg.host}: no API key is configured in {keys.path}, so anyone on the "
                         "network could use the models. Create one with `tunelab keys create NAME` (and pass the same "
                         "--keys-file), or bind 127.0.0.1")
    if bool(cfg.ssl_certfile) != bool(cfg.ssl_keyfile):
        raise ServeError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    for f in (cfg.ssl_certfile, cfg.ssl_keyfile):
        if f and not Path(f).is_file():
            raise ServeError(f"TLS file not found: {f}")


def build_app(state):
    """The serve app: health, the OpenAI API, metrics, and the web interface."""
    from tunelab.serve import ui
    from tunelab.serve.app import create_app, health_router
    from tunelab.serve.auth import SessionRequired, require_metrics
    from tunelab.serve.metrics import metrics_router
    from tunelab.serve.openai_api import router as openai_router

    app = create_app(state, [health_router(), openai_router, metrics_router(require_metrics),
                             ui.login_router, ui.pages_router])
    app.mount("/ui/static", ui.static_app(), name="static")
    app.add_exception_handler(SessionRequired, ui.session_required)
    return app


def _live_monitor(state, paths: list[Path], forced: bool):
    """The monitor's checks inside the server for every served run with monitor.live (or all, with --monitor)."""
    from tunelab.monitor.live import LiveMonitor

    configs, roots = {}, {}
    for path in paths:
        if is_export(path):
            continue
        rd = RunDir.open(path)
        cfg = rd.config().monitor
        if forced or cfg.live:
            configs[rd.name], roots[rd.name] = cfg, rd.path
    if not configs:
        return None
    live = LiveMonitor(roots, configs, state.metrics.registry)
    live.start()
    state.extra["monitor"] = live
    log.info(f"monitoring {', '.join(configs)} in the server: the checks of `tunelab monitor` on the newest window, "
             "as tunelab_monitor_* gauges on /metrics" + ("" if state.cfg.log_prompts else
             " (input drift needs --log-prompts; without it only length, output and operations checks run)"))
    return live


def _load(state, paths: list[Path], allow_incomplete: bool, server, monitor: bool = False) -> None:
    from tunelab.serve.engine import Engine
    from tunelab.serve.promotions import PromotionWatcher
    from tunelab.serve.served import load_models

    try:
        models = load_models(paths, state.cfg.max_batch_size, state.cfg.serve_base, allow_incomplete)
        for m in models.values():
            state.metrics.info.labels(m.id, m.parent or "", m.task, m.serving).set(1)
        # Per-batch progress bars would flood a server's log; loading (above) keeps its bars.
        os.environ["TUNELAB_PROGRESS"] = "0"
        engine = Engine(state.cfg.max_batch_size, state.cfg.max_queue, state.cfg.batch_wait_ms,
                        on_batch=state.metrics.batch_size.observe)
        engine.start()
        state.models, state.engine, state.ready = models, engine, True
        live = _live_monitor(state, paths, monitor)
        watcher = PromotionWatcher(state, paths, state.cfg.max_batch_size, allow_incomplete,
                                   on_swap=live.reset if live else None)
        watcher.start()
        state.extra["promotions"] = watcher
        log.info(f"ready: {', '.join(models)}")
    except Exception as e:   # the server must not keep answering 503 forever: stop it with the reason
        state.load_error = str(e)
        log.error(f"loading failed: {e}")
        server.should_exit = True


def run(paths: list[Path], cfg: ServeConfig, allow_incomplete: bool = False, monitor: bool = False, build=None,
        title: str = "tunelab serve") -> None:
    """Serve `paths` (run or export folders) with `cfg` until interrupted.

    `build(state) -> app` replaces `build_app` (`tunelab ui` adds its dashboard this way); with no
    `paths` there are no models to load and the app is ready at once.

    Raises:
        ServeError: an unsafe or impossible setup; RunDirError: a run that is not complete.
    """
    import uvicorn

    from tunelab.serve.app import AppState
    from tunelab.serve.keys import KeyStore
    from tunelab.serve.metrics import Metrics
    from tunelab.serve.ratelimit import RateLimiter
    from tunelab.serve.requestlog import RequestLog

    runs_dirs = [check_servable(p, allow_incomplete) for p in paths]
    keys = KeyStore(cfg.keys_file)
    check_bind(cfg, keys)
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)
    log_path = Path(cfg.request_log) if cfg.request_log else request_log_path(runs_dirs[0]) if runs_dirs else None
    request_log = RequestLog(log_path, cfg.log_max_bytes, cfg.log_backups, cfg.log_prompts) if log_path else None
    state = AppState(cfg, keys, Metrics(), request_log, tls=bool(cfg.ssl_certfile), ready=not paths)
    state.extra["rate_limiter"] = RateLimiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst)
    server = uvicorn.Server(uvicorn.Config((build or build_app)(state), host=cfg.host, port=cfg.port,
                                           log_level="warning", access_log=False, ssl_certfile=cfg.ssl_certfile,
                                           ssl_keyfile=cfg.ssl_keyfile, timeout_graceful_shutdown=5))
    scheme = "https" if cfg.ssl_certfile else "http"
    log.info(f"{title} on {scheme}://{cfg.host}:{cfg.port} (keys: {keys.path}, {keys.active_count()} active; "
             f"request log: {log_path or 'none'}); loading {len(paths)} model folder(s)...")
    if paths:
        threading.Thread(target=_load, args=(state, paths, allow_incomplete, server, monitor), daemon=True).start()
    try:
        server.run()
    finally:
        if state.engine is not None:
            state.engine.stop()
        if state.request_log is not None:
            state.request_log.close()
    if state.load_error:
        raise ServeError(f"the models could not be loaded: {state.load_error}")
