"""The benchmarks' counting helpers: FLOPs of a training step counted by torch's flop counter, and the
tokens of a collated batch in each layout (padding never credited)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _flops import StepFlops, batch_counts  # noqa: E402
from _product import DEMO_CONFIG, cpu_flags  # noqa: E402


def test_step_flops_counts_forward_and_backward_of_the_chosen_step_only():
    layer = torch.nn.Linear(64, 32, bias=False)
    counter = StepFlops(step=1)
    for step in range(3):
        counter.begin(step)
        layer(torch.randn(8, 64, requires_grad=True)).sum().backward()
        counter.end()
    # forward 2*8*64*32, backward to the input and to the weight: twice that again
    assert counter.flops == 3 * 2 * 8 * 64 * 32
    batches = [{"computed": 10}, {"computed": 16}, {"computed": 10}]
    assert counter.per_computed_token(batches, accum=1) == counter.flops / 16


def test_batch_counts_credit_real_tokens_in_every_layout():
    padded = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
              "labels": torch.tensor([[-100, -100, 3, 4, 5], [-100, 6, -100, -100, -100]])}
    assert batch_counts(padded, None) == {"tokens": 7, "supervised": 4, "computed": 7}
    packed = {"input_ids": torch.zeros(1, 9, dtype=torch.long), "labels": torch.zeros(1, 9, dtype=torch.long)}
    assert batch_counts(packed, (9, 2))["computed"] == 9


def test_the_default_config_is_the_demo_and_cpu_flags_are_named():
    assert DEMO_CONFIG.is_file() and DEMO_CONFIG.parent.name == "banking77"
    flags = cpu_flags()
    assert flags["cpus"] >= 1 and isinstance(flags["amx"], bool)
    assert all(f.startswith(("avx", "amx", "fma", "f16c")) for f in flags["cpu_flags"])
