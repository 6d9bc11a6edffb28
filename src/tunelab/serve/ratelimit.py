"""Per-key rate limits: a token bucket per key id (`serve.rate_limit_per_minute`, `serve.rate_limit_burst`)."""

from __future__ import annotations

import math
import threading
import time

from fastapi import Depends, Request

from tunelab.serve.auth import require_api_key
from tunelab.serve.errors import ApiError
from tunelab.serve.keys import Principal


class RateLimiter:
    """`take(key_id)` spends one token or says how long until one is available."""

    def __init__(self, per_minute: float | None, burst: int):
        self.rate = per_minute / 60 if per_minute else None
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}   # key id -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0 when the request may go ahead, else the seconds to wait."""
        if self.rate is None:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate


async def rate_limit(request: Request, principal: Principal = Depends(require_api_key)) -> Principal:
    """A live API key that is within its rate; 429 with Retry-After otherwise."""
    wait = request.app.state.tunelab.extra["rate_limiter"].take(principal.key_id)
    if wait > 0:
        raise ApiError(429, f"rate limit of this key reached (serve.rate_limit_per_minute); retry in {wait:.1f}s",
                       "rate_limit_exceeded", headers={"Retry-After": str(math.ceil(wait))})
    return principal
