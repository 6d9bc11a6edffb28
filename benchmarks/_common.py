"""Shared by the benchmarks: the embedded model's folder, Banking77 examples rendered with the chat template,
GEMM peak measurement and peak RSS. Both sides of every benchmark use exactly these tokens."""

from __future__ import annotations

import csv
import json
import random
import resource
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BANKING77 = ROOT / "examples" / "banking77"   # the repository's copy: benchmarks read only this repository
INSTRUCTION = (
    "Classify this online-banking customer query into one of 77 intent categories. "
    "Answer with the category name only.\n\nQuery: "
)


def model_folder() -> str:
    """A safetensors folder of the embedded SmolLM2-135M-Instruct (tunelab's cache, converted once)."""
    from tunelab.config import ModelConfig
    from tunelab.models import local_folder

    return local_folder(ModelConfig())


def banking77_examples(tokenizer, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` seeded-random Banking77 rows as {"input_ids", "labels", "prompt_len"}; the label and its
    closing `<|im_end|>` are supervised, the chat-template prompt is not."""
    with open(BANKING77 / f"{split}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for row in rows[:n]:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": INSTRUCTION + row["text"]}], add_generation_prompt=True, tokenize=True
        )
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        completion = tokenizer(row["category"], add_special_tokens=False)["input_ids"] + [end]
        out.append({"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion,
                    "prompt_len": len(prompt), "text": row["text"], "category": row["category"]})
    return out


def gemm_peak_gflops(dtype: torch.dtype, repeats: int = 5) -> tuple[float, str]:
    """Best GFLOP/s of `torch.nn.functional.linear` over a few kernel-friendly shapes (best of `repeats`)."""
    shapes = [(1024, 576, 1536), (1024, 1536, 576), (2048, 2048, 2048), (1024, 1024, 4096)]
    best, best_shape = 0.0, ""
    for m, k, n in shapes:
        a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        for _ in range(2):
            torch.nn.functional.linear(a, w)
        for _ in range(repeats):
            t = time.perf_counter()
            torch.nn.functional.linear(a, w)
            rate = 2 * m * k * n / (time.perf_counter() - t) / 1e9
            if rate > best:
                best, best_shape = rate, f"{m}x{k}x{n}"
    return best, best_shape


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def write_json(path: str | None, obj: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True))
