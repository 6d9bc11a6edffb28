"""Evaluate a `task: pretrain` run: perplexity of the fine-tuned and of the base model on held-out text.

Both models score the same test chunks, encoded exactly as training encoded them. Perplexity is
token-weighted (summed NLL over summed tokens, not a mean of per-chunk perplexities), and its 95%
interval and the paired test resample whole chunks (`significance.score_systems`). There is no prompt
for raw text, so the only baseline is the base model itself, reported as `zero_shot`. Then the
forgetting probe on general English, as for every causal-LM run.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from tunelab.config import Config
from tunelab.core.log import progress
from tunelab.core.records import IGNORE
from tunelab.core.rundir import RunDir
from tunelab.evaluate import metrics as M
from tunelab.evaluate.common import base_model_of, forgetting_gate, test_records
from tunelab.evaluate.significance import score_systems
from tunelab.methods import load_trained
from tunelab.models import Precision, choose_precision
from tunelab.train.collate import make_collator
from tunelab.train.render import Renderer, encode_split

log = logging.getLogger(__name__)

# Logits of one forward pass are rows x length x vocabulary floats; SmolLM2's 49k vocabulary makes
# 16 chunks of 512 tokens 1.6 GB in fp32. Cap the rows per pass so the logits stay near 256 MB.
LOGIT_BUDGET = 64 * 2**20

ZERO_SHOT_NOTE = ("the base model before fine-tuning: raw text has no prompt, so zero-shot means "
                  "scoring the same test chunks with the untuned weights")


@torch.inference_mode()
def chunk_nll(model, examples: list[dict], pad_id: int, prec: Precision, batch_size: int,
              desc: str = "scoring") -> list[tuple[float, int]]:
    """(summed next-token NLL in nats, scored tokens) for each encoded example, in order."""
    model.to(prec.device).eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    collate = make_collator(pad_id, packing=False)
    out: list[tuple[float, int]] = []
    start = 0
    bar = progress(total=len(examples), desc=desc, unit="chunk")
    while start < len(examples):
        width = max(len(e["input_ids"]) for e in examples[start:start + batch_size])
        rows = max(1, min(batch_size, LOGIT_BUDGET // max(width * vocab, 1)))
        batch = {k: v.to(prec.device) for k, v in collate(examples[start:start + rows]).items()}
        with prec.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        targets = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        scored = targets != IGNORE
        out += [(float(n), int(c)) for n, c in zip((nll * scored).sum(1).tolist(), scored.sum(1).tolist())]
        start += rows
        bar.update(rows)
    bar.close()
    return out


def evaluate(cfg: Config, rd: RunDir, prepared, tokenizer) -> dict:
    """Perplexity of fine-tuned and base model on the test chunks; write metrics.json `test`,
    `eval_seconds`, predictions.jsonl (per-chunk NLL) and the forgetting probe.

    Raises:
        EvaluationFailed: the forgetting probe exceeded eval.forgetting_max (after writing metrics).
    """
    prec, e = choose_precision(cfg.train), cfg.eval
    test = test_records(cfg, prepared)
    examples, _ = encode_split(Renderer(tokenizer, cfg), test, "test")
    model = load_trained(cfg.model, rd.best, cfg.task, method=cfg.method)
    scores, seconds = {}, {}
    for name in ("finetuned", "zero_shot"):
        start = time.time()
        if name == "finetuned":
            scores[name] = chunk_nll(model, examples, tokenizer.pad_token_id, prec, e.batch_size, "fine-tuned")
        else:
            with base_model_of(cfg, model) as base:
                scores[name] = chunk_nll(base, examples, tokenizer.pad_token_id, prec, e.batch_size, "base model")
        seconds[name] = round(time.time() - start, 2)
        log.info(f"scored {name} on {len(examples)} test chunks in {seconds[name]}s")

    systems = {name: {str(i): nll for i, (nll, _) in enumerate(s)} for name, s in scores.items()}
    tokens = {str(i): n for i, (_, n) in enumerate(scores["finetuned"])}
    results = score_systems(systems, tokens, M.metrics_for("lm"), samples=e.bootstrap_samples, seed=cfg.train.seed)
    for entry in results.values():
        entry.update(tokens=sum(tokens.values()), examples="full_test")
    results["zero_shot"]["note"] = ZERO_SHOT_NOTE
    rd.write_predictions(_chunk_rows(test, scores))
    rd.set_metrics("eval_seconds", seconds)
    rd.set_metrics("test", results)
    log.info(f"test perplexity: base {results['zero_shot']['perplexity']:.3f} -> fine-tuned "
        f"{results['finetuned']['perplexity']:.3f} over {sum(tokens.values())} tokens")
    if e.forgetting:
        forgetting_gate(cfg, rd, model, tokenizer, prec, None)
    return results


def _chunk_rows(test: list[dict], scores: dict[str, list[tuple[float, int]]]) -> list[dict]:
    """predictions.jsonl rows: one per system and chunk with its summed NLL, tokens and perplexity."""
    return [{"system": name, "id": rec.get("id"), "prompt": (rec.get("text") or "")[:300], "nll": nll, "tokens": n,
             "perplexity": M.perplexity(nll, n), "reference": None}
            for name, rows in scores.items() for rec, (nll, n) in zip(test, rows)]
