"""Evaluation throughput: tunelab's `Decoder` (label-constrained and free) vs transformers `generate`.

    .venv/bin/python benchmarks/eval_throughput.py [--examples 64] [--batch-size 16] [--json out.json]

Same model (the embedded SmolLM2-135M-Instruct, fp32 on both sides: without AMX bf16 is slower here,
see README.md), the same Banking77 test prompts (chat template, instruction + query, generation prompt),
the same batch size, greedy decoding. The peer is `model.generate` on left-padded batches with
`do_sample=False`, stopping at `<|im_end|>` or `--max-new-tokens`; tunelab free decoding uses the same
limit, constrained decoding stops when a label is complete. Each mode runs `--repeats` times,
interleaved, and keeps its best (the machine is shared; the load average is printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from _common import banking77_examples, load_avg, model_folder, peak_rss_gb, write_json  # noqa: E402


def generate_peer(model, tok, prompts: list[list[int]], batch_size: int, max_new: int, end_id: int) -> list[str]:
    """transformers `generate`, batched with left padding, greedy."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=end_id, pad_token_id=tok.pad_token_id)
        out.extend(tok.decode(g[width:], skip_special_tokens=True).strip() for g in gen)
    return out


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from tunelab.evaluate.decoding import Decoder, LabelTrie
    from tunelab.models import Precision

    folder = model_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    rows = banking77_examples(tok, a.examples, seed=0, split="test")
    prompts = [e["input_ids"][: e["prompt_len"]] for e in rows]
    gold = [e["category"] for e in rows]
    all_labels = sorted({e["category"] for e in banking77_examples(tok, 100_000, split="train")})
    trie = LabelTrie.build({lab: tok(lab, add_special_tokens=False)["input_ids"] + [end_id] for lab in all_labels})
    decoder = Decoder(model, Precision("cpu", False, False, "fp32"), tok.pad_token_id, {end_id}, a.batch_size)
    modes = {
        "constrained": lambda: [trie.labels[d.label] for d in decoder.run(prompts, trie=trie)],
        "free": lambda: [tok.decode(d.tokens, skip_special_tokens=True).strip()
                         for d in decoder.run(prompts, max_new_tokens=a.max_new_tokens)],
        "generate": lambda: generate_peer(model, tok, prompts, a.batch_size, a.max_new_tokens, end_id),
    }
    print(f"load average before: {load_avg()}; {a.examples} Banking77 test prompts, batch {a.batch_size}, "
          f"threads {a.threads}", flush=True)
    best: dict[str, float] = {}
    acc: dict[str, float] = {}
    outputs: dict[str, list[str]] = {}
    for r in range(a.repeats):
        for name, fn in modes.items():
            seconds, preds = timed(fn)
            rate = len(prompts) / seconds
            best[name] = max(best.get(name, 0.0), rate)
            acc[name] = sum(p == g for p, g in zip(preds, gold)) / len(gold)
            outputs[name] = preds
            print(f"  run {r}: {name:11s} {rate:6.2f} examples/s  accuracy {acc[name]:.3f}  load {load_avg()}", flush=True)
    flat = {f"{k}_examples_per_s": v for k, v in best.items()}
    flat.update({f"{k}_accuracy": v for k, v in acc.items()})
    # Same greedy work on both sides: tunelab's free decoding should reproduce generate's text.
    flat["free_generate_agreement"] = sum(x == y for x, y in zip(outputs["free"], outputs["generate"])) / len(prompts)
    flat.update(eval_ratio=best["constrained"] / best["generate"], free_ratio=best["free"] / best["generate"],
                peak_rss_gb=peak_rss_gb(), threads=a.threads, batch_size=a.batch_size, examples=a.examples,
                loadavg=load_avg())
    print(f"\ntunelab constrained {best['constrained']:.2f} examples/s, tunelab free {best['free']:.2f}, "
          f"transformers generate {best['generate']:.2f}")
    print(f"ratio tunelab/generate: constrained {flat['eval_ratio']:.2f}x, free {flat['free_ratio']:.2f}x; "
          f"peak RSS {flat['peak_rss_gb']:.2f} GB; free decoding = generate's text on "
          f"{flat['free_generate_agreement']:.0%} of prompts")
    write_json(a.json, flat)


if __name__ == "__main__":
    main()
