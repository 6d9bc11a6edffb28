"""`serve:` — how `tunelab serve` binds, bounds, batches, rate-limits and logs (every field documented once)."""

from __future__ import annotations

from pydantic import Field

from tunelab.config._section import Section


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Address to bind. Anything but a loopback address is refused unless API keys are configured (`tunelab keys create`).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one and logs it).")
    keys_file: str | None = Field(None, description="API-key store (salted hashes). Default: `$TUNELAB_HOME/keys.json`.")
    ssl_certfile: str | None = Field(None, description="PEM certificate: serve HTTPS (session cookies are then marked Secure).")
    ssl_keyfile: str | None = Field(None, description="PEM private key for `ssl_certfile`.")
    serve_base: bool = Field(False, description="Also serve each run's untuned base model, under its own model id (the `parent` in /v1/models).")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted; larger bodies get 413.")
    max_prompt_tokens: int = Field(2048, ge=8, description="Largest prompt (in tokens, after the run's template) accepted; longer prompts get 400.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest `max_tokens` a request may ask for; more gets 400.")
    default_max_tokens: int = Field(128, ge=1, description="`max_tokens` when a request gives none (label-set runs stop after their label anyway).")
    max_batch_size: int = Field(16, ge=1, description="Requests decoded together in one batched forward pass.")
    batch_wait_ms: float = Field(10.0, ge=0.0, description="After a batch of several requests, wait at most this long for as many to queue again before decoding (a lone client never waits).")
    max_queue: int = Field(256, ge=1, description="Requests waiting for the model at most; more get 429 with Retry-After.")
    max_concurrency: int = Field(128, ge=1, description="Requests being handled at once at most (queued, decoding or streaming); more get 429.")
    request_timeout_s: float = Field(120.0, gt=0.0, description="A request that has not finished after this long is ended with a 504 (its decoding row is stopped).")
    rate_limit_per_minute: float | None = Field(None, gt=0.0, description="Per-key request rate (token bucket); above it requests get 429 with Retry-After. None: no per-key limit.")
    rate_limit_burst: int = Field(20, ge=1, description="Requests a key may send at once before the per-minute rate applies.")
    request_log: str | None = Field(None, description="Request log (JSONL, one line per request). Default: `<runs folder>/_serving/requests.jsonl` of the first served run.")
    log_prompts: bool = Field(False, description="Write each request's input and output text into the request log (PII redacted). Off: the log holds no text.")
    log_max_bytes: int = Field(50_000_000, ge=10_000, description="Rotate the request log when it reaches this size (`requests.jsonl.1`, `.2`, ...).")
    log_backups: int = Field(10, ge=0, description="Rotated request logs kept.")
    session_ttl_s: int = Field(8 * 3600, ge=60, description="Lifetime of a web-interface session after sign-in.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores).")
