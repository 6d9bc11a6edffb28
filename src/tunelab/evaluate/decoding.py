"""Batched greedy decoding with a KV cache: constrained to a label set (prefix trie) or free.

Two things make evaluation cheap on a CPU:
- the prompts of one evaluation share a long prefix (system prompt, instruction, label list, few-shot
  examples); it is run through the model once and its KV cache is reused by every batch;
- label-constrained decoding only ever scores the tokens that continue some label, so every
  prediction is a valid label and it ends after a handful of steps.
Layout of a batch after the shared prefix: [prefix][left pads][suffix], with the pads masked out and
position ids that skip them, so each row sees exactly its own prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from tunelab.core.log import progress
from tunelab.models import Precision
from tunelab.train.collate import PAD_MULTIPLE, round_up

MIN_SHARED_PREFIX = 8   # below this, prefilling the prefix separately saves less than it costs
# Every row of a batch gets its own copy of the shared prefix's KV cache (the cache grows by concatenation),
# so a long prefix (a few-shot prompt: label list + solved examples) times the batch is most of the
# evaluation's memory; the batch is cut so that those copies stay under this many bytes.
PREFIX_KV_BUDGET = 384 * 2**20


@dataclass
class LabelTrie:
    """Prefix trie over the token ids of each label's completion (label text + end-of-turn token)."""
    root: dict = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    depth: int = 0             # tokens in the longest label: decoding never needs more steps

    @classmethod
    def build(cls, label_ids: dict[str, list[int]]) -> "LabelTrie":
        trie = cls(labels=list(label_ids))
        for index, (label, ids) in enumerate(label_ids.items()):
            node = trie.root
            for t in ids:
                node = node.setdefault(t, {})
            if None in node:
                raise ValueError(f"labels {trie.labels[node[None]]!r} and {label!r} tokenize identically")
            node[None] = index   # terminal: the label's index
            trie.depth = max(trie.depth, len(ids))
        return trie

    def sequences(self) -> list[list[int]]:
        """Each label's token ids, in label order (walked back out of the trie)."""
        out: list[list[int]] = [[] for _ in self.labels]
        stack = [(self.root, [])]
        while stack:
            node, path = stack.pop()
            for t, child in node.items():
                if t is None:
                    out[child] = path
                else:
                    stack.append((child, path + [t]))
        return out


@dataclass
class Decoded:
    tokens: list[int]          # generated ids, without the end-of-turn token
    label: int | None = None   # index into LabelTrie.labels when constrained
    stopped: bool = False      # ended by an end-of-turn token or a label, not by the token limit


# on_token(prompt index, new token ids) -> True to stop that row now (a server's client went away)
OnToken = Callable[[int, list[int]], bool]


def common_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest token prefix shared by every prompt, leaving at least one token in each."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return first[:max(n, 0)]


class Decoder:
    """Greedy decoder for one model; `run` evaluates many prompts in batches."""

    def __init__(self, model, prec: Precision, pad_id: int, end_ids: set[int], batch_size: int = 16):
        self.model, self.prec, self.pad_id = model, prec, pad_id
        self.end_ids, self.batch_size = set(end_ids), batch_size
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], trie: LabelTrie | None = None, max_new_tokens: int | Sequence[int] = 64,
            desc: str | None = None, ignore_eos: Sequence[bool] | None = None,
            on_token: OnToken | None = None) -> list[Decoded]:
        """Decode every prompt greedily; with `trie`, only label continuations are allowed.

        `max_new_tokens` and `ignore_eos` may be given per prompt (a server batches requests that ask
        for different lengths); `on_token` sees each prompt's new tokens as they are chosen. With
        `desc`, a progress bar (examples, with an ETA) shows under that name.
        """
        if not prompts:
            return []
        limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        ignore = list(ignore_eos) if ignore_eos is not None else [False] * len(prompts)
        self.model.eval()
        prefix = common_prefix(prompts)
        if len(prefix) < MIN_SHARED_PREFIX:
            prefix = []
        prefix_kv = self._prefill(prefix) if prefix else None
        batch_size = self.rows_per_batch(prefix_kv)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))   # little padding per batch
        results: list[Decoded | None] = [None] * len(prompts)
        with progress(total=len(prompts), desc=desc or "decoding", unit="ex", leave=desc is not None) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                suffixes = [prompts[i][len(prefix):] for i in idx]
                notify = (lambda r, ids, idx=idx: on_token(idx[r], ids)) if on_token else None
                rows = _Rows([limits[i] for i in idx], [ignore[i] for i in idx], notify)
                for i, d in zip(idx, self._batch(prefix_kv, len(prefix), suffixes, trie, rows)):
                    results[i] = d
                bar.update(len(idx))
        return results  # type: ignore[return-value]

    def rows_per_batch(self, prefix_kv) -> int:
        """`batch_size`, cut so that the batch's copies of the prefix's KV cache fit `PREFIX_KV_BUDGET`."""
        if prefix_kv is None:
            return self.batch_size
        row = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in prefix_kv)
        return max(1, min(self.batch_size, PREFIX_KV_BUDGET // max(row, 1)))

    def _forward(self, ids, mask, pos, cache, keep: int = 1):
        """Run the model; returns the logits of the last `keep` positions [B, keep, V] and the cache."""
        with self.prec.autocast():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=keep)
        return out.logits.float(), out.past_key_values

    def _prefill(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ids = torch.tensor([prefix], device=self.device)
        pos = torch.arange(len(prefix), device=self.device).unsqueeze(0)
        _, cache = self._forward(ids, torch.ones_like(ids), pos, DynamicCache())
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _batch(self, prefix_kv, n_prefix: int, suffixes: list[list[int]], trie, rows: "_Rows") -> list[Decoded]:
        b, width = len(suffixes), round_up(max(len(s) for s in suffixes), PAD_MULTIPLE)   # few shapes
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        smask = torch.zeros((b, width), dtype=torch.long)
        for r, s in enumerate(suffixes):
            ids[r, width - len(s):] = torch.tensor(s)
            smask[r, width - len(s):] = 1
        mask = torch.cat([torch.ones((b, n_prefix), dtype=torch.long), smask], dim=1).to(self.device)
        pos = (n_prefix + smask.cumsum(1) - 1).clamp(min=0).to(self.device)
        cache = DynamicCache()
        if prefix_kv is not None:
            cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
                                                 for k, v in prefix_kv])
        logits, cache = self._forward(ids.to(self.device), mask, pos, cache)
        logits = logits[:, -1]
        nodes = [trie.root if trie else None for _ in range(b)]
        out = [Decoded([]) for _ in range(b)]
        done = [False] * b
        next_pos = pos[:, -1] + 1
        for _ in range(max(rows.limits) if trie is None else trie.depth):
            feed = self._advance(self._choose(logits, nodes, done), nodes, out, done, rows)
            if all(done):
                break
            # Each row feeds its new tokens (several when the label trie forces a chain) in one
            # block, right-padded; pads are masked out and positions count real tokens only.
            lens = torch.tensor([len(f) for f in feed], device=self.device)
            width = int(lens.max())
            block = torch.full((b, width), self.pad_id, dtype=torch.long)
            for r, f in enumerate(feed):
                block[r, :len(f)] = torch.tensor(f, dtype=torch.long)
            real = (torch.arange(width, device=self.device)[None, :] < lens[:, None]).long()
            mask = torch.cat([mask, real], dim=1)
            step_pos = next_pos[:, None] + torch.arange(width, device=self.device)[None, :]
            all_logits, cache = self._forward(block.to(self.device), mask, step_pos, cache, keep=width)
            logits = all_logits[torch.arange(b, device=self.device), (lens - 1).clamp(min=0)]
            next_pos = next_pos + lens
        return out

    def _advance(self, chosen: list[int], nodes, out: list[Decoded], done: list[bool], rows: "_Rows") -> list[list[int]]:
        """Record each row's chosen token, follow forced trie chains, and return the tokens to feed next."""
        feed: list[list[int]] = [[] for _ in chosen]
        for r, t in enumerate(chosen):
            if done[r]:
                continue
            if nodes[r] is None:                 # free generation
                if t in self.end_ids and not rows.ignore_eos[r]:
                    done[r] = out[r].stopped = True
                    continue
                out[r].tokens.append(t)
                stop = rows.notify(r, [t]) if rows.notify else False
                if stop or len(out[r].tokens) >= rows.limits[r]:
                    done[r] = True
                else:
                    feed[r] = [t]
                continue
            seq, node = [t], nodes[r][t]
            while None not in node and len(node) == 1:   # one continuation: no decision to make
                (forced,) = node.keys()
                seq.append(forced)
                node = node[forced]
            nodes[r] = node
            new = [x for x in seq if x not in self.end_ids]
            out[r].tokens.extend(new)
            stop = rows.notify(r, new) if rows.notify and new else False
            if None in node:
                out[r].label, done[r], out[r].stopped = node[None], True, True
            elif stop:
                done[r] = True
            else:
                feed[r] = seq
        return feed

    def _choose(self, logits: torch.Tensor, nodes, done) -> list[int]:
        if nodes[0] is None and all(n is None for n in nodes):
            return logits.argmax(-1).tolist()
        chosen = []
        for r, node in enumerate(nodes):
            allowed = [t for t in node if t is not None] if not done[r] else []
            if not allowed:
                chosen.append(self.pad_id)
                continue
            row = logits[r, allowed]
            chosen.append(allowed[int(row.argmax())])
        return chosen


    @torch.inference_mode()
    def label_scores(self, prompt: list[int], trie: LabelTrie, chunk: int = 32) -> tuple[int, list[float]]:
        """The label constrained greedy decoding answers for `prompt`, and every label's probability.

        A label's probability is the product, along its path in the trie, of the model's next-token
        distribution restricted to the tokens that continue some label (the distribution constrained
        decoding draws from), so the probabilities sum to one over the label set. The label answered is
        the greedy walk over the same logits, as `run` would decode it. Every label's continuation is
        fed at once on top of the prompt's KV cache, `chunk` labels per forward pass.
        """
        self.model.eval()
        seqs = trie.sequences()
        ids = torch.tensor([prompt], device=self.device)
        pos = torch.arange(len(prompt), device=self.device).unsqueeze(0)
        first, cache = self._forward(ids, torch.ones_like(ids), pos, DynamicCache())
        prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
        node_logits: dict[tuple[int, ...], torch.Tensor] = {(): first[0, -1]}
        for start in range(0, len(seqs), chunk):
            part = [s[:-1] for s in seqs[start:start + chunk]]   # the last token is predicted, never fed
            width = max(len(s) for s in part)
            if width == 0:
                continue
            b = len(part)
            block = torch.full((b, width), self.pad_id, dtype=torch.long)
            real = torch.zeros((b, width), dtype=torch.long)
            for r, s in enumerate(part):
                block[r, :len(s)] = torch.tensor(s, dtype=torch.long)
                real[r, :len(s)] = 1
            mask = torch.cat([torch.ones((b, len(prompt)), dtype=torch.long), real], dim=1).to(self.device)
            step_pos = (len(prompt) + torch.arange(width)).unsqueeze(0).expand(b, -1).to(self.device)
            kv = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prompt_kv])
            logits, _ = self._forward(block.to(self.device), mask, step_pos, kv, keep=width)
            for r, s in enumerate(part):
                for j in range(len(s)):
                    node_logits.setdefault(tuple(s[:j + 1]), logits[r, j])
        logp = []
        for s in seqs:
            node, total = trie.root, 0.0
            for j, t in enumerate(s):
                allowed = [k for k in node if k is not None]
                if len(allowed) > 1:
                    row = torch.log_softmax(node_logits[tuple(s[:j])][allowed], -1)
                    total += float(row[allowed.index(t)])
                node = node[t]
            logp.append(total)
        probs = torch.softmax(torch.tensor(logp, dtype=torch.float64), -1).tolist()   # sums to 1 already; guards rounding
        node, path = trie.root, []
        while None not in node:
            allowed = [k for k in node if k is not None]
            t = allowed[int(node_logits[tuple(path)][allowed].argmax())] if len(allowed) > 1 else allowed[0]
            path.append(t)
            node = node[t]
        return node[None], probs


@dataclass
class _Rows:
    """Per-row settings of one batch: token limits, whether end-of-turn is ignored, the token callback."""
    limits: list[int]
    ignore_eos: list[bool]
    notify: Callable[[int, list[int]], bool] | None = None
