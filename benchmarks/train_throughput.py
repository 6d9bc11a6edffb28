"""Training throughput: tunelab vs TRL `SFTTrainer` + PEFT LoRA, same model, data, LoRA, batch and steps.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--warmup 2] [--batch-size 8] [--json out.json]

Each side trains in its own subprocess (so peak RSS is honest) on the embedded SmolLM2-135M-Instruct and
the same Banking77 examples (chat template; user = instruction + query, assistant = label; the label and
its `<|im_end|>` supervised), LoRA r=16, alpha=32, dropout 0 on all linear layers. Only the steps after
`--warmup` are timed, from the end of the last warm-up step to the end of the last step (data loading,
forward, backward, optimizer and Trainer overhead included). The peer runs TRL's best CPU flags: bf16,
no gradient checkpointing, completion-only loss. `--repeats N` interleaves N runs of each side and keeps
each side's best (other processes share this machine; the load average is printed with every run).

Model FLOPs per token (what the step must compute; wasted work such as padding is not credited):
  frozen linear weights N_lin: forward 2*N_lin + backward to the activations 2*N_lin (no weight grads)
  LoRA weights N_lora = sum r*(in+out): forward 2*N_lora + input grads 2*N_lora + weight grads 2*N_lora
  attention: 12 * layers * heads * head_dim * ctx, ctx = causal context of that token (fwd 4x, bwd 8x)
  LM head only at supervised tokens: 2*V*d forward + 2*V*d back to the hidden state (tied, frozen)
MFU = FLOPs/s / the best measured dense GEMM rate of this machine (bf16 and fp32 both measured: without
AMX, avx512_bf16 GEMMs are not faster than fp32 ones here, so the larger of the two is the peak). `mfu`
counts the FLOPs tunelab's batch layout executes (a prompt prefix shared by the batch is computed once,
so counted once; padding is never credited); `mfu_model_equivalent` counts every example separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments  # noqa: E402

from _common import banking77_examples, gemm_peak_gflops, load_avg, model_folder, peak_rss_gb, write_json  # noqa: E402
from _flops import executed_flops, layout_counts, model_flops  # noqa: E402

LORA = dict(r=16, alpha=32.0, dropout=0.0, target_modules="all-linear")


# ---------------------------------------------------------------- measuring a run


class StepClock(TrainerCallback):
    """Timestamps the end of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


class CountingCollator:
    """Wraps a collator and queues each batch's `layout_counts`; batches are consumed in order."""

    def __init__(self, inner):
        self.inner, self.queue = inner, deque()

    def __call__(self, examples):
        batch = self.inner(examples)
        self.queue.append(layout_counts(batch))
        return batch


def measure(trainer, clock: StepClock, counts, examples: list[dict], warmup: int, bs: int, r: int) -> dict:
    """Train, then rates over the timed steps (the ones after `warmup`)."""
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    steps = len(clock.ends)
    timed_counts = list(counts)[warmup:steps]  # filled during training, one entry per batch
    timed = clock.ends[-1] - clock.ends[warmup - 1] if warmup else clock.ends[-1] - t0
    tot = sum(c["tokens"] for c in timed_counts)
    sup = sum(c["supervised"] for c in timed_counts)
    cfg = trainer.model.get_base_model().config if hasattr(trainer.model, "get_base_model") else trainer.model.config
    model = model_flops(examples[warmup * bs : steps * bs], cfg, r)
    executed = executed_flops(timed_counts, cfg, r)
    return {"tokens_per_s": tot / timed, "supervised_per_s": sup / timed, "model_gflops_per_s": model / timed / 1e9,
            "executed_gflops_per_s": executed / timed / 1e9, "timed_s": timed, "timed_steps": steps - warmup,
            "wall_s": wall, "peak_rss_gb": peak_rss_gb(), "step_s": timed / (steps - warmup), "tokens_timed": tot,
            "loadavg_end": load_avg()}


# ---------------------------------------------------------------- the two sides


def common_args(a, out: str, **extra) -> dict:
    return dict(output_dir=out, per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1,
                max_steps=a.warmup + a.steps, learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0,
                logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                dataloader_num_workers=0, train_sampling_strategy="sequential", disable_tqdm=True, **extra)


def run_tunelab(a, examples: list[dict], tok, out: str) -> dict:
    """tunelab's own training pieces: `load_model`, `apply_method`, `make_collator`, `TunelabTrainer`."""
    from tunelab.train.collate import make_collator
    from tunelab.config import MethodConfig, ModelConfig
    from tunelab.methods import apply_method, param_groups
    from tunelab.models import load_model
    from tunelab.tasks import TASKS
    from tunelab.train.trainer import TunelabTrainer

    dtype = torch.bfloat16 if a.tl_precision == "bf16-weights" else torch.float32
    model = load_model(ModelConfig(), "sft", dtype=dtype)  # sdpa attention, transformers' default
    method = MethodConfig(name="lora", **LORA)
    model = apply_method(model, method, "sft")
    for p in model.parameters():  # LoRA weights and their AdamW state stay fp32 whatever the base dtype
        if p.requires_grad:
            p.data = p.data.float()
    collator = CountingCollator(make_collator(tok.pad_token_id, packing=a.tl_packing, share_prefix=a.tl_share_prefix))
    clock = StepClock()
    args = TrainingArguments(**common_args(a, out, bf16=a.tl_precision == "bf16-autocast",
                                           remove_unused_columns=False, max_grad_norm=1.0))
    opt = torch.optim.AdamW(param_groups(model, method, 2e-4, 0.0), lr=2e-4, fused=a.tl_fused_adam or None)
    trainer = TunelabTrainer(model=model, args=args, train_dataset=[{k: e[k] for k in ("input_ids", "labels")} for e in examples],
                             data_collator=collator, optimizers=(opt, None), callbacks=[clock],
                             objective=TASKS["sft"].objective)
    return measure(trainer, clock, collator.queue, examples, a.warmup, a.batch_size, LORA["r"])


def run_peer(a, examples: list[dict], tok, out: str) -> dict:
    """TRL SFTTrainer + PEFT LoRA with bf16, no gradient checkpointing, completion-only loss."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    counts: list = []

    class CountingSFT(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            counts.append(layout_counts(inputs))
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = AutoModelForCausalLM.from_pretrained(model_folder(), dtype=torch.float32)
    data = Dataset.from_list([{"input_ids": e["input_ids"],
                               "completion_mask": [0] * e["prompt_len"] + [1] * (len(e["input_ids"]) - e["prompt_len"])}
                              for e in examples])
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    args = SFTConfig(**common_args(a, out, bf16=True, gradient_checkpointing=False, completion_only_loss=True,
                                   max_length=a.max_length, packing=False))
    clock = StepClock()
    trainer = CountingSFT(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                          callbacks=[clock])
    return measure(trainer, clock, counts, examples, a.warmup, a.batch_size, LORA["r"])


def child(a) -> None:
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(model_folder())
    examples = banking77_examples(tok, (a.warmup + a.steps) * a.batch_size, seed=a.seed)
    examples = [e for e in examples if len(e["input_ids"]) <= a.max_length]
    with tempfile.TemporaryDirectory() as out:
        result = (run_tunelab if a.side == "tunelab" else run_peer)(a, examples, tok, out)
    write_json(a.result, result)


# ---------------------------------------------------------------- orchestration and report


def spawn(a, side: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    argv = [sys.executable, __file__, "--side", side, "--result", path] + a.passthrough
    start = load_avg()
    subprocess.run(argv, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    res = json.loads(Path(path).read_text())
    os.unlink(path)
    res["loadavg_start"] = start
    print(f"  {side:8s} {res['tokens_per_s']:7.1f} tok/s  {res['supervised_per_s']:6.1f} sup/s  "
          f"step {res['step_s']:.2f}s  rss {res['peak_rss_gb']:.2f} GB  load {start} -> {res['loadavg_end']}", flush=True)
    return res


def report(a, runs: dict, peaks: dict) -> dict:
    """Print each side's best run, the ratio and tunelab's MFU; return the flat JSON object."""
    best = {side: max(rs, key=lambda r: r["tokens_per_s"]) for side, rs in runs.items()}
    peak = max(peaks["bf16_gflops"], peaks["fp32_gflops"])
    print(f"\nGEMM peak: bf16 {peaks['bf16_gflops']:.0f} GFLOP/s ({peaks['bf16_shape']}), fp32 "
          f"{peaks['fp32_gflops']:.0f} GFLOP/s ({peaks['fp32_shape']}); threads {a.threads}, batch {a.batch_size}, "
          f"{a.steps} timed steps after {a.warmup}")
    flat = {**peaks, "gemm_peak_gflops": peak, "threads": a.threads, "batch_size": a.batch_size, "steps": a.steps,
            "warmup": a.warmup, "tl_precision": a.tl_precision, "tl_packing": a.tl_packing,
            "tl_share_prefix": a.tl_share_prefix, "loadavg": load_avg()}
    for side, r in best.items():
        print(f"{side:8s}: {r['tokens_per_s']:7.1f} tokens/s (non-padding), {r['supervised_per_s']:6.1f} supervised "
              f"tokens/s, peak RSS {r['peak_rss_gb']:.2f} GB, {r['executed_gflops_per_s']:.0f} GFLOP/s executed "
              f"({r['executed_gflops_per_s'] / peak:.1%} MFU), {r['model_gflops_per_s']:.0f} GFLOP/s model-equivalent")
        flat.update({f"{side}_tokens_per_s": r["tokens_per_s"], f"{side}_supervised_per_s": r["supervised_per_s"],
                     f"{side}_peak_rss_gb": r["peak_rss_gb"], f"{side}_mfu": r["executed_gflops_per_s"] / peak,
                     f"{side}_step_s": r["step_s"]})
    if "tunelab" in best:
        tl = best["tunelab"]
        flat.update(peak_rss_gb=tl["peak_rss_gb"], mfu=tl["executed_gflops_per_s"] / peak,
                    mfu_model_equivalent=tl["model_gflops_per_s"] / peak,
                    mfu_vs_bf16_peak=tl["executed_gflops_per_s"] / peaks["bf16_gflops"])
        print(f"tunelab MFU: {flat['mfu']:.1%} of the {peak:.0f} GFLOP/s GEMM peak in executed FLOPs "
              f"({flat['mfu_vs_bf16_peak']:.1%} of the bf16 peak; {flat['mfu_model_equivalent']:.1%} counting "
              f"the FLOPs of training each example separately)")
    if len(best) == 2:
        flat.update(train_ratio=best["tunelab"]["tokens_per_s"] / best["peer"]["tokens_per_s"],
                    supervised_ratio=best["tunelab"]["supervised_per_s"] / best["peer"]["supervised_per_s"])
        print(f"ratio tunelab/peer: {flat['train_ratio']:.2f}x tokens/s, {flat['supervised_ratio']:.2f}x supervised tokens/s")
    return flat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per side; each side keeps its best")
    ap.add_argument("--only", choices=["tunelab", "peer"], help="run one side only")
    ap.add_argument("--tl-precision", default="fp32", choices=["fp32", "bf16-autocast", "bf16-weights"])
    ap.add_argument("--tl-packing", type=int, default=1)
    ap.add_argument("--tl-share-prefix", type=int, default=1)
    ap.add_argument("--tl-fused-adam", type=int, default=0)
    ap.add_argument("--json", help="write the figures to this file as one flat JSON object")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        return child(a)
    skip = {"--json", "--repeats", "--only"}
    argv, a.passthrough = sys.argv[1:], []
    while argv:
        item = argv.pop(0)
        key = item.split("=")[0]
        if key in skip:
            argv = argv if "=" in item else argv[1:]
            continue
        a.passthrough.append(item)
    torch.set_num_threads(a.threads)
    bf, bf_shape = gemm_peak_gflops(torch.bfloat16)
    fp, fp_shape = gemm_peak_gflops(torch.float32)
    peaks = {"bf16_gflops": bf, "bf16_shape": bf_shape, "fp32_gflops": fp, "fp32_shape": fp_shape}
    print(f"load average before: {load_avg()}; {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    sides = [a.only] if a.only else ["tunelab", "peer"]
    runs: dict[str, list] = {s: [] for s in sides}
    for _ in range(a.repeats):
        for side in sides:
            runs[side].append(spawn(a, side))
    write_json(a.json, report(a, runs, peaks))


if __name__ == "__main__":
    main()
