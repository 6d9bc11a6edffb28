"""Production metrics in Prometheus' text format at `/metrics` (a key, or a `metrics`-scope scrape token).

The names are a contract (dashboards, alerts, the monitor, docs/serving.md): change them only with a
note there. Latency and time-to-first-token are measured by the server around the whole request
(streaming included), so they are what a client sees minus the network.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Every metric of one server, in its own registry (several apps in one process never collide)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests_total", "Requests answered, by route, model and HTTP status",
                                ["route", "model", "status"], registry=r)
        self.latency = Histogram("tunelab_request_latency_seconds", "End-to-end request latency (until the last byte)",
                                 ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunelab_time_to_first_token_seconds", "Time from request to the first generated token",
                              ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tunelab_prompt_tokens_total", "Prompt tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("tunelab_generated_tokens_total", "Tokens generated", ["model"], registry=r)
        self.errors = Counter("tunelab_errors_total", "Failed requests by error type", ["route", "type"], registry=r)
        self.in_flight = Gauge("tunelab_requests_in_flight", "Requests being handled now", registry=r)
        self.queued = Gauge("tunelab_requests_queued", "Requests waiting for the model", registry=r)
        self.batch_size = Histogram("tunelab_batch_size", "Requests decoded together in one batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.info = Gauge("tunelab_model_info", "Served models (value 1)", ["model", "parent", "task", "serving"],
                          registry=r)

    def observe(self, entry: dict) -> None:
        """Count one finished request from its request-log entry."""
        route, model = entry["route"], entry["model"] or ""
        self.requests.labels(route, model, str(entry["status"])).inc()
        self.latency.labels(route, model).observe(entry["latency_ms"] / 1000)
        if entry.get("ttft_ms") is not None:
            self.ttft.labels(route, model).observe(entry["ttft_ms"] / 1000)
        if entry.get("prompt_tokens"):
            self.prompt_tokens.labels(model).inc(entry["prompt_tokens"])
        if entry.get("completion_tokens"):
            self.generated_tokens.labels(model).inc(entry["completion_tokens"])
        if entry.get("error_type"):
            self.errors.labels(route, entry["error_type"]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_router(require_metrics) -> APIRouter:
    """GET /metrics behind `require_metrics` (an API key or a scrape token)."""
    router = APIRouter(dependencies=[Depends(require_metrics)])

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state = request.app.state.tunelab
        state.metrics.queued.set(state.engine.queued if state.engine else 0)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
