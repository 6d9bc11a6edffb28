"""Where a training step's time goes, and which parts use the second core: the product path profiled at
1 and at N threads.

    .venv/bin/python benchmarks/train_profile.py [--config examples/banking77/config.yaml] [--steps 8]
        [--warmup 3] [--threads 1,2] [--json out.json]

Each thread count runs in its own process: `tunelab.train.stage.run` on the config (the demo's by
default; `precision: auto`, the shipped batching) for `--warmup + --steps` optimizer steps, with
`torch.profiler` over the last `--steps`. An op's self time is measured on the thread that dispatched it
(the main thread), so it includes waiting for the other OpenMP threads of its parallel regions: an op
group whose time does not fall with more threads runs on one core. Time outside every op (the step's wall
time minus the ops' self time) is Python: the Trainer, autograd's bookkeeping, the collator — one core by
construction. The table prints each group's milliseconds per step at each thread count and the speed-up;
`serial_share` is the part of the step at N threads that did not get faster, i.e. when the other
cores idle.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import _product  # noqa: E402
from _common import load_avg, write_json  # noqa: E402

GROUPS = (   # first match wins; names as torch.profiler reports them
    ("matmul (linear, mm, bmm, addmm)", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear", "_mkldnn")),
    ("attention (sdpa)", ("scaled_dot_product", "_flash", "attention")),
    ("optimizer (AdamW)", ("adam", "_foreach", "optimizer")),
    ("reductions and norms", ("sum", "mean", "norm", "rsqrt", "pow", "var", "softmax", "log_softmax", "nll", "cross_entropy")),
    ("element-wise (mul, add, silu, copy, cast)", ("mul", "add", "silu", "sigmoid", "copy", "_to_copy", "div", "sub",
                                                   "neg", "cat", "where", "fill", "zero", "clamp", "exp", "cos", "sin")),
    ("memory and views", ("empty", "view", "reshape", "transpose", "permute", "expand", "slice", "select", "index",
                          "contiguous", "as_strided", "clone", "stack", "split", "unsqueeze", "squeeze", "t")),
)


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other ops"


class Profile(TrainerCallback):
    """Profile the optimizer steps after `warmup` (to the end of training) with torch.profiler."""

    def __init__(self, warmup: int):
        self.warmup, self.prof = warmup, profile(activities=[ProfilerActivity.CPU])
        self.start, self.wall, self.steps = 0.0, 0.0, 0

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup:
            self.prof.__enter__()
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if state.global_step > self.warmup:
            self.steps += 1
        if state.global_step == state.max_steps and self.start:
            self.wall = time.perf_counter() - self.start
            self.prof.__exit__(None, None, None)


def child(a) -> dict:
    from tunelab.train import stage as train_stage

    with tempfile.TemporaryDirectory() as runs_dir:
        cfg = _product.load(a.config, runs_dir, [f"train.max_steps={a.warmup + a.steps}", "train.eval_every=1000000",
                                                  "train.save_every=null", "train.patience=null",
                                                  "train.eval_examples=16", f"train.threads={a.threads}",
                                                  "name=bench-profile"])
        rd, tokenizer, prepared = _product.prepare(cfg)
        p = Profile(a.warmup)
        result = train_stage.run(cfg, rd, prepared, tokenizer, callbacks=[p])
    groups: dict[str, float] = {}
    for e in p.prof.key_averages():
        if e.self_cpu_time_total > 0:
            g = group_of(e.key)
            groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total / 1e3 / p.steps   # ms per step
    ops = sum(groups.values())
    step_ms = p.wall * 1e3 / p.steps
    groups["outside ops (Python: Trainer, autograd, collator)"] = max(step_ms - ops, 0.0)
    return {"threads": a.threads, "step_ms": step_ms, "groups": groups, "precision": result.stats["precision"],
            "steps": p.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=_product.DEMO_CONFIG)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}")
    ap.add_argument("--json")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        a.threads = int(a.side)
        return write_json(a.result, child(a))
    counts = [int(t) for t in a.threads.split(",")]
    print(f"load average before: {load_avg()}; {os.cpu_count()} CPUs, torch {torch.__version__}, config {a.config}")
    runs = {}
    for t in counts:
        runs[t] = _product.spawn(__file__, str(t), ["--config", str(a.config), "--steps", str(a.steps),
                                                    "--warmup", str(a.warmup)])
        print(f"  threads {t}: {runs[t]['step_ms']:.0f} ms per step ({runs[t]['precision']}), load {load_avg()}", flush=True)
    lo, hi = runs[counts[0]], runs[counts[-1]]
    names = sorted(hi["groups"], key=lambda g: -hi["groups"][g])
    print(f"\n| part of the step | ms/step at {counts[0]} thread(s) | ms/step at {counts[-1]} | speed-up |")
    print("|---|---|---|---|")
    serial = 0.0
    for g in names:
        a1, a2 = lo["groups"].get(g, 0.0), hi["groups"][g]
        speedup = a1 / a2 if a2 else float("nan")
        if speedup < 1.25:
            serial += a2
        print(f"| {g} | {a1:.0f} | {a2:.0f} | {speedup:.2f}x |")
    print(f"| whole step | {lo['step_ms']:.0f} | {hi['step_ms']:.0f} | {lo['step_ms'] / hi['step_ms']:.2f}x |")
    share = serial / hi["step_ms"]
    print(f"\nparts that gained < 1.25x from {counts[-1]} threads: {serial:.0f} of {hi['step_ms']:.0f} ms per step "
          f"({share:.0%}): while they run, the other core(s) idle")
    write_json(a.json, {**_product.cpu_flags(), "config": str(a.config), "runs": {str(k): v for k, v in runs.items()},
                        "serial_ms_per_step": serial, "serial_share": share, "loadavg": load_avg()})


if __name__ == "__main__":
    main()
