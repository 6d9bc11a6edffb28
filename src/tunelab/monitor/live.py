"""The monitor's checks inside `tunelab serve` (`--monitor`, or `monitor.live: true` in the run's config),
exported as gauges on /metrics.

The server hands every logged request to `observe` (the line the request log gets: redacted, with text
only under serve.log_prompts). A thread checks the newest `monitor.window` requests of a model after
`monitor.live_every_requests` new ones, or `monitor.live_every_s` seconds after the last check when new
requests came in, with exactly the checks of `tunelab monitor` (checks.py) against the answering run's
training data. Gauges (label `model`, and `check`):

    tunelab_monitor_value        the check's value on the newest window (MMD², AUC, PSI, rate, p95 ms)
    tunelab_monitor_p_value      its p-value (statistical checks)
    tunelab_monitor_fired        1 when the check fired on the newest window
    tunelab_monitor_drift        1 when any input or output check fired (model only)
    tunelab_monitor_window_end   requests seen by the model when the newest window was checked (model only)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

from tunelab.config.monitor import MonitorConfig
from tunelab.core.rundir import RunDir
from tunelab.monitor import deployment
from tunelab.monitor.checks import check_window
from tunelab.monitor.reference import attach_confidence, from_run
from tunelab.monitor.traffic import MODEL_ROUTES

log = logging.getLogger(__name__)


class LiveMonitor:
    """Rolling windows per served model, checked in a background thread; results on Prometheus gauges."""

    def __init__(self, roots: dict[str, Path], configs: dict[str, MonitorConfig], registry):
        from prometheus_client import Gauge

        self.roots, self.configs = {k: RunDir(p) for k, p in roots.items()}, configs
        self.buffers = {k: deque(maxlen=c.window) for k, c in configs.items()}
        self.seen = {k: 0 for k in configs}
        self.checked_at = {k: 0 for k in configs}
        self.last_check = {k: time.monotonic() for k in configs}
        self.references, self.encoders = {}, {}
        self.latest: dict[str, list] = {}
        self._lock, self._wake, self._stop = threading.Lock(), threading.Event(), threading.Event()
        self.value = Gauge("tunelab_monitor_value", "Monitor check value on the newest window", ["model", "check"], registry=registry)
        self.p_value = Gauge("tunelab_monitor_p_value", "Monitor check p-value on the newest window", ["model", "check"], registry=registry)
        self.fired = Gauge("tunelab_monitor_fired", "1 when the monitor check fired on the newest window", ["model", "check"], registry=registry)
        self.drift = Gauge("tunelab_monitor_drift", "1 when an input or output drift check fired on the newest window", ["model"], registry=registry)
        self.window_end = Gauge("tunelab_monitor_window_end", "Requests seen when the newest window was checked", ["model"], registry=registry)
        self._thread = threading.Thread(target=self._loop, name="tunelab-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def observe(self, entry: dict) -> None:
        """Take one logged request (called by the server for every request; never blocks on the checks)."""
        model = entry.get("model")
        if model not in self.buffers or entry["route"] not in MODEL_ROUTES:
            return
        with self._lock:
            self.buffers[model].append(entry)
            self.seen[model] += 1
            every = self.configs[model].live_every_requests
            if every and self.seen[model] - self.checked_at[model] >= every:
                self._wake.set()

    def reset(self, model: str) -> None:
        """A promotion swapped the model: start its windows afresh against the new run's training data."""
        with self._lock:
            self.buffers[model].clear()
            self.references.pop(model, None)

    def _due(self, model: str) -> bool:
        cfg, new = self.configs[model], self.seen[model] - self.checked_at[model]
        if new <= 0 or len(self.buffers[model]) < cfg.window:
            return False
        by_count = bool(cfg.live_every_requests) and new >= cfg.live_every_requests
        by_time = bool(cfg.live_every_s) and time.monotonic() - self.last_check[model] >= cfg.live_every_s
        return by_count or by_time

    def _loop(self) -> None:
        timeout = min([c.live_every_s for c in self.configs.values() if c.live_every_s] or [60.0])
        while not self._stop.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            for model in list(self.configs):
                if self._due(model):
                    try:
                        self.check(model)
                    except Exception as e:   # the checks must never take the server down
                        log.error(f"monitor {model}: the checks failed ({type(e).__name__}: {e})")

    def check(self, model: str) -> list:
        """Run the checks on `model`'s newest window now and set the gauges."""
        cfg = self.configs[model]
        with self._lock:
            window, seen = list(self.buffers[model]), self.seen[model]
            self.checked_at[model], self.last_check[model] = seen, time.monotonic()
        if model not in self.references:
            active = deployment.active_run(self.roots[model])[0]
            ref = self.references[model] = from_run(active, cfg)
            if ref.labels and any(r.get("label_probability") is not None for r in window):
                attach_confidence(ref, active, cfg)
        encoder = None
        if any(r.get("input") is not None for r in window):
            if model not in self.encoders:
                from tunelab.monitor.embed import Encoder
                self.encoders[model] = Encoder(cfg.encoder, cfg.max_length)
            encoder = self.encoders[model]
        checks = check_window(self.references[model], window, cfg, encoder, seed=cfg.seed * 1_000_003 + seen)
        for c in checks:
            if c.skipped is None:
                self.value.labels(model, c.name).set(c.value if c.value is not None else float("nan"))
                self.p_value.labels(model, c.name).set(c.p if c.p is not None else float("nan"))
                self.fired.labels(model, c.name).set(1 if c.fired else 0)
        self.drift.labels(model).set(1 if any(c.fired and c.family in ("input", "output") for c in checks) else 0)
        self.window_end.labels(model).set(seen)
        self.latest[model] = checks
        fired = [c.name for c in checks if c.fired]
        log.info(f"monitor {model}: window ending at request {seen}: " + (f"fired {', '.join(fired)}" if fired else "ok"))
        return checks
