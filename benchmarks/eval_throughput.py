"""Evaluation throughput of `tunelab run`'s evaluation of the fine-tuned model vs plain transformers.

    .venv/bin/python benchmarks/eval_throughput.py [--config CONFIG ...] [--examples 64] [--train-steps 2]
        [--repeats 1] [--json out.json]

The product path: each config file (default: the demo's, examples/banking77/config.yaml, a classification
head; and examples/banking77/dora.yaml, the same task as instruction tuning with a DoRA adapter, decoded
under the label-set constraint) is trained for `--train-steps` steps by the train stage (a fine-tuned
model in `best/`, saved the way `tunelab run` saves it), then the evaluate stage
(`tunelab.evaluate.stage.run`) scores it on a seeded `--examples` subset of the test split
(`eval.max_test`; baselines and the forgetting probe off, so only the fine-tuned system runs). Its
rate is the evaluate stage's own timing of the fine-tuned system (metrics.json `eval_seconds`), with
the precision (`precision: auto`), batch size, decoding and threads `tunelab run` uses for that
config on this machine; the JSON records them with the CPU flags.

The peers run the same fine-tuned model (the same `best/` folder loaded on the base model, PEFT adapter
unmerged as the product has it), once in fp32 and once under bf16 autocast ("its best flags"), the faster
kept:
- a generating config (task sft): the same prompt token ids decoded greedily by `model.generate` in
  left-padded batches of `eval.batch_size`, stopping at the end-of-turn token or after as many new tokens
  as the longest label needs (`eval_ratio` = the product's constrained decoding / generate; goal >= 3x);
- a classification head: the same texts tokenized with padding to the longest in the batch, in test
  order, batches of `eval.batch_size`, argmax of the logits — what a user writes around
  `AutoModelForSequenceClassification` (`head_ratio`).

Each side runs in its own subprocess (honest peak RSS); `--repeats` interleaves them and keeps each
side's best (the machine may be shared: the load average is printed with every run). The JSON holds one
entry per config under `configs` and, at the top, the CPU flags and each config's ratio.
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

import _product  # noqa: E402
from _common import load_avg, peak_rss_gb, write_json  # noqa: E402


def overrides(a) -> list[str]:
    """Run-length settings only: a short training, then the fine-tuned model alone on a test subset."""
    return [f"train.max_steps={a.train_steps}", "train.eval_every=1000000", "train.save_every=null",
            "train.patience=null", "train.eval_examples=16", f"eval.max_test={a.examples}", "eval.baselines=[]", "eval.forgetting=false",
            "eval.time_budget_s=null", "name=bench-eval"]


def run_tunelab(cfg) -> dict:
    """The evaluate stage on the run folder; the fine-tuned system's rate as the stage timed it."""
    from tunelab.core.rundir import RunDir
    from tunelab.evaluate import stage as evaluate_stage
    from tunelab.models import choose_precision
    from tunelab.train.stage import threads

    rd = RunDir.for_config(cfg)
    torch.set_num_threads(threads(cfg))
    start = time.perf_counter()
    results = evaluate_stage.run(cfg, rd)
    wall = time.perf_counter() - start
    seconds = rd.metrics()["eval_seconds"]["finetuned"]
    entry = results["finetuned"]
    n = entry.get("n", cfg.eval.max_test)
    return {"examples_per_s": n / seconds, "seconds": seconds, "stage_wall_s": wall, "examples": n,
            "accuracy": entry.get("accuracy"), "peak_rss_gb": peak_rss_gb(), "torch_threads": torch.get_num_threads(),
            **_product.chosen_settings(cfg, choose_precision(cfg.train).reason), "eval_batch_size": cfg.eval.batch_size}


class FineTuned:
    """What both peers start from: the run's fine-tuned model (`best/`, adapter unmerged), its tokenizer and
    renderer, and the test examples the product scored, with torch's threads as the product sets them."""

    def __init__(self, cfg):
        from tunelab.core.rundir import RunDir
        from tunelab.data import load_prepared
        from tunelab.evaluate.common import test_records
        from tunelab.methods import load_trained
        from tunelab.models import load_tokenizer
        from tunelab.train.render import Renderer
        from tunelab.train.stage import threads

        rd = RunDir.for_config(cfg)
        torch.set_num_threads(threads(cfg))
        self.tok, self.prepared = load_tokenizer(cfg.model), load_prepared(rd.data)
        self.test, self.labels = test_records(cfg, self.prepared), self.prepared.labels
        self.renderer = Renderer(self.tok, cfg)
        self.model = load_trained(cfg.model, rd.best, cfg.task, labels=self.labels, method=cfg.method).eval()

    def result(self, answers: list[str], seconds: float, precision: str, **extra) -> dict:
        right = sum(a == str(r["output"]) for a, r in zip(answers, self.test))
        return {"examples_per_s": len(answers) / seconds, "seconds": seconds, "examples": len(answers),
                "accuracy": right / len(answers), "peak_rss_gb": peak_rss_gb(), "precision": precision,
                "torch_threads": torch.get_num_threads(), **extra}


def run_peer(cfg, precision: str) -> dict:
    """transformers `generate`, greedy, left-padded batches, on the fine-tuned model and the product's prompts."""
    from tunelab.evaluate.generative import label_trie
    from tunelab.evaluate.prompts import PromptBuilder, ShotPicker

    ft = FineTuned(cfg)
    labels, test = ft.labels, ft.test
    prompts = PromptBuilder(ft.renderer, labels, ShotPicker(ft.prepared.splits["train"], 1, 0, labels))
    ids = [prompts.finetuned(r) for r in test]
    max_new = max(len(s) for s in label_trie(ft.renderer, labels, test[0]).sequences()) if labels \
        else cfg.eval.max_new_tokens
    start = time.perf_counter()
    texts = generate(ft.model, ft.tok, ids, cfg.eval.batch_size, max_new, sorted(ft.renderer.end_ids), precision)
    return ft.result(texts, time.perf_counter() - start, precision, max_new_tokens=max_new)


def run_head_peer(cfg, precision: str) -> dict:
    """The fine-tuned classification model called the plain way: padded batches in test order, argmax."""
    ft = FineTuned(cfg)
    texts = [ft.renderer.user_text(r) for r in ft.test]
    start = time.perf_counter()
    predicted = []
    for i in range(0, len(texts), cfg.eval.batch_size):
        batch = ft.tok(texts[i:i + cfg.eval.batch_size], padding=True, truncation=True,
                       max_length=cfg.data.max_length, return_tensors="pt")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            predicted += ft.model(**batch).logits.argmax(-1).tolist()
    return ft.result([ft.labels[p] for p in predicted], time.perf_counter() - start, precision)


def generate(model, tok, prompts: list[list[int]], batch_size: int, max_new: int, end: list[int],
             precision: str) -> list[str]:
    """Greedy `generate` over left-padded batches; the decoded new text of each prompt."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=end, pad_token_id=tok.pad_token_id)
        out.extend(tok.decode(g[width:], skip_special_tokens=True).strip() for g in gen)
    return out


def child(a) -> None:
    cfg = _product.load(a.config, a.runs_dir, overrides(a))
    precision = a.side.split("-")[-1]
    result = run_tunelab(cfg) if a.side == "tunelab" else \
        run_head_peer(cfg, precision) if a.side.startswith("head-") else run_peer(cfg, precision)
    write_json(a.result, result)


def spawn(a, side: str) -> dict:
    res = _product.spawn(__file__, side, ["--runs-dir", a.runs_dir, "--config", str(a.config), "--examples",
                                          str(a.examples), "--train-steps", str(a.train_steps)])
    print(f"  {side:9s} {res['examples_per_s']:6.2f} examples/s  accuracy {res['accuracy']}  "
          f"rss {res['peak_rss_gb']:.2f} GB  load {res['loadavg_start']} -> {load_avg()}", flush=True)
    return res


def report(a, runs: dict) -> dict:
    """One config's figures: the product's rate and settings, and each peer's best."""
    best = {side: max(rs, key=lambda r: r["examples_per_s"]) for side, rs in runs.items() if rs}
    tl = best["tunelab"]
    flat = {"config": str(a.config), "examples": tl["examples"], "loadavg": load_avg(),
            **{k: tl[k] for k in ("precision", "batching", "threads", "task", "method", "eval_batch_size")},
            "tunelab_examples_per_s": tl["examples_per_s"], "tunelab_accuracy": tl["accuracy"],
            "tunelab_peak_rss_gb": tl["peak_rss_gb"], "tunelab_stage_wall_s": tl["stage_wall_s"],
            "train_steps": a.train_steps}
    print(f"\n{a.config}: product chose precision {tl['precision']!r}, eval batch {tl['eval_batch_size']}, threads "
          f"{tl['threads']} (task {tl['task']}, method {tl['method']})")
    print(f"tunelab : {tl['examples_per_s']:.2f} examples/s on {tl['examples']} test examples, accuracy "
          f"{tl['accuracy']}, peak RSS {tl['peak_rss_gb']:.2f} GB")
    peers = {s: r for s, r in best.items() if s != "tunelab"}
    for side, r in peers.items():
        flat[f"{side.replace('-', '_')}_examples_per_s"] = r["examples_per_s"]
    if peers:
        side, peer = max(peers.items(), key=lambda kv: kv[1]["examples_per_s"])
        what, key = ("transformers generate", "eval_ratio") if side.startswith("peer") else \
            ("the plain padded forward of the classification model", "head_ratio")
        flat.update(peer_best=side, peer=what, peer_examples_per_s=peer["examples_per_s"],
                    peer_accuracy=peer["accuracy"], peer_peak_rss_gb=peer["peak_rss_gb"])
        flat[key] = tl["examples_per_s"] / peer["examples_per_s"]
        print(f"peer    : {peer['examples_per_s']:.2f} examples/s ({what}, {side}), accuracy {peer['accuracy']}")
        print(f"ratio tunelab/peer: {flat[key]:.2f}x" + (" (goal >= 3x)" if key == "eval_ratio" else ""))
    return flat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, action="append", help="a config `tunelab run` would get (repeatable; "
                    "default: the demo's and examples/banking77/dora.yaml)")
    ap.add_argument("--examples", type=int, default=64, help="test examples (seeded subset, eval.max_test)")
    ap.add_argument("--train-steps", type=int, default=2, help="training steps before evaluating")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--peer-precisions", default="fp32,bf16")
    ap.add_argument("--json")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--runs-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        a.config = a.config[0]
        return child(a)
    configs = a.config or [_product.DEMO_CONFIG, _product.DEMO_CONFIG.parent / "dora.yaml"]
    print(f"load average before: {load_avg()}; {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    results = [measure(a, config) for config in configs]
    out = {**_product.cpu_flags(), "configs": results}
    for r in results:
        for key in ("eval_ratio", "head_ratio"):
            if key in r:
                out.setdefault(key, r[key])
                out.setdefault(f"{key}_config", r["config"])
    write_json(a.json, out)


def measure(a, config: Path) -> dict:
    """Train `config` briefly, then time the product's evaluation and its peers on it."""
    from tunelab.tasks import TASKS
    from tunelab.train import stage as train_stage

    a.config = config
    with tempfile.TemporaryDirectory() as runs_dir:
        a.runs_dir = runs_dir
        cfg = _product.load(config, runs_dir, overrides(a))
        rd, tokenizer, prepared = _product.prepare(cfg)
        train_stage.run(cfg, rd, prepared, tokenizer)
        peer = {"chat": "peer", "classify": "head"}.get(TASKS[cfg.task].serving)   # a language model: none
        sides = ["tunelab"] + [f"{peer}-{p.strip()}" for p in a.peer_precisions.split(",") if p.strip() and peer]
        runs: dict[str, list] = {s: [] for s in sides}
        for _ in range(a.repeats):
            for side in sides:
                runs[side].append(spawn(a, side))
    return report(a, runs)


if __name__ == "__main__":
    main()
