"""The loop end to end on a tiny model with a real `tunelab serve` subprocess: traffic drifts to an intent the
model never saw -> the server's own checks and `tunelab monitor` flag it -> the drifted requests are labelled
-> `tunelab retrain`: a worse challenger is not promoted (the server keeps its model), a better one is ->
the running server answers with the new model, without a restart."""

from __future__ import annotations

import json
import re

import httpx
from typer.testing import CliRunner

from conftest import PHRASES, SEEN, UNSEEN, train_champion, write_csv
from polling import wait_for
from servers import Server, create_key, free_port
from tunelab.cli import app
from tunelab.core.rundir import RunDir
from tunelab.monitor import deployment

WINDOW = 60


def true_label(text: str) -> str:
    return next(l for l, phrases in PHRASES.items() if any(p in text for p in phrases))


def classify(client: httpx.Client, texts: list[str]) -> list[dict]:
    """One /v1/classifications request per text (so each is one request-log line with its label)."""
    out = []
    for t in texts:
        r = client.post("/v1/classifications", json={"model": "shop", "input": [t]})
        assert r.status_code == 200, r.text
        out.append(r.json()["data"][0])
    return out


def gauge(client: httpx.Client, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return None


# The server checks in a background thread, slow on a loaded 2-core machine: an upper bound, not a wait.
LIVE_S = 300.0


def test_serve_drift_monitor_retrain_promote_reload(intents_project, tmp_path):
    project, fresh = intents_project, intents_project["fresh"]
    run = train_champion(project, "shop", window=WINDOW, step=WINDOW // 2, live_every_requests=WINDOW // 2)
    keys_file, log = tmp_path / "keys.json", tmp_path / "requests.jsonl"
    key = create_key(keys_file)
    srv = Server([str(run), "--log-prompts", "--monitor", "--keys-file", str(keys_file), "-o", f"request_log={log}"],
                 free_port(), tmp_path / "server.log")
    try:
        srv.wait_ready()
        client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        seen = [fresh[SEEN[i % 2]][i // 2] for i in range(2 * WINDOW)]
        drifted = fresh[UNSEEN][:3 * WINDOW]
        classify(client, seen)
        # A check runs once `live_every_requests` new requests arrived since the last one started; while a
        # check runs more requests arrive, so the last check may end before request 2 * WINDOW.
        wait_for(lambda: (gauge(client, "tunelab_monitor_window_end", model="shop") or 0) >= WINDOW, LIVE_S,
                 "a live check over a full window", poll=0.5)
        assert gauge(client, "tunelab_monitor_drift", model="shop") == 0
        answers = classify(client, drifted)
        assert {a["label"] for a in answers} <= set(SEEN)          # the champion cannot answer the new intent
        wait_for(lambda: gauge(client, "tunelab_monitor_drift", model="shop") == 1, LIVE_S, "live drift gauge", poll=0.5)

        # tunelab monitor over the server's request log flags the drift and lists the drifted inputs to label.
        result = CliRunner().invoke(app, ["monitor", str(run), "--requests", str(log)])
        assert result.exit_code == 0, result.output
        rd = RunDir(run)
        st = json.loads(rd.monitor_status.read_text())
        assert st["state"] == "drift" and st["drift_detected"]["requests_seen"] <= 2 * WINDOW + 2 * WINDOW
        assert not st["latest"]["checks"]["length"]["fired"] or st["latest"]["requests"][0] > 2 * WINDOW
        quiet = [w for w in map(json.loads, rd.monitor_windows.read_text().splitlines()) if w["requests"][1] <= 2 * WINDOW]
        assert quiet and not any(w["drift"] for w in quiet)          # same-distribution traffic raised no alarm
        rec = json.loads(rd.retrain_recommendation.read_text())
        candidates = [json.loads(l) for l in rd.monitor_candidates.read_text().splitlines()]
        assert rec["candidates"]["count"] == len(candidates) > 0

        # A person labels the logged requests (kept with their request ids); one is a copy of a test text.
        rows = [json.loads(l) for l in log.read_text().splitlines() if json.loads(l)["route"] == "/v1/classifications"]
        leaked = rd.data.splits()["test"][0]["input"]["text"]
        labelled = [(r["input"], true_label(r["input"])) for r in rows] + [(leaked, true_label(leaked))]
        feedback = write_csv(tmp_path / "labelled.csv", labelled,
                             {"request_id": [r["request_id"] for r in rows] + ["extra"]})

        result = CliRunner().invoke(app, ["retrain", str(run), "--data", str(feedback), "--name", "shop-worse",
                                          "train.max_steps=1", "train.lr=1e-9"])
        assert result.exit_code == 0, result.output
        worse = json.loads(RunDir(run.parent / "shop-worse").retrain_json.read_text())
        assert not worse["decision"]["promoted"] and not rd.promoted_path.exists()
        print(f"drift detected after {st['drift_detected']['requests_seen']} requests; worse challenger not promoted: "
              f"{worse['decision']['reasons']}")

        result = CliRunner().invoke(app, ["retrain", str(run), "--data", str(feedback), "train.max_steps=200"])
        assert result.exit_code == 0, result.output
        ch = RunDir(run.parent / "shop-retrain-1")
        doc = json.loads(ch.retrain_json.read_text())
        new, old = doc["comparison"]["new_holdout"], doc["comparison"]["old_test"]
        assert doc["decision"]["promoted"], doc["decision"]["reasons"]
        assert new["challenger"]["accuracy"] > new["champion"]["accuracy"] and new["paired"]["p"] < 0.05
        assert not (old["paired"]["delta"] < 0 and old["paired"]["p"] < 0.05)
        print(f"challenger promoted: new held-out accuracy {new['champion']['accuracy']:.3f} -> "
              f"{new['challenger']['accuracy']:.3f} (p {new['paired']['p']:.2g}); old test "
              f"{old['champion']['accuracy']:.3f} -> {old['challenger']['accuracy']:.3f} (p {old['paired']['p']:.2g})")
        dropped = [json.loads(l) for l in ch.data.dropped_path.read_text().splitlines()]
        assert any(d["reason"] == "leaked_exact_test" and d["text"] == leaked for d in dropped)
        assert deployment.promotion(rd)["active_name"] == ch.name

        # The running server switches to the challenger: same model id, new run behind it, the new intent answered.
        wait_for(lambda: client.get("/v1/models/shop").json().get("root") == ch.name, LIVE_S, "the promoted model",
                 poll=0.5)
        unseen_before = [t for t in fresh[UNSEEN][3 * WINDOW: 3 * WINDOW + 20]]
        answers = classify(client, unseen_before)
        assert sum(a["label"] == UNSEEN for a in answers) >= 16, [a["label"] for a in answers]
        print(f"the running server answers with {ch.name}: {sum(a['label'] == UNSEEN for a in answers)}/20 "
              f"queries of the new intent answered {UNSEEN}")
        assert srv.proc.poll() is None
    finally:
        srv.stop()
