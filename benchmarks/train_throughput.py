"""Training throughput of `tunelab run` on this machine vs TRL `SFTTrainer` + PEFT LoRA, same data.

    .venv/bin/python benchmarks/train_throughput.py [--config examples/banking77/config.yaml]
        [--steps 6] [--warmup 2] [--repeats 1] [--json out.json]

The tunelab side is the product path: the config file (default: the demo's) is loaded as `tunelab run`
loads it, with only run-length overrides (`train.max_steps` = warm-up + timed steps, no validation or
checkpoint inside the timed steps, a temporary runs_dir), its data prepared by the prepare stage, and
trained by `tunelab.train.stage.run` -- so the precision (`precision: auto`), batching, threads, task,
method and recipe are whatever `tunelab run` chooses for that config on this machine; the JSON records
them (`precision`, `batching`, `threads`) with the CPU flags.

The peer is TRL 1.16 `SFTTrainer` + PEFT LoRA (r, alpha, dropout and target modules of the config's
method, or r=16 alpha=32 all-linear when the config's method is not LoRA) on the same base model and the
same training records, each rendered by tunelab's chat-template renderer as prompt + label (completion-
only loss), same batch size, learning rate and threads, no gradient checkpointing. "Its best flags on
this machine": it runs once with `bf16=True` and once in fp32 (`--peer-precisions`) and keeps the faster.

Each side trains in its own subprocess (honest peak RSS). Only the steps after `--warmup` are timed,
from the end of the last warm-up step to the end of the last step (data loading, forward, backward,
optimizer and Trainer overhead included). Tokens are the non-padding tokens of the batches each side's
collator built. `tunelab_logged_tokens_per_s` is what the run itself records (metrics.json
`train.tokens_per_second`, the figure the demo log prints: every step, warm-up and validation included).

MFU: the FLOPs one warm-up step of the product executes are counted by `torch.utils.flop_counter`
(`_flops.step_flops`: matmuls, attention, forward and backward, whatever the recipe runs), scaled per
computed non-padding token to the timed steps, over the measured bf16 GEMM peak of this machine
(`mfu`); `mfu_vs_best_peak` uses the larger of the bf16 and fp32 peaks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import _product  # noqa: E402
from _common import gemm_peak_gflops, load_avg, peak_rss_gb, write_json  # noqa: E402
from _flops import StepFlops, batch_counts  # noqa: E402

PEER_LORA = dict(r=16, alpha=32.0, dropout=0.0, target_modules="all-linear")


# ---------------------------------------------------------------- measuring a run


class Probe(TrainerCallback):
    """Timestamps every optimizer step, counts every batch the collator builds (in order, through
    `counting`), and counts the FLOPs of the last warm-up step."""

    def __init__(self, warmup: int, count):
        self.ends: list[float] = []
        self.batches: list[dict] = []
        self.count = count
        self.flops = StepFlops(step=warmup - 1)

    def counting(self, collate):
        """`collate` that also records each batch's counts."""
        def wrapped(examples):
            batch = collate(examples)
            self.batches.append(self.count(batch))
            return batch
        return wrapped

    def on_step_begin(self, args, state, control, **kwargs):
        self.flops.begin(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.flops.end()


def rates(probe: Probe, warmup: int, accum: int) -> dict:
    """Figures over the timed steps (those after `warmup`)."""
    steps = len(probe.ends)
    if steps <= warmup:
        raise SystemExit(f"only {steps} steps ran (early stop?): nothing to time after {warmup} warm-up steps")
    if len(probe.batches) < steps * accum:
        raise SystemExit(f"the collator was seen building {len(probe.batches)} batches for {steps} steps: "
                         "the trainer no longer collates through the collator the benchmark wraps")
    timed = probe.ends[-1] - probe.ends[warmup - 1]
    window = probe.batches[warmup * accum: steps * accum]
    tokens, computed = sum(b["tokens"] for b in window), sum(b["computed"] for b in window)
    out = {"tokens_per_s": tokens / timed, "supervised_per_s": sum(b["supervised"] for b in window) / timed,
           "timed_s": timed, "timed_steps": steps - warmup, "step_s": timed / (steps - warmup),
           "tokens_timed": tokens, "peak_rss_gb": peak_rss_gb(), "loadavg_end": load_avg()}
    if probe.flops.flops:
        per_token = probe.flops.per_computed_token(probe.batches, accum)
        out.update(executed_gflops_per_s=per_token * computed / timed / 1e9, flops_per_computed_token=per_token)
    return out


# ---------------------------------------------------------------- the two sides


def length_overrides(a) -> list[str]:
    """Run-length settings only: the steps to run, nothing but training inside them, and a small validation
    at the end (the Trainer validates after the last step; it is outside the timed steps)."""
    return [f"train.max_steps={a.warmup + a.steps}", "train.eval_every=1000000", "train.save_every=null",
            "train.patience=null", "train.eval_examples=16", f"name=bench-train-{os.getpid()}"]


def run_tunelab(a, runs_dir: str) -> dict:
    """`tunelab.train.stage.run` on the config (the product path), with the probe as an extra callback."""
    from tunelab.tasks import TASKS
    from tunelab.train import stage as train_stage

    cfg = _product.load(a.config, runs_dir, length_overrides(a))
    rd, tokenizer, prepared = _product.prepare(cfg)
    task = TASKS[cfg.task]
    probe = Probe(a.warmup, lambda b: batch_counts(b, task.objective.counts(b)))
    # The product builds its collator from the task (train/stage.py build_trainer): count what it builds.
    TASKS[cfg.task] = dataclasses.replace(task, collator=lambda tok, batching: probe.counting(task.collator(tok, batching)))
    # ... or, with method.freeze_below, the collator of the cached lower layers' batches (cache_lower_layers).
    cached = train_stage.cached_collator
    train_stage.cached_collator = lambda pad: probe.counting(cached(pad))
    start = time.perf_counter()
    result = train_stage.run(cfg, rd, prepared, tokenizer, callbacks=[probe])
    out = rates(probe, a.warmup, cfg.train.grad_accum)
    stats = result.stats
    out.update(stage_wall_s=time.perf_counter() - start, logged_tokens_per_s=stats["tokens_per_second"],
               **_product.chosen_settings(cfg, stats["precision"]), torch_threads=torch.get_num_threads())
    return out


def peer_examples(cfg, runs_dir: str) -> tuple[list[dict], object]:
    """The config's training records rendered by tunelab's chat-template renderer as prompt + label."""
    from tunelab.tasks import TASKS
    from tunelab.train.render import Renderer

    _, tokenizer, prepared = _product.prepare(cfg)
    sft = cfg.model_copy(update={"task": "sft"})
    examples, _ = TASKS["sft"].encode(Renderer(tokenizer, sft), prepared.splits["train"], "train", prepared.labels)
    return examples, tokenizer


def run_peer(a, runs_dir: str) -> dict:
    """TRL SFTTrainer + PEFT LoRA, completion-only loss, no gradient checkpointing, bf16 or fp32."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunelab.models import local_folder
    from tunelab.train.stage import threads

    cfg = _product.load(a.config, runs_dir, length_overrides(a))
    torch.set_num_threads(threads(cfg))
    examples, tokenizer = peer_examples(cfg, runs_dir)
    m = cfg.method
    lora = dict(r=m.r, alpha=m.alpha, dropout=m.dropout, target_modules=m.target_modules) \
        if m.name in ("lora", "rslora", "dora") else PEER_LORA
    probe = Probe(a.warmup, lambda b: batch_counts(b, None))

    model = AutoModelForCausalLM.from_pretrained(local_folder(cfg.model), dtype=torch.float32)
    data = Dataset.from_list([{"input_ids": e["input_ids"],
                               "completion_mask": [int(t != -100) for t in e["labels"]]} for e in examples])
    peft = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, per_device_train_batch_size=cfg.train.batch_size,
                         gradient_accumulation_steps=cfg.train.grad_accum, max_steps=a.warmup + a.steps,
                         learning_rate=cfg.train.lr, lr_scheduler_type="constant", logging_steps=10_000,
                         save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                         dataloader_num_workers=0, disable_tqdm=True, bf16=a.side == "peer-bf16",
                         gradient_checkpointing=False, completion_only_loss=True,
                         max_length=cfg.data.max_length + 16, packing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              peft_config=peft, callbacks=[probe])
        trainer.data_collator = probe.counting(trainer.data_collator)   # read when train() builds its loader
        trainer.train()
    out = rates(probe, a.warmup, cfg.train.grad_accum)
    out.update(precision="bf16" if a.side == "peer-bf16" else "fp32", torch_threads=torch.get_num_threads())
    return out


def child(a) -> None:
    with tempfile.TemporaryDirectory() as runs_dir:
        result = run_tunelab(a, runs_dir) if a.side == "tunelab" else run_peer(a, runs_dir)
    write_json(a.result, result)


# ---------------------------------------------------------------- orchestration and report


def spawn(a, side: str) -> dict:
    res = _product.spawn(__file__, side, ["--config", str(a.config), "--steps", str(a.steps), "--warmup", str(a.warmup)])
    print(f"  {side:9s} {res['tokens_per_s']:7.1f} tok/s  {res['supervised_per_s']:6.1f} sup/s  step "
          f"{res['step_s']:.2f}s  rss {res['peak_rss_gb']:.2f} GB  load {res['loadavg_start']} -> {res['loadavg_end']}",
          flush=True)
    return res


def report(a, runs: dict, peaks: dict) -> dict:
    """Print each side's best run, the ratio and the product's MFU; return the flat JSON object."""
    best = {side: max(rs, key=lambda r: r["tokens_per_s"]) for side, rs in runs.items() if rs}
    tl = best["tunelab"]
    flat = {**peaks, **_product.cpu_flags(), "config": str(a.config), "steps": a.steps, "warmup": a.warmup,
            "loadavg": load_avg(),
            **{k: tl[k] for k in ("precision", "batching", "threads", "task", "method", "batch_size")},
            "tunelab_tokens_per_s": tl["tokens_per_s"], "tunelab_supervised_per_s": tl["supervised_per_s"],
            "tunelab_step_s": tl["step_s"], "tunelab_peak_rss_gb": tl["peak_rss_gb"],
            "tunelab_logged_tokens_per_s": tl["logged_tokens_per_s"], "tunelab_stage_wall_s": tl["stage_wall_s"]}
    print(f"\nGEMM peak: bf16 {peaks['bf16_gflops']:.0f} GFLOP/s ({peaks['bf16_shape']}), fp32 "
          f"{peaks['fp32_gflops']:.0f} GFLOP/s ({peaks['fp32_shape']}); CPU {flat['cpu_model']}, AMX {flat['amx']}")
    print(f"product chose: precision {tl['precision']!r}, batching {tl['batching']}, threads {tl['threads']} "
          f"(task {tl['task']}, method {tl['method']}, batch {tl['batch_size']})")
    print(f"tunelab : {tl['tokens_per_s']:7.1f} tokens/s, {tl['supervised_per_s']:6.1f} supervised/s, step "
          f"{tl['step_s']:.2f}s, peak RSS {tl['peak_rss_gb']:.2f} GB; the run logged {tl['logged_tokens_per_s']:.1f} "
          f"tokens/s (whole stage incl. warm-up)")
    if "executed_gflops_per_s" in tl:
        flat.update(tunelab_executed_gflops_per_s=tl["executed_gflops_per_s"],
                    mfu=tl["executed_gflops_per_s"] / peaks["bf16_gflops"],
                    mfu_vs_best_peak=tl["executed_gflops_per_s"] / max(peaks["bf16_gflops"], peaks["fp32_gflops"]))
        print(f"tunelab MFU: {flat['mfu']:.1%} of the bf16 GEMM peak ({tl['executed_gflops_per_s']:.0f} GFLOP/s "
              f"executed; {flat['mfu_vs_best_peak']:.1%} of the best measured peak)")
    peers = {s: r for s, r in best.items() if s.startswith("peer")}
    for side, r in peers.items():
        flat.update({f"{side.replace('-', '_')}_tokens_per_s": r["tokens_per_s"],
                     f"{side.replace('-', '_')}_peak_rss_gb": r["peak_rss_gb"]})
    if peers:
        side, peer = max(peers.items(), key=lambda kv: kv[1]["tokens_per_s"])
        flat.update(peer_best=side, peer_tokens_per_s=peer["tokens_per_s"], peer_peak_rss_gb=peer["peak_rss_gb"],
                    train_ratio=tl["tokens_per_s"] / peer["tokens_per_s"],
                    supervised_ratio=tl["supervised_per_s"] / peer["supervised_per_s"])
        print(f"peer    : {peer['tokens_per_s']:7.1f} tokens/s ({side}), peak RSS {peer['peak_rss_gb']:.2f} GB")
        print(f"ratio tunelab/TRL: {flat['train_ratio']:.2f}x tokens/s (goal >= 4x), "
              f"{flat['supervised_ratio']:.2f}x supervised tokens/s")
    return flat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=_product.DEMO_CONFIG, help="the config `tunelab run` would get")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1; the last one counts FLOPs)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per side; each side keeps its best")
    ap.add_argument("--peer-precisions", default="bf16,fp32", help="TRL runs: bf16 and/or fp32 (the faster is kept)")
    ap.add_argument("--only", choices=["tunelab", "peer"], help="run one side only")
    ap.add_argument("--json", help="write the figures to this file as one flat JSON object")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.warmup < 1:
        ap.error("--warmup must be >= 1: the last warm-up step is the one whose FLOPs are counted")
    if a.side:
        return child(a)
    bf, bf_shape = gemm_peak_gflops(torch.bfloat16)
    fp, fp_shape = gemm_peak_gflops(torch.float32)
    peaks = {"bf16_gflops": bf, "bf16_shape": bf_shape, "fp32_gflops": fp, "fp32_shape": fp_shape,
             "gemm_threads": torch.get_num_threads()}
    print(f"load average before: {load_avg()}; {os.cpu_count()} CPUs, torch {torch.__version__}, config {a.config}",
          flush=True)
    sides = [] if a.only == "peer" else ["tunelab"]
    if a.only != "tunelab":
        sides += [f"peer-{p.strip()}" for p in a.peer_precisions.split(",") if p.strip()]
    runs: dict[str, list] = {s: [] for s in sides}
    for _ in range(a.repeats):
        for side in sides:
            runs[side].append(spawn(a, side))
    if "tunelab" in runs:
        write_json(a.json, report(a, runs, peaks))


if __name__ == "__main__":
    main()
