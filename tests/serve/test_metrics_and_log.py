"""/metrics counts what was served (latency histogram, generated tokens, errors), and the request log
holds one contract-shaped line per request, with key ids (never keys) and redacted text."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tunelab.serve.requestlog import FIELDS


def scrape(server) -> dict[tuple, float]:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {server.key}"}, timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))


def test_metrics_count_requests_tokens_and_errors(server):
    n, k = 7, 3
    before = scrape(server)
    auth = {"Authorization": f"Bearer {server.key}"}
    for i in range(n):
        r = httpx.post(server.url + "/v1/completions", headers=auth, timeout=60,
                       json={"model": "tiny-llama", "prompt": f"my card {i}", "max_tokens": k, "ignore_eos": True})
        assert r.json()["usage"]["completion_tokens"] == k
    bad = httpx.post(server.url + "/v1/completions", headers=auth, timeout=60,
                     json={"model": "tiny-llama", "prompt": "x", "max_tokens": 10**6})
    assert bad.status_code == 400
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "/v1/completions", "model": "tiny-llama"}
    assert delta("tunelab_request_latency_seconds_count", **route) == n + 1   # the 400 took time too
    assert delta("tunelab_requests_total", status="200", **route) == n
    assert delta("tunelab_generated_tokens_total", model="tiny-llama") == n * k
    assert delta("tunelab_time_to_first_token_seconds_count", **route) == n
    assert delta("tunelab_errors_total", route="/v1/completions", type="invalid_max_tokens") == 1
    assert delta("tunelab_prompt_tokens_total", model="tiny-llama") > 0
    assert value(after, "tunelab_model_info", model="intents", parent="tiny-llama") == 1
    assert ("tunelab_requests_in_flight", ()) in after and ("tunelab_requests_queued", ()) in after


def test_request_log_lines_follow_the_contract(server):
    auth = {"Authorization": f"Bearer {server.key}"}
    secret_mail = "jane.doe@example.com"
    r = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=60,
                   json={"model": "intents", "messages": [{"role": "user", "content": f"card for {secret_mail}?"}],
                         "return_label_probabilities": True})
    rid = r.json()["id"].removeprefix("chatcmpl-")
    httpx.get(server.url + "/v1/models", timeout=30)   # unauthenticated
    time.sleep(0.5)   # the writer thread appends asynchronously
    lines = [json.loads(l) for l in server.request_log.read_text().splitlines()]
    mine = next(l for l in lines if l["request_id"] == rid)
    assert list(mine)[: len(FIELDS)] == list(FIELDS)
    assert mine["key_id"] == server.key.split("_")[1] and mine["route"] == "/v1/chat/completions"
    assert mine["model"] == "intents" and mine["status"] == 200 and mine["error_type"] is None
    assert mine["label"] == r.json()["choices"][0]["message"]["content"]
    assert 0 < mine["label_probability"] <= 1 and mine["latency_ms"] >= mine["ttft_ms"] > 0
    assert mine["input"] == "card for [EMAIL]?" and mine["output"] == mine["label"] and mine["stream"] is False
    assert mine["time"].endswith("Z") and len(mine["time"]) == len("2025-01-31T12:00:00.123Z")
    anonymous = [l for l in lines if l["route"] == "/v1/models" and l["status"] == 401]
    assert anonymous and anonymous[-1]["key_id"] is None and anonymous[-1]["error_type"] == "invalid_api_key"
    text = server.request_log.read_text()
    assert server.key not in text and server.key.split("_", 2)[2] not in text and secret_mail not in text
