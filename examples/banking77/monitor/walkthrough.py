"""Monitor a served Banking77 model while its traffic drifts to intents it never saw, then retrain and promote.

    .venv/bin/python examples/banking77/monitor/walkthrough.py [--work runs/banking77-monitor]

Everything goes through the `tunelab` command line and a real `tunelab serve` on 127.0.0.1, on the
embedded all-MiniLM-L6-v2 (the served classifier and the drift encoder):

1. data: 14 intents (of those with at least 120 training queries) are drawn with seed 0; 10 are "seen",
   4 are never trained on. The champion trains on 30 training queries per seen intent and is tested on
   test.csv's seen intents; the remaining training queries of the 14 intents are production traffic
   (small enough to run in a few minutes on 2 CPU cores);
2. `tunelab run` trains the champion (MiniLM frozen, a classification head);
3. `tunelab serve --log-prompts --monitor` serves it; 900 requests arrive: the first 200 from seen
   intents only, then the share of unseen intents rises linearly to 50% at the last request;
4. `tunelab monitor --feedback` (every 4th request labelled by a person, simulated with the true label)
   flags the drift and the quality decline and recommends retraining, with the inputs to label;
5. `tunelab retrain --data` on the labelled feedback and candidates: the challenger is compared with the
   champion on both test sets and promoted; the running server switches to it;
6. accuracy of the served answers on 200 fresh queries at the final traffic mix, before and after;
7. a screenshot of monitor/report.html from headless Chromium.

The figures land in WORK/results.json and are printed; docs/monitoring.md quotes a run of this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tunelab.core.rundir import RunDir

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
INTENTS, UNSEEN, MIN_QUERIES, PER_INTENT, SEED = 14, 4, 120, 30, 0
WARMUP, REQUESTS, FINAL_SHARE, EVAL = 200, 900, 0.5, 200
CHAMPION = {
    "name": "bank-seen", "task": "classification",
    "data": {"train": "data/train_seen.csv", "test": "data/test_seen.csv", "input_columns": ["text"],
             "output_column": "category", "leakage": "drop", "max_length": 64},
    "model": {"name": "minilm-l6"}, "method": {"name": "freeze", "trainable_layers": 0},
    "train": {"lr": 5.0e-3, "epochs": 8, "batch_size": 32, "eval_every": 25, "patience": 3, "precision": "fp32"},
    "eval": {"baselines": [], "batch_size": 64},
    "monitor": {"window": 200, "step": 100},
}


def tunelab(*args: str, work: Path) -> str:
    """Run a tunelab command in `work`, echo it, and return its stdout."""
    print("$ tunelab " + " ".join(args), flush=True)
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", *args], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "TUNELAB_PROGRESS": "0"})
    if out.returncode:
        raise SystemExit(f"tunelab {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def read(name: str) -> list[tuple[str, str]]:
    with (DATA / name).open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def write(path: Path, rows: list, extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"] + list(extra or {}))
        w.writerows([list(r) + [v[i] for v in (extra or {}).values()] for i, r in enumerate(rows)])
    return path


def make_data(work: Path) -> tuple[list, list, set]:
    """Champion data on disk; returns the traffic stream, the evaluation queries and the unseen intents."""
    rng = random.Random(SEED)
    train, test = read("train.csv"), read("test.csv")
    by_intent: dict[str, list[str]] = {}
    for t, l in train:
        by_intent.setdefault(l, []).append(t)
    intents = sorted(rng.sample(sorted(l for l, ts in by_intent.items() if len(ts) >= MIN_QUERIES), INTENTS))
    unseen = set(rng.sample(intents, UNSEEN))
    champion = [(t, l) for l in intents if l not in unseen for t in by_intent[l][:PER_INTENT]]
    write(work / "data" / "train_seen.csv", champion)
    write(work / "data" / "test_seen.csv", [(t, l) for t, l in test if l in intents and l not in unseen])
    seen_pool = [(t, l) for l in intents if l not in unseen for t in by_intent[l][PER_INTENT:]]
    unseen_pool = [(t, l) for l in sorted(unseen) for t in by_intent[l]]
    rng.shuffle(seen_pool)
    rng.shuffle(unseen_pool)
    stream = []
    for i in range(REQUESTS + EVAL):
        share = 0.0 if i < WARMUP else FINAL_SHARE * min(1.0, (i - WARMUP) / (REQUESTS - WARMUP))
        stream.append((unseen_pool if rng.random() < share else seen_pool).pop())
    return stream[:REQUESTS], stream[REQUESTS:], unseen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def classify(client: httpx.Client, model: str, texts: list[str]) -> list[str]:
    out = []
    for t in texts:
        r = client.post("/v1/classifications", json={"model": model, "input": [t]})
        r.raise_for_status()
        out.append(r.json()["data"][0]["label"])
    return out


def accuracy(answers: list[str], rows: list) -> float:
    return sum(a == l for a, (_, l) in zip(answers, rows)) / len(rows)


def screenshot(html: Path, png: Path) -> Path | None:
    """A full-height PNG of `html` from headless Chromium (Debian's `chromium`), or None without one."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: no screenshot (apt-get install -y chromium)")
        return None
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1200,3400", html.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    return png


def serve(work: Path, run: Path) -> tuple[subprocess.Popen, httpx.Client]:
    key = tunelab("keys", "create", "walkthrough", "--keys-file", "keys.json", work=work).strip()
    port = free_port()
    args = ["serve", str(run), "--log-prompts", "--monitor", "--keys-file", "keys.json", "--port", str(port),
            "-o", "request_log=requests.jsonl"]
    print("$ tunelab " + " ".join(args), flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", *args], cwd=work,
                            stdout=(work / "server.log").open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "TUNELAB_PROGRESS": "0"})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=120)
    for _ in range(600):
        try:
            if client.get("/health").status_code == 200:
                return proc, client
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit((work / "server.log").read_text())
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/banking77-monitor"))
    work = ap.parse_args().work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    stream, evaluation, unseen = make_data(work)
    (work / "champion.yaml").write_text(yaml.safe_dump(CHAMPION, sort_keys=False))
    run = work / "runs" / CHAMPION["name"]
    if RunDir(run).state() != "complete":
        tunelab("run", "champion.yaml", "--overwrite", work=work)
    fresh_start(work, run)
    proc, client = serve(work, run)
    try:
        results = loop(work, run, client, stream, evaluation, unseen)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def fresh_start(work: Path, run: Path) -> None:
    """A second run of the script reuses the trained champion but not the traffic, monitoring or retraining
    of the first one (the server would append to the old request log and serve a promoted challenger)."""
    rd = RunDir(run)
    for path in [*work.glob("requests.jsonl*"), rd.promoted_path, rd.retrain_recommendation]:
        path.unlink(missing_ok=True)
    for path in [rd.monitor_dir, *(work / "runs").glob(f"{run.name}-retrain-*")]:
        shutil.rmtree(path, ignore_errors=True)


def loop(work: Path, run: Path, client: httpx.Client, stream: list, evaluation: list, unseen: set) -> dict:
    """Traffic, monitoring, labelling, retraining and the accuracy before and after; returns the figures."""
    model = CHAMPION["name"]
    start = time.time()
    classify(client, model, [t for t, _ in stream])
    figures = {"requests": len(stream), "shift_starts_after": WARMUP, "unseen_intents": len(unseen),
               "final_unseen_share": FINAL_SHARE, "served_seconds": round(time.time() - start, 1)}
    figures["accuracy_at_final_mix_before"] = round(accuracy(classify(client, model, [t for t, _ in evaluation]),
                                                             evaluation), 4)
    figures["live_gauge"] = [l for l in client.get("/metrics").text.splitlines() if l.startswith("tunelab_monitor_drift")]
    truth, labelled = label(work, stream, evaluation)
    figures.update(monitor(work, run))
    relabel(work, run, truth, labelled, stream)
    tunelab("retrain", str(run), "--data", "labelled.csv", work=work)
    challenger = json.loads(RunDir(work / "runs" / f"{model}-retrain-1").retrain_json.read_text())
    figures["retrain"] = challenger["decision"]
    figures["comparison"] = {part: {who: challenger["comparison"][part].get(who, {}).get("accuracy")
                                    for who in ("champion", "challenger")} | {"n": challenger["comparison"][part]["n"]}
                             for part in ("old_test", "new_holdout")}
    figures["accuracy_at_final_mix_after"] = None
    if challenger["decision"]["promoted"]:
        for _ in range(240):   # the server polls promoted.json about once a second, then loads the challenger
            if client.get(f"/v1/models/{model}").json().get("root") == f"{model}-retrain-1":
                break
            time.sleep(0.5)
        after = accuracy(classify(client, model, [t for t, _ in evaluation]), evaluation)
        figures["accuracy_at_final_mix_after"] = round(after, 4)
    return figures


def label(work: Path, stream: list, evaluation: list) -> tuple[dict, list]:
    """A person labels every 4th logged request of the traffic stream (simulated with the true intent),
    keeping its request id; returns the true intent of every logged request and the labelled ones."""
    log = [json.loads(l) for l in (work / "requests.jsonl").read_text().splitlines()]
    mine = [r for r in log if r["route"] == "/v1/classifications"]
    truth = {r["request_id"]: l for r, (_, l) in zip(mine, stream + evaluation)}
    labelled = mine[: len(stream)][::4]
    write(work / "feedback.csv", [(r["input"], truth[r["request_id"]]) for r in labelled],
          {"request_id": [r["request_id"] for r in labelled]})
    return truth, labelled


def monitor(work: Path, run: Path) -> dict:
    """`tunelab monitor` with the feedback; the detection figures and the report's screenshot."""
    tunelab("monitor", str(run), "--requests", "requests.jsonl", "--feedback", "feedback.csv", work=work)
    rd = RunDir(run)
    status, rec = json.loads(rd.monitor_status.read_text()), json.loads(rd.retrain_recommendation.read_text())
    detected, quality = status["drift_detected"], status["quality"] or {}
    seen = detected and detected["requests_seen"]
    shot = screenshot(rd.monitor_report, work / "monitor_report.png")
    return {"drift_detected_after_requests": seen, "requests_after_shift_start": seen and seen - WARMUP,
            "unseen_share_at_detection": seen and round(FINAL_SHARE * (seen - WARMUP) / (REQUESTS - WARMUP), 3),
            "recommendation_reasons": rec["reasons"], "quality_decline_detected": quality.get("decline_detected"),
            "feedback_accuracy_first_last_window": [quality["series"][0]["value"], quality["series"][-1]["value"]]
            if quality.get("series") else None,
            "test_accuracy_champion": _test_accuracy(run),
            "screenshot": str(shot) if shot else None}


def _test_accuracy(run: Path) -> float | None:
    test = RunDir(run).metrics()["test"]
    return (test.get("finetuned_full_test") or test.get("finetuned") or {}).get("accuracy")


def relabel(work: Path, run: Path, truth: dict, labelled: list, stream: list) -> None:
    """New training data: the labelled feedback plus the drifted inputs the monitor asked to label, from the
    traffic stream only (the evaluation queries, also logged, stay unseen by the challenger)."""
    candidates = [json.loads(l) for l in RunDir(run).monitor_candidates.read_text().splitlines()]
    todo = set(list(truth)[: len(stream)]) - {r["request_id"] for r in labelled}   # truth: in request order
    rows = [(r["input"], r["request_id"]) for r in labelled] + [(c["input"], c["request_id"]) for c in candidates
                                                                 if c["request_id"] in todo]
    write(work / "labelled.csv", [(t, truth[rid]) for t, rid in rows], {"request_id": [rid for _, rid in rows]})


if __name__ == "__main__":
    main()
