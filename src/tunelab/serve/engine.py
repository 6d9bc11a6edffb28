"""The batching engine: a bounded queue and one worker thread that runs every model forward pass.

Handlers on the event loop only enqueue a `Job` and await its future, so the loop never blocks on
model work. The worker takes the oldest job and every queued job of the same kind for the same model
(up to `max_batch_size`) and decodes them in one batch with the evaluator's KV-cache decoder
(`evaluate/decoding.py`), so concurrent requests share forward passes. After a batch of several jobs
it waits up to `batch_wait_ms` for as many to queue again: closed-loop clients resend together and
would otherwise split into a batch of one and a batch of the rest; a lone client never waits.
One worker, because torch already spreads one forward pass over every core: two concurrent passes
would only contend for them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from tunelab.serve.errors import ApiError

log = logging.getLogger(__name__)

Kind = Literal["generate", "labels", "head"]


@dataclass(eq=False)
class Job:
    """One unit of model work and where its outcome goes."""
    model: Any                      # served.ServedModel
    kind: Kind                      # generate (free or label-constrained), labels (+probabilities), head
    prompt: Any                     # token ids (generate, labels) or text (head)
    max_tokens: int = 1
    constrained: bool = False       # generate under the label trie
    ignore_eos: bool = False
    stop_text: Callable[[list[int]], bool] | None = None   # True: a stop sequence appeared
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    stream: asyncio.Queue | None = None    # new token ids as they come, then None
    cancelled: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    tokens: list[int] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.model.id, self.kind, self.constrained)

    def _call(self, fn, *args) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(fn, *args)

    def emit(self, ids: list[int]) -> bool:
        """Called by the worker with new tokens; returns True when the row should stop."""
        if self.first_token is None:
            self.first_token = time.monotonic()
        self.tokens.extend(ids)
        if self.stream is not None:
            self._call(self.stream.put_nowait, list(ids))
        return self.cancelled or bool(self.stop_text and self.stop_text(self.tokens))

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle():
            if self.future is not None and not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)
            if self.stream is not None:
                self.stream.put_nowait(None)
        self._call(settle)


class Engine:
    """The queue and its worker thread; `submit` from the event loop, results come back on it."""

    def __init__(self, max_batch: int, max_queue: int, batch_wait_ms: float, on_batch: Callable[[int], None] | None = None):
        self.max_batch, self.max_queue, self.wait_s = max_batch, max_queue, batch_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._last: dict[tuple, int] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> Job:
        """Queue `job` (its future and stream are bound to the running loop).

        Raises:
            ApiError: 429 when the queue is full.
        """
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise ApiError(429, f"the server is at capacity ({self.max_queue} requests queued); retry shortly",
                               "queue_full", headers={"Retry-After": "1"})
            self._queue.append(job)
            self._cond.notify_all()
        return job

    # ------------------------------------------------------------ worker

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return []
            key = self._queue[0].key
            target = min(self.max_batch, self._last.get(key, 1))
            deadline = time.monotonic() + self.wait_s
            while sum(1 for j in self._queue if j.key == key) < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop:
                    break
                self._cond.wait(remaining)
            batch = [j for j in self._queue if j.key == key and not j.cancelled][: self.max_batch]
            dropped = [j for j in self._queue if j.key == key and j.cancelled]
            for j in batch + dropped:
                self._queue.remove(j)
            self._last[key] = max(len(batch), 1)
        for j in dropped:
            j.finish(error=ApiError(504, "the request timed out before the model reached it", "timeout"))
        return batch

    def _loop(self) -> None:
        while not self._stop:
            batch = self._take()
            if not batch:
                continue
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                results = batch[0].model.run_batch(batch)
            except Exception as e:   # a bug or an out-of-memory: fail this batch, keep serving
                log.exception("a batch failed")
                err = ApiError(500, f"the model failed on this batch ({type(e).__name__}: {e})", "server_error")
                for j in batch:
                    j.finish(error=err)
                continue
            for j, r in zip(batch, results):
                j.finish(r)

