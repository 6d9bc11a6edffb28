"""A bounded loopback load test: 500 requests at concurrency 16 against the real server, no errors, memory
stable. (Throughput is measured against the peer by benchmarks/serve_throughput.py, not here.)"""

from __future__ import annotations

import asyncio
import time

import httpx

TOTAL, CONCURRENCY, WARMUP = 500, 16, 64


async def _hammer(server, total: int) -> tuple[list[int], list[str]]:
    auth = {"Authorization": f"Bearer {server.key}"}
    texts = ["where is my card", "my pin is blocked", "transfer pending", "the card never came"]
    codes, answers, next_i = [], [], iter(range(total))

    async def worker(client):
        for i in next_i:
            model = "intents" if i % 2 else "encoder"
            r = await client.post("/v1/chat/completions", headers=auth,
                                  json={"model": model, "messages": [{"role": "user", "content": texts[i % 4]}]})
            codes.append(r.status_code)
            if r.status_code == 200:
                answers.append(r.json()["choices"][0]["message"]["content"])

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return codes, answers


def test_500_requests_at_concurrency_16(server):
    asyncio.run(_hammer(server, WARMUP))   # allocator and caches settle first
    rss_before = server.rss_mb()
    start = time.time()
    codes, answers = asyncio.run(_hammer(server, TOTAL))
    seconds = time.time() - start
    rss_after = server.rss_mb()
    assert len(codes) == TOTAL and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    assert seconds <= 60, seconds
    assert rss_after - rss_before < 50, (rss_before, rss_after)
    print(f"{TOTAL} requests at concurrency {CONCURRENCY}: {seconds:.1f}s ({TOTAL / seconds:.0f} req/s), "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MB")
