"""The web app: one FastAPI app that `tunelab serve` (API + playground) and `tunelab ui` (dashboard) share.

`create_app(state, routers)` builds it: OpenAI-shaped errors, the body-size bound, the accounting
middleware (request id, concurrency cap, metrics, request log, security headers) and the routers.
Routers bring their own protection as router dependencies (auth.py): `require_api_key` for the API,
`require_session` (+ `require_csrf` on forms) for pages. The only public paths are `PUBLIC_PATHS`;
a test walks every route of the app to hold that.

Adding a page or an API to the app (the dashboard does): write an `APIRouter` with the right
dependency and pass it in `routers`, or call `include(app, router)` later.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from tunelab import __version__
from tunelab.config.serve import ServeConfig
from tunelab.serve.auth import Sessions
from tunelab.serve.errors import ApiError, error_kind, install_handlers
from tunelab.serve.keys import KeyStore
from tunelab.serve.metrics import Metrics
from tunelab.serve.requestlog import RequestLog, utc_now_ms
from tunelab.serve.security import security_headers

# Paths anyone may reach: liveness, and what signing in needs (the form and its stylesheet).
PUBLIC_PATHS = ("/health", "/ui/login", "/ui/static")


@dataclass
class AppState:
    """Everything handlers share, at `request.app.state.tunelab`."""
    cfg: ServeConfig
    keys: KeyStore
    metrics: Metrics
    request_log: RequestLog | None
    models: dict[str, Any] = field(default_factory=dict)     # model id -> served.ServedModel
    engine: Any = None                                       # engine.Engine, once models are loaded
    ready: bool = False
    load_error: str | None = None
    tls: bool = False
    sessions: Sessions = None  # type: ignore[assignment]
    in_flight: int = 0
    extra: dict[str, Any] = field(default_factory=dict)      # room for other routers' state (dashboard)

    def __post_init__(self):
        if self.sessions is None:
            self.sessions = Sessions(self.keys, self.cfg.session_ttl_s)

    def model(self, name: str):
        """The served model `name`; 503 while loading, 404 (model_not_found) when unknown."""
        if not self.ready:
            raise ApiError(503, "the server is still loading its models; retry shortly" if not self.load_error
                           else f"the models failed to load: {self.load_error}", "loading", headers={"Retry-After": "2"})
        if name not in self.models:
            raise ApiError(404, f"The model `{name}` does not exist; served models: {', '.join(self.models)}",
                           "model_not_found", "model")
        return self.models[name]


class Accounting:
    """ASGI middleware around every request: id, concurrency cap, security headers, metrics, request log.

    Pure ASGI (not BaseHTTPMiddleware) so that a streamed response is measured until its last byte.
    """

    def __init__(self, app, state: AppState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st, t0 = self.state, time.monotonic()
        rid = uuid.uuid4().hex
        info = scope.setdefault("state", {})
        info.update(request_id=rid, t0=t0)
        status = {"code": 500}

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())] + security_headers(scope["path"])
            await send(message)

        if st.in_flight >= st.cfg.max_concurrency and scope["path"] != "/health":
            err = ApiError(429, f"the server is handling {st.cfg.max_concurrency} requests (serve.max_concurrency); "
                           "retry shortly", "concurrency_limit", headers={"Retry-After": "1"})
            info["error"] = error_kind(429, err.code)
            await err.response()(scope, receive, send_wrapped)
            self._record(scope, info, status["code"], t0)
            return
        limit = st.cfg.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            err = _too_large(limit)
            info["error"] = error_kind(413, err.code)
            await err.response()(scope, receive, send_wrapped)
            self._record(scope, info, status["code"], t0)
            return
        received = {"bytes": 0}

        async def receive_bounded():
            # A body without Content-Length (chunked) is counted as it arrives.
            message = await receive()
            received["bytes"] += len(message.get("body", b""))
            if received["bytes"] > limit:
                raise HTTPException(413, _too_large(limit).message)
            return message

        st.in_flight += 1
        st.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_bounded, send_wrapped)
        except asyncio.CancelledError:
            status["code"], info["error"] = 499, "client_disconnected"
            raise
        finally:
            st.in_flight -= 1
            st.metrics.in_flight.dec()
            self._record(scope, info, status["code"], t0)

    def _record(self, scope, info: dict, status: int, t0: float) -> None:
        route = getattr(scope.get("route"), "path", None) or scope["path"]
        if route.startswith("/ui/static"):
            return   # stylesheets are not requests worth a log line
        error = info.get("error") or (error_kind(status, None) if status >= 400 else None)
        ttft = info.get("first_token")
        entry = dict(time=utc_now_ms(), request_id=info["request_id"], key_id=info.get("key_id"), route=route,
                     model=info.get("model"), status=status, error_type=error,
                     latency_ms=round((time.monotonic() - t0) * 1000, 3),
                     ttft_ms=round((ttft - t0) * 1000, 3) if ttft else None,
                     prompt_tokens=info.get("prompt_tokens", 0), completion_tokens=info.get("completion_tokens", 0),
                     stream=bool(info.get("stream")), label=info.get("label"),
                     label_probability=info.get("label_probability"), input=info.get("input"), output=info.get("output"))
        self.state.metrics.observe(entry)
        if self.state.request_log is not None and route != "/metrics":
            self.state.request_log.write(self.state.request_log.entry(**entry))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server accepts ({limit} bytes, serve.max_body_bytes)",
                    "request_too_large")


def include(app: FastAPI, router: APIRouter) -> None:
    """Add a router (with its own auth dependency) to a built app."""
    app.include_router(router)


def create_app(state: AppState, routers: list[APIRouter]) -> FastAPI:
    """The app over `state` with `routers` (each protected by its own dependencies)."""
    app = FastAPI(title="tunelab", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tunelab = state
    install_handlers(app)
    for router in routers:
        include(app, router)
    app.add_middleware(Accounting, state=state)
    return app


def health_router() -> APIRouter:
    """GET /health: 503 while the models load, 200 when ready (public: load balancers probe it)."""
    from tunelab.serve.schemas import Health

    router = APIRouter()

    @router.get("/health", response_model=Health)
    async def health(request: Request):
        st: AppState = request.app.state.tunelab
        body = Health(status="ok" if st.ready else "loading", models=list(st.models))
        return JSONResponse(body.model_dump(), status_code=200 if st.ready else 503)

    return router
