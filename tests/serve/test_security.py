"""Security of the served app: every route needs a key (walked from the app itself), OpenAI-shaped 4xx for
bad requests while the server keeps serving, rate limits, key revocation, safe binding, incomplete runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import httpx
from fastapi.routing import iter_route_contexts

from conftest import Server, create_key, free_port
from tunelab.config.serve import ServeConfig
from tunelab.serve.app import PUBLIC_PATHS, AppState
from tunelab.serve.keys import KeyStore
from tunelab.serve.metrics import Metrics
from tunelab.serve.stage import build_app


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the app `tunelab serve` runs, path parameters filled in."""
    app = build_app(AppState(ServeConfig(), KeyStore("/nonexistent/keys.json"), Metrics(), None))
    out = []
    for route in iter_route_contexts(app.routes):   # included routers expanded, prefixes applied
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            out.append((method, path + ("/serve.css" if path == "/ui/static" else "")))
    return out


def test_every_route_but_the_public_ones_needs_a_key(server):
    routes = app_routes()
    assert len(routes) >= 15
    public = []
    for method, path in routes:
        r = httpx.request(method, server.url + path, json={} if method == "POST" else None, timeout=30)
        if path.startswith(PUBLIC_PATHS):
            public.append(path)
            assert r.status_code != 401 or path == "/ui/login", (method, path)
            continue
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        if path.startswith("/v1") or path == "/metrics":
            assert r.json()["error"]["code"] == "invalid_api_key"
        else:   # pages: a sign-in link, never the page
            assert 'href="/ui/login"' in r.text
    assert {"/health", "/ui/login", "/ui/static/serve.css"} <= set(public)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    auth = {"Authorization": f"Bearer {server.key}"}
    url = server.url + "/v1/chat/completions"
    good = {"model": "intents", "messages": [{"role": "user", "content": "where is my card"}]}
    cases = [
        (dict(content=b'{"model": "intents", "messages": [', headers={**auth, "content-type": "application/json"}), 400),
        (dict(content=b"x" * 10_000_000, headers={**auth, "content-type": "application/json"}), 413),
        (dict(json={**good, "max_tokens": -1}, headers=auth), 400),
        (dict(json={**good, "max_tokens": 10**9}, headers=auth), 400),
        (dict(json={**good, "messages": "hello"}, headers=auth), 400),
        (dict(json={**good, "max_tokens": "many"}, headers=auth), 400),
        (dict(json={**good, "model": "nope"}, headers=auth), 404),
        (dict(json={"model": "intents"}, headers=auth), 400),
        (dict(json={**good, "temperature": 0.7}, headers=auth), 400),
        (dict(json={**good, "surprise": 1}, headers=auth), 400),
        (dict(json={**good, "messages": [{"role": "user", "content": "card " * 300}]}, headers=auth), 400),
    ]
    for kwargs, status in cases:
        r = httpx.post(url, timeout=60, **kwargs)
        assert r.status_code == status, (status, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["message"] and err["type"]
        assert httpx.post(url, json=good, headers=auth, timeout=60).status_code == 200   # still serving


def test_pages_send_security_headers_and_strict_cookies(server):
    r = httpx.get(server.url + "/ui/login", timeout=30)
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    # Without the form's CSRF token (cookie + field), even a valid key does not sign in.
    r = httpx.post(server.url + "/ui/login", data={"api_key": server.key, "csrf_token": "forged"}, timeout=30)
    assert r.status_code == 403 and "tunelab_session" not in r.headers.get("set-cookie", "")


def test_revoked_key_stops_working_without_a_restart(server, keys):
    key = create_key(keys["file"], "short-lived")
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.get(server.url + "/v1/models", headers=auth, timeout=30).status_code == 200
    key_id = key.split("_")[1]
    subprocess.run([sys.executable, "-m", "tunelab.cli", "keys", "revoke", key_id, "--keys-file", str(keys["file"])],
                   check=True, capture_output=True, timeout=120)
    assert httpx.get(server.url + "/v1/models", headers=auth, timeout=30).status_code == 401
    listed = subprocess.run([sys.executable, "-m", "tunelab.cli", "keys", "list", "--keys-file", str(keys["file"])],
                            check=True, capture_output=True, text=True, timeout=120).stdout
    assert key_id in listed and "revoked" in listed and key.split("_", 2)[2] not in listed
    assert key.split("_", 2)[2] not in keys["file"].read_text()   # only salted hashes are stored


def test_rate_limit_and_metrics_scrape_token(served_runs, keys, tmp_path):
    srv = Server([str(served_runs["encoder"]), "--keys-file", str(keys["file"]), "-o", "rate_limit_per_minute=6",
                  "-o", "rate_limit_burst=2", "-o", f"request_log={tmp_path / 'log.jsonl'}"], free_port(), tmp_path / "srv.log")
    try:
        srv.wait_ready()
        auth = {"Authorization": f"Bearer {keys['api']}"}
        codes = [httpx.get(srv.url + "/v1/models", headers=auth, timeout=30) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert int(codes[2].headers["retry-after"]) >= 1 and codes[2].json()["error"]["code"] == "rate_limit_exceeded"
        scrape = {"Authorization": f"Bearer {keys['metrics']}"}
        assert httpx.get(srv.url + "/metrics", headers=scrape, timeout=30).status_code == 200
        assert httpx.get(srv.url + "/v1/models", headers=scrape, timeout=30).status_code == 401   # scrape only
    finally:
        srv.stop()


def test_refuses_public_bind_without_keys_and_incomplete_runs(served_runs, tmp_path):
    env_keys = tmp_path / "none.json"
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "serve", str(served_runs["encoder"]), "--host", "0.0.0.0",
                          "--keys-file", str(env_keys)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "refusing to bind 0.0.0.0" in out.stderr and "Traceback" not in out.stderr
    broken = tmp_path / "broken"
    shutil.copytree(served_runs["encoder"], broken)
    status = json.loads((broken / "status.json").read_text())
    status.update(status="failed", stage="evaluate", error="the forgetting gate failed")
    (broken / "status.json").write_text(json.dumps(status))
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "serve", str(broken), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cannot serve it: the run is failed" in out.stderr
