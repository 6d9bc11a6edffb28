"""The `evaluate` stage: fine-tuned vs zero-shot and few-shot prompting of the same base model.

Same test examples, same decoding, same metrics for every system. Baselines may run on a fixed,
seeded, stratified subset of the test set (`eval.baseline_per_class`); the fine-tuned model is then
reported on that subset (the like-for-like comparison) and on the full test set.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager

from tunelab import metrics as M
from tunelab.config import Config
from tunelab.decoding import Decoder, LabelTrie
from tunelab.models import load_model, load_trained
from tunelab.precision import choose
from tunelab.prompts import PromptBuilder, pick_shots
from tunelab.render import Renderer
from tunelab.rundir import RunDir


def stratified_subset(records: list[dict], per_class: int, seed: int) -> list[int]:
    """Indices of at most `per_class` records per output value, drawn with a fixed seed, in file order."""
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(str(r.get("output")), []).append(i)
    rng = random.Random(seed)
    keep = []
    for idx in by_label.values():
        keep += idx if len(idx) <= per_class else rng.sample(idx, per_class)
    return sorted(keep)


@contextmanager
def base_model_of(cfg: Config, model):
    """The untuned base model: the same object with its PEFT adapter disabled, or a fresh load."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield load_model(cfg.model, cfg.task)


def is_closed_set(cfg: Config, labels: list[str] | None) -> bool:
    return cfg.eval.constrained == "on" or (cfg.eval.constrained == "auto" and bool(labels))


def _texts(decoded, trie, tokenizer) -> list[str]:
    if trie is not None:
        return [trie.labels[d.label] for d in decoded]
    return [tokenizer.decode(d.tokens, skip_special_tokens=True).strip() for d in decoded]


def _score(preds: list[str], refs: list, closed: bool, cfg: Config, labels) -> dict:
    kind = "classification" if closed else "generation"
    return M.compute_metrics(M.metrics_for(kind, cfg.eval.metrics), preds, refs)


def evaluate(cfg: Config, rd: RunDir, prepared, tokenizer, log=print) -> dict:
    """Decode the test set with each system, score it, write predictions.jsonl and metrics.json `test`."""
    prec = choose(cfg.train)
    test = prepared.splits["test"]
    if cfg.eval.max_test and len(test) > cfg.eval.max_test:
        test = [test[i] for i in sorted(random.Random(cfg.train.seed).sample(range(len(test)), cfg.eval.max_test))]
    labels, closed = prepared.labels, is_closed_set(cfg, prepared.labels)
    renderer = Renderer(tokenizer, cfg)
    trie = None
    if closed:
        probe = renderer.prompt_messages(test[0])
        trie = LabelTrie.build({l: renderer.completion_ids(probe, l) for l in labels})
    shots = pick_shots(prepared.splits["train"], cfg.eval.few_shot_k, cfg.train.seed, labels if closed else None)
    prompts = PromptBuilder(renderer, labels if closed else None, shots)
    refs = [r.get("references") or r.get("output") for r in test]
    subset = (stratified_subset(test, cfg.eval.baseline_per_class, cfg.train.seed)
              if cfg.eval.baseline_per_class and closed else list(range(len(test))))

    model = load_trained(cfg.model, rd.best, cfg.task, labels=labels)
    results, rows, timing = {}, [], {}

    def run(name: str, m, build, idx: list[int]):
        start = time.time()
        dec = Decoder(m, prec, tokenizer.pad_token_id, renderer.end_ids, cfg.eval.batch_size)
        out = _texts(dec.run([build(test[i]) for i in idx], trie, cfg.eval.max_new_tokens), trie, tokenizer)
        timing[name] = round(time.time() - start, 1)
        log(f"evaluated {name} on {len(idx)} test examples in {timing[name]}s")
        rows.extend({"system": name, "id": test[i].get("id"), "prediction": p, "reference": refs[i]}
                    for i, p in zip(idx, out))
        return out

    full = run("finetuned", model, prompts.finetuned, list(range(len(test))))
    results["finetuned"] = {**_score([full[i] for i in subset], [refs[i] for i in subset], closed, cfg, labels),
                            "n": len(subset)}
    if len(subset) < len(test):
        results["finetuned_full_test"] = {**_score(full, refs, closed, cfg, labels), "n": len(test)}
    with base_model_of(cfg, model) as base:
        for name in cfg.eval.baselines:
            out = run(name, base, getattr(prompts, name), subset)
            results[name] = {**_score(out, [refs[i] for i in subset], closed, cfg, labels), "n": len(subset)}
    for v in results.values():
        v["subset"] = "baseline_subset" if v["n"] == len(subset) and len(subset) < len(test) else "full_test"
    with (rd.path / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    rd.update_metrics("eval_seconds", timing)
    rd.update_metrics("test", results)
    return results
