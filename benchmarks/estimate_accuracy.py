"""How close `tunelab estimate` comes to what `tunelab train` then measures: peak RSS and wall time.

For each case (an example config, shortened by dotted overrides so it takes minutes), two processes run
one after the other on the same prepared data: `tunelab estimate CONFIG --json` (which measures a few
calibration steps), then `tunelab train CONFIG --no-estimate` under `/usr/bin/time -v`, whose "Maximum
resident set size" and "Elapsed (wall clock) time" are the measured figures. Printed: predicted,
measured and their ratio, with the load average around each run (the machine may be shared).

    .venv/bin/python benchmarks/estimate_accuracy.py --cases demo,minilm_full,dora --json build/estimate.json

The goal (issue 15): peak RSS within +-25% and wall time within +-30%.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, load_avg, write_json

TUNELAB = [sys.executable, "-m", "tunelab"]
CASES = {
    # The demo (LoRA on SmolLM2-135M), 8 examples per intent, 30 steps with 3 validations.
    "demo": ("examples/banking77/config.yaml",
             ["data.train_limit=616", "train.max_steps=30", "train.eval_every=10"]),
    # Every weight of MiniLM-L6 and a new head: 20 examples per intent, 2 epochs (97 steps).
    "minilm_full": ("examples/banking77/minilm_full.yaml", ["data.train_limit=1540", "train.epochs=2"]),
    # DoRA on SmolLM2-135M: 5 examples per intent, 20 steps with 2 validations.
    "dora": ("examples/banking77/dora.yaml",
             ["data.train_limit=385", "train.max_steps=20", "train.eval_every=10"]),
}


def _time_v(stderr: str) -> tuple[float, float]:
    """(peak RSS in bytes, wall seconds) from GNU time's -v report."""
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", stderr)
    h, m, s = wall.groups()
    return float(rss), int(h or 0) * 3600 + int(m) * 60 + float(s)


def run_case(name: str, runs_dir: Path, steps: int) -> dict:
    config, overrides = CASES[name]
    overrides = [*overrides, f"runs_dir={runs_dir}", f"name={name}"]
    est_path = runs_dir / f"{name}.estimate.json"
    load_before = load_avg()
    t0 = time.time()
    subprocess.run([*TUNELAB, "estimate", str(ROOT / config), *overrides, "--steps", str(steps),
                    "--json", str(est_path)], check=True)
    estimate_wall = time.time() - t0
    est = json.loads(est_path.read_text())
    load_between = load_avg()
    out = subprocess.run(["/usr/bin/time", "-v", *TUNELAB, "train", str(ROOT / config), *overrides,
                          "--no-estimate", "--overwrite"], stderr=subprocess.PIPE, text=True)
    sys.stderr.write(out.stderr[-3000:])
    if out.returncode != 0:
        raise SystemExit(f"{name}: tunelab train failed ({out.returncode})")
    rss, wall = _time_v(out.stderr)
    metrics = json.loads((runs_dir / name / "metrics.json").read_text())["train"]
    return {"case": name, "config": config, "overrides": overrides,
            "rss_predicted": est["memory"]["total"], "rss_measured": rss, "rss_ratio": est["memory"]["total"] / rss,
            "wall_predicted": est["seconds"]["total"], "wall_measured": wall,
            "wall_ratio": est["seconds"]["total"] / wall,
            "loop_predicted": est["seconds"]["loop"], "trainer_seconds": metrics["wall_seconds"],
            "steps_predicted": est["plan"]["steps"], "steps": metrics["steps"], "estimate_seconds": estimate_wall,
            "load_before_estimate": load_before, "load_before_train": load_between, "load_after": load_avg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=4, help="calibration steps of the estimate")
    ap.add_argument("--runs-dir", default=None, help="where the runs go (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="tunelab-estimate-accuracy-"))
    rows = [run_case(name, runs_dir, args.steps) for name in args.cases.split(",")]
    print("\n| case | peak RSS est. | measured | ratio | wall est. | measured | ratio | steps | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['rss_predicted'] / 2**30:.2f} GB | {r['rss_measured'] / 2**30:.2f} GB | "
              f"{r['rss_ratio']:.2f} | {r['wall_predicted']:.0f} s | {r['wall_measured']:.0f} s | {r['wall_ratio']:.2f} | "
              f"{r['steps']} | {r['load_before_estimate'].split()[0]} / {r['load_before_train'].split()[0]} / "
              f"{r['load_after'].split()[0]} |")
    write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
