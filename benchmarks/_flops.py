"""FLOPs a training step executes, counted rather than modelled: `torch.utils.flop_counter` sees every
matmul and attention kernel of the forward and backward pass, so the count follows whatever the recipe
runs (LoRA on a causal LM, a classification head, layers skipped or cached)."""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode

from tunelab.core.records import IGNORE


def batch_counts(batch: dict, counts: tuple[int, int] | None) -> dict:
    """Tokens trained on, supervised items and computed (non-padding) positions of one collated batch.

    `counts` is (tokens, supervised) as the trainer's objective counts them; None counts here (padded
    rows: the attention mask's ones; labels other than IGNORE after the first position).
    """
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if counts is None:
        tokens = int(mask.sum()) if mask is not None else int(ids.numel())
        counts = (tokens, int((batch["labels"][:, 1:] != IGNORE).sum()))
    if ids is None:
        computed = counts[0]
    elif mask is not None and mask.dim() == 2:   # padded rows: padding is executed but never credited
        computed = int(mask.sum())
    else:                                        # packed or shared-prefix rows: every position is real
        computed = int(ids.numel())
    return {"tokens": counts[0], "supervised": counts[1], "computed": computed}


class StepFlops:
    """Counts the FLOPs of one optimizer step (forward, backward and optimizer of all its micro-batches)."""

    def __init__(self, step: int):
        self.step, self.mode, self.flops = step, None, 0

    def begin(self, global_step: int) -> None:
        if global_step == self.step and self.mode is None and not self.flops:
            self.mode = FlopCounterMode(display=False)
            self.mode.__enter__()

    def end(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.flops, self.mode = self.mode.get_total_flops(), None

    def per_computed_token(self, batches: list[dict], accum: int) -> float:
        """FLOPs per computed position of the counted step; its micro-batches are the collator's
        batches number step*accum .. (step+1)*accum - 1 (batches are collated in order)."""
        mine = batches[self.step * accum:(self.step + 1) * accum]
        return self.flops / max(sum(b["computed"] for b in mine), 1)
