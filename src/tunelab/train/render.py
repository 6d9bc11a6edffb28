"""Records -> chat-template text -> token ids with completion-only labels.

The prompt and the completion are tokenized separately: generation sees the prompt tokenized alone
and continues from there, so training on the same split keeps train and inference token-identical.
Labels cover the completion and the end-of-turn token and nothing else; the guards below refuse
data on which the model would learn nothing, or would never learn to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.config import Config
from tunelab.core.errors import UserError
from tunelab.core.records import IGNORE, TemplateError, completion_text, prompt_text


class RenderError(UserError, ValueError):
    """Examples that cannot be trained on; the message names each row (file:line)."""


def is_raw_text(record: dict) -> bool:
    """A raw-text record (pretraining chunk, document): every token is a target, there is no prompt."""
    return record.get("text") is not None and record.get("output") is None and not record.get("messages")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class RenderStats:
    examples: int = 0
    truncated: int = 0
    truncated_rows: list[str] = field(default_factory=list)


class Renderer:
    """Turn records (see docs/ARCHITECTURE.md) into token ids for one tokenizer and config."""

    def __init__(self, tokenizer, cfg: Config):
        self.tok = tokenizer
        self.cfg = cfg
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.end_ids = end_of_turn_ids(tokenizer)

    # ------------------------------------------------------------------ text

    def user_text(self, record: dict) -> str:
        """The user turn: the template filled from the record's input columns."""
        try:
            return prompt_text(record, self.cfg.data.template)
        except TemplateError as e:
            raise RenderError(str(e)) from None

    def prompt_messages(self, record: dict, system: str | None = None) -> list[dict]:
        """Chat messages up to (not including) the answer."""
        if record.get("messages"):
            msgs = list(record["messages"])
            return msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs
        sys_msg = system if system is not None else self.cfg.data.system
        head = [{"role": "system", "content": sys_msg}] if sys_msg else []
        return head + [{"role": "user", "content": self.user_text(record)}]

    completion_text = staticmethod(completion_text)

    # ------------------------------------------------------------------ ids

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the prompt, ending with the assistant header the model continues from."""
        if self.has_template:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n"
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def completion_ids(self, messages: list[dict], completion: str) -> list[int]:
        """Token ids of the answer through its end-of-turn token (what the model must produce)."""
        if self.has_template:
            prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = self.tok.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                                tokenize=False)
            tail = full[len(prompt):] if full.startswith(prompt) else completion
            ids = self.tok(tail, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tok(completion, add_special_tokens=False)["input_ids"]
        for i, t in enumerate(ids):
            if t in self.end_ids:
                return ids[: i + 1]   # drop what the template adds after the end of turn ("\n")
        return ids + [self.tok.eos_token_id]

    def encode(self, record: dict) -> Encoded:
        """Prompt + completion ids with labels on the completion only; over-long prompts are cut in the middle."""
        if is_raw_text(record):
            ids = self.tok(record.get("text") or "", add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            cut = len(ids) > self.cfg.data.max_length
            ids = ids[: self.cfg.data.max_length]
            return Encoded(ids, list(ids), cut)
        msgs = self.prompt_messages(record)
        completion = self.completion_text(record)
        c_ids = self.completion_ids(msgs, completion if completion is not None else "")
        p_ids = self.prompt_ids(msgs)
        if len(c_ids) > self.cfg.data.max_length:
            # The answer alone does not fit: cut it, which loses its end-of-turn token, and let the
            # EOS guard refuse the row rather than train on an answer that never ends.
            c_ids = c_ids[: self.cfg.data.max_length]
        budget = self.cfg.data.max_length - len(c_ids)
        truncated = len(p_ids) > budget
        if truncated:
            # Keep the template header (system prompt, turn markers) and the end of the user turn,
            # which carries the question and the assistant header; cut the middle.
            head = max(budget // 4, 0)
            p_ids = p_ids[:head] + p_ids[len(p_ids) - (budget - head):] if budget > 0 else []
        labels = [IGNORE] * len(p_ids) + (list(c_ids) if completion is not None else [IGNORE] * len(c_ids))
        return Encoded(p_ids + c_ids, labels, truncated)


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that end an assistant turn: EOS plus the special token the chat template closes turns with."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": "q"}]
        prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": "a"}], tokenize=False)
        if full.startswith(prompt):
            special = set(tokenizer.all_special_ids)
            for t in tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]:
                if t in special:
                    ids.add(t)
                    break
    return ids


def encode_split(renderer: Renderer, records: list[dict], split: str, labels: list[str] | None = None
                 ) -> tuple[list[dict], RenderStats]:
    """Encode every record of a split for a causal LM and run the supervision guards (`labels` is unused:
    a label is a completion like any other).

    Raises:
        RenderError: rows with zero supervised tokens, or whose end-of-turn token is not supervised.
    """
    out, stats, bad = [], RenderStats(), []
    for rec in records:
        enc = renderer.encode(rec)
        stats.examples += 1
        if enc.truncated:
            stats.truncated += 1
            stats.truncated_rows.append(rec.get("id", "?"))
        problem = supervision_problem(enc.labels, renderer.end_ids, needs_end=not is_raw_text(rec))
        if problem:
            bad.append(f"  - {rec.get('id', '?')}: {problem}")
        out.append({"input_ids": enc.input_ids, "labels": enc.labels, "id": rec.get("id")})
    if bad:
        raise RenderError(f"{split}: {len(bad)} example(s) cannot be trained on:\n" + "\n".join(bad[:20])
                          + ("\n  ..." if len(bad) > 20 else ""))
    return out, stats


def supervision_problem(labels: list[int], end_ids: set[int], needs_end: bool = True) -> str | None:
    """Why an example teaches nothing (or, when it must end its turn, never to stop), or None when it is fine."""
    supervised = [t for t in labels if t != IGNORE]
    if not supervised:
        return ("zero supervised tokens (empty answer, or the answer was truncated away by "
                "data.max_length)")
    if needs_end and supervised[-1] not in end_ids:
        return ("the end-of-turn/EOS token is not supervised, so the model would never learn to stop "
                "(is the answer longer than data.max_length, or are pad and EOS the same token and "
                "masked as padding?)")
    return None


def check_batch(batch: dict, end_ids: set[int], n_examples: int) -> None:
    """Guard on a collated batch: each of its `n_examples` sequences still has a supervised end-of-turn token.

    This catches the pad == eos trap in a collator (masking pad ids also masks the real EOS), whatever
    the batch layout (padded rows, packed or shared-prefix rows).
    """
    labels = batch["labels"]
    ends = sum(int((labels == t).sum()) for t in end_ids)
    sup = labels[labels != IGNORE]
    if ends < n_examples or sup.numel() == 0 or int(sup[-1]) not in end_ids:
        raise RenderError(f"collated batch: only {ends} of {n_examples} sequences have a supervised end-of-turn "
                          "token: the end-of-turn/EOS token is not supervised, so the model would never learn "
                          "to stop (are pad and EOS the same token and masked as padding by the collator?)")


def encode_labels(renderer: Renderer, records: list[dict], split: str, labels: list[str]
                  ) -> tuple[list[dict], RenderStats]:
    """Text -> token ids (truncated to data.max_length) and the label's index, for a classification head."""
    index = {label: i for i, label in enumerate(labels)}
    max_length = renderer.cfg.data.max_length
    out, stats = [], RenderStats()
    for rec in records:
        ids = renderer.tok(renderer.user_text(rec), truncation=True, max_length=max_length)["input_ids"]
        stats.examples += 1
        if len(ids) >= max_length:
            stats.truncated += 1
            stats.truncated_rows.append(rec.get("id", "?"))
        out.append({"input_ids": ids, "labels": index[str(rec["output"])]})
    return out, stats
