"""tunelab serve vs `transformers serve` on the same merged model, same queries, same max_tokens.

The model: a Banking77 LoRA run of the embedded SmolLM2-135M-Instruct (a short training: the speed of
serving does not depend on how well it was trained), merged by `tunelab export`. Both servers load that
export folder and run at once on this machine, each a real subprocess on a loopback port; at each
concurrency level one is driven, then the other (so both see the machine's load of that minute; at
concurrency 1 they take turns query by query), by the same closed-loop clients (a thread per concurrent
client) with the Banking77 test queries. Both see the same prompt: the run's template filled with the
query, as the user turn of the model's chat template. tunelab answers as the run was evaluated (one
label, decoded under the label trie, so it may stop before max_tokens); the peer generates freely up to
max_tokens: each side's mean completion tokens are reported beside the ratios.

    python benchmarks/serve_throughput.py --requests 64 --max-tokens 16 --json serve.json
    python benchmarks/serve_throughput.py --from runs/banking77-lora     # serve an existing run or export
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load_avg, write_json  # noqa: E402

CONFIG = ROOT / "examples" / "banking77" / "config.yaml"
TEST = ROOT / "examples" / "banking77" / "test.csv"


def build_export(work: Path, source: Path | None, steps: int) -> Path:
    """The merged export both servers load: `source` when it is an export folder, its export when it is a
    complete run folder, else a tiny Banking77 run of `steps` steps (the speed of serving does not depend
    on how well the model was trained) exported into `work`. An export already in `work` is reused."""
    from tunelab.core.rundir import RunDir
    from tunelab.export import stage as export
    from tunelab.export.bundle import is_export

    if source is not None and is_export(source):
        return source
    out = work / "export"
    if (out / "model.safetensors").is_file():
        return out
    if source is None:
        import tunelab

        overrides = [f"runs_dir={work / 'runs'}", "name=serve-bench", "data.train_limit=308",
                     f"train.max_steps={steps}", "train.batch_size=4", "train.threads=1", "train.eval_examples=8",
                     "eval.baselines=[]", "eval.max_test=16", "eval.forgetting=false"]
        source = tunelab.run(CONFIG, overrides, overwrite=True).path
    rd = RunDir.open(source)
    return export.run(rd.config(), rd, out)


def queries(n: int, template: str) -> list[tuple[str, str]]:
    """(raw query, the run's user text) for the first `n` Banking77 test queries."""
    with TEST.open(newline="", encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f)][:n]
    return [(q, template.format(text=q)) for q in rows]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Side:
    """One server under test: how to start it and what to send it."""

    def __init__(self, name: str, cmd: list[str], port: int, model: str, templated: bool, headers: dict | None = None):
        self.name, self.cmd, self.port, self.model, self.templated = name, cmd, port, model, templated
        self.headers = headers or {}
        self.url = f"http://127.0.0.1:{port}"

    def start(self, log: Path, env: dict) -> subprocess.Popen:
        proc = subprocess.Popen(self.cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 600
        while time.time() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        proc.kill()
        raise SystemExit(f"{self.name} did not become healthy in 600 s")

    def body(self, query: tuple[str, str], max_tokens: int) -> dict:
        # tunelab renders the raw query with the run's template; the peer gets the rendered text itself.
        content = query[0] if self.templated else query[1]
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0}


def drive(side: Side, qs: list, concurrency: int, max_tokens: int) -> dict:
    """Closed loop: `concurrency` clients send the queries until all are answered; latencies and tokens."""
    latencies, tokens, errors = [], [], 0
    it = iter(qs)

    def client():
        nonlocal errors
        with httpx.Client(base_url=side.url, timeout=300, headers=side.headers) as c:
            for q in it:
                t = time.perf_counter()
                r = c.post("/v1/chat/completions", json=side.body(q, max_tokens))
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors += 1
                    continue
                tokens.append(r.json().get("usage", {}).get("completion_tokens", 0))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    return summary(latencies, tokens, errors, time.perf_counter() - start)


def lockstep(sides: list[Side], qs: list, max_tokens: int) -> dict[str, dict]:
    """Concurrency 1 with the sides taking turns query by query (who goes first alternating), so a burst
    of load from other processes falls on both alike; a side's wall time is the sum of its latencies."""
    seen = {s.name: ([], [], 0) for s in sides}
    clients = {s.name: httpx.Client(base_url=s.url, timeout=300, headers=s.headers) for s in sides}
    try:
        for i, q in enumerate(qs):
            for side in sides if i % 2 == 0 else sides[::-1]:
                latencies, tokens, errors = seen[side.name]
                t = time.perf_counter()
                r = clients[side.name].post("/v1/chat/completions", json=side.body(q, max_tokens))
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    seen[side.name] = (latencies, tokens, errors + 1)
                    continue
                tokens.append(r.json().get("usage", {}).get("completion_tokens", 0))
    finally:
        for c in clients.values():
            c.close()
    return {name: summary(lat, tok, err, sum(lat)) for name, (lat, tok, err) in seen.items()}


def summary(latencies: list[float], tokens: list[int], errors: int, wall: float) -> dict:
    lat = sorted(latencies)
    return {"rps": len(lat) / wall, "p50": statistics.median(lat), "p95": lat[int(0.95 * (len(lat) - 1))],
            "tokens": statistics.mean(tokens) if tokens else 0.0, "errors": errors}


def measure(sides: list[Side], qs: list, levels: list[int], max_tokens: int) -> dict[str, dict]:
    """Each concurrency level on each side in turn (at 1, query by query), the load average beside each."""
    results = {}
    for c in levels:
        before = load_avg()
        paired = lockstep(sides, qs, max_tokens) if c == 1 else {}
        for side in sides:
            before = before if c == 1 else load_avg()
            results[f"{side.name}_c{c}"] = r = paired.get(side.name) or drive(side, qs, c, max_tokens)
            print(f"{side.name:>12} c={c:<3} {r['rps']:7.2f} req/s  p50 {r['p50'] * 1000:7.0f} ms  "
                  f"p95 {r['p95'] * 1000:7.0f} ms  mean completion tokens {r['tokens']:.1f}  errors {r['errors']}  "
                  f"load {before} -> {load_avg()}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-serve")
    ap.add_argument("--from", dest="source", type=Path, default=None,
                    help="a complete run folder or an export folder to serve (default: train a tiny run)")
    ap.add_argument("--steps", type=int, default=2, help="training steps of the tiny run made without --from")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS of both servers (default: torch's, all cores)")
    ap.add_argument("--peer-arg", action="append", default=[],
                    help="extra `transformers serve` option, repeatable (e.g. --peer-arg=--continuous-batching)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    export = build_export(args.work, args.source, args.steps).resolve()

    from tunelab.export.bundle import read_export
    info = read_export(export)
    qs = queries(args.requests, info["config"]["data"]["template"])
    keys = args.work / "keys.json"
    key = subprocess.run([sys.executable, "-m", "tunelab.cli", "keys", "create", "bench", "--keys-file", str(keys)],
                         capture_output=True, text=True, check=True).stdout.strip()
    bin_dir = Path(sys.executable).parent
    peer_cmd = shutil.which("transformers", path=str(bin_dir)) or "transformers"
    # tunelab sets OMP_WAIT_POLICY=PASSIVE on import (spinning OpenMP threads on a shared CPU cost a
    # process several times its speed); the peer gets the same, so neither is slowed by the other's spin.
    env = {**os.environ, "TUNELAB_PROGRESS": "0", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    p1, p2 = free_port(), free_port()
    sides = [
        Side("tunelab", [sys.executable, "-m", "tunelab.cli", "serve", str(export), "--port", str(p1), "--keys-file",
                         str(keys)], p1, info["name"], templated=True, headers={"Authorization": f"Bearer {key}"}),
        Side("transformers", [peer_cmd, "serve", str(export), "--host", "127.0.0.1", "--port", str(p2),
                              "--device", "cpu", *args.peer_arg], p2, str(export), templated=False),
    ]
    procs = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop both servers on `kill` too
    try:
        for side in sides:   # both up at once, idle while the other is driven: each level sees the same load
            procs.append(side.start(args.work / f"{side.name}.log", env))
            drive(side, qs[:4], 1, args.max_tokens)   # warm-up: first-call allocations, lazy imports
        results = measure(sides, qs, levels, args.max_tokens)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
    flat = {"requests": args.requests, "max_tokens": args.max_tokens, "threads": args.threads or "all",
            "peer_args": " ".join(args.peer_arg), "loadavg_end": load_avg()}
    for c in levels:
        t, p = results[f"tunelab_c{c}"], results[f"transformers_c{c}"]
        flat[f"serve_ratio_c{c}"] = round(t["rps"] / p["rps"], 3)
        for name, r in (("tunelab", t), ("peer", p)):
            flat.update({f"{name}_rps_c{c}": round(r["rps"], 3), f"{name}_p50_ms_c{c}": round(r["p50"] * 1000, 1),
                         f"{name}_p95_ms_c{c}": round(r["p95"] * 1000, 1),
                         f"{name}_completion_tokens_c{c}": round(r["tokens"], 2), f"{name}_errors_c{c}": r["errors"]})
        print(f"c={c}: tunelab/peer requests/s = {flat[f'serve_ratio_c{c}']:.2f}x; p50 {t['p50'] * 1000:.0f} vs "
              f"{p['p50'] * 1000:.0f} ms")
    print(f"load average at the end: {flat['loadavg_end']}")
    write_json(args.json, flat)


if __name__ == "__main__":
    main()
