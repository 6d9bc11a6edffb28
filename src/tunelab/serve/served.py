"""The models a server answers with: each run (or export) under its model id (the run name), and on
request the run's untuned base model, answering exactly as evaluation decoded.

How a request becomes a prompt (the "one renderer" rule: the run's own template, system message and
chat template, through `Predictor`, which evaluation's prompt builder shares):
- a run trained on single inputs takes the one user message as its input, fills the run's template
  with it and adds the run's system message; other turns are refused, not silently dropped;
- a run trained on conversations renders the messages as sent through the chat template;
- a base model renders the messages as sent (it is the plain instruct model);
- a classification head sees the templated user text, as in training.
What it answers follows `TASKS[task].serving`: "chat" generates (a label-set run decodes under the
label trie and always answers exactly one label), "classify" answers the head's label, "score"
(continued pretraining) only continues raw text through /v1/completions.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.errors import UserError
from tunelab.evaluate.decoding import Decoder
from tunelab.predictor import Predictor
from tunelab.serve.engine import Job
from tunelab.serve.errors import ApiError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What the model answered for one job."""
    tokens: list[int]
    text: str
    finish: str                      # "stop" or "length"
    label: str | None = None
    probabilities: dict[str, float] | None = None


class ServedModel:
    """One model id: a run's fine-tuned model, or (`base=True`) that run's untuned base model."""

    def __init__(self, model_id: str, predictor: Predictor, max_batch: int, base: bool = False,
                 parent: str | None = None, base_weights=None):
        self.id, self.predictor, self.is_base, self.parent = model_id, predictor, base, parent
        self.created = int(time.time())
        self.tokenizer = predictor.tokenizer
        self.model = base_weights if base_weights is not None else predictor.model
        self.serving = "chat" if base else predictor.task.serving
        self.labels = None if base else predictor.labels
        self.trie = None if base else predictor.trie
        self.task = predictor.cfg.task
        self.root = model_id if base else predictor.name
        self.decoder = None
        if self.serving != "classify":
            self.decoder = Decoder(self.model, predictor.precision, self.tokenizer.pad_token_id,
                                   predictor.renderer.end_ids, batch_size=max_batch)

    def _weights(self):
        """The base model of a PEFT run is the same weights with the adapter switched off for the batch."""
        if self.is_base and self.model is self.predictor.model:
            return self.model.disable_adapter()
        return nullcontext()

    # ------------------------------------------------------------ prompts (called off the event loop)

    def chat_prompt(self, messages: list[dict]) -> tuple[list[int] | str, str]:
        """The prompt (token ids, or the head's text) for chat `messages`, and the input text to log.

        Raises:
            ApiError: 400 when the messages do not fit how this model was trained.
        """
        p = self.predictor
        if self.serving == "score":
            raise ApiError(400, f"model {self.id!r} was trained by continued pretraining on raw text: it continues "
                           "text through /v1/completions and has no chat turns", "unsupported_model_task", "model")
        if self.is_base:
            return p.renderer.prompt_ids(messages), messages[-1]["content"]
        if p.chat_shaped and self.serving == "chat":
            rec = p.messages_record(messages)
            return p.prompt_ids(rec), messages[-1]["content"]
        users = [m for m in messages if m["role"] == "user"]
        others = [m for m in messages if m["role"] not in ("user", "system", "developer")]
        if len(users) != 1 or others:
            raise ApiError(400, f"model {self.id!r} was fine-tuned on single inputs rendered with its own template: "
                           "send exactly one user message (earlier turns are not part of its prompt)",
                           "invalid_messages", "messages")
        own = p.cfg.data.system or ""
        for m in messages:
            if m["role"] in ("system", "developer") and m["content"].strip() != own.strip():
                raise ApiError(400, f"model {self.id!r} renders its own system message "
                               f"({own!r}); omit the system message or send exactly that one",
                               "invalid_messages", "messages")
        return self.input_prompt(users[0]["content"])

    def input_prompt(self, value: str | dict) -> tuple[list[int] | str, str]:
        """The prompt for one raw input (a string, or a dict of input columns), rendered as the run renders it."""
        p = self.predictor
        try:
            rec = p.record(value)
            prompt = p.user_text(rec) if self.serving == "classify" else p.prompt_ids(rec)
        except UserError as e:   # e.g. the template names a column the dict lacks
            raise ApiError(400, str(e), "invalid_input", "input") from None
        return prompt, value if isinstance(value, str) else "\n".join(f"{k}: {v}" for k, v in value.items())

    def raw_prompt(self, text: str) -> list[int]:
        """Token ids of `text` as is (continued-pretraining runs, `raw` completions)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, prompt: list[int] | str) -> int:
        if isinstance(prompt, str):
            return len(self.tokenizer(prompt, truncation=True, max_length=self.predictor.cfg.data.max_length)["input_ids"])
        return len(prompt)

    # ------------------------------------------------------------ model work (the engine's worker thread)

    def run_batch(self, jobs: list[Job]) -> list[Outcome]:
        """Answer a batch of jobs of one kind for this model in shared forward passes."""
        with self._weights():
            kind = jobs[0].kind
            if kind == "head":
                return self._head(jobs)
            if kind == "labels":
                return [self._labels(j) for j in jobs]
            return self._generate(jobs)

    def _head(self, jobs: list[Job]) -> list[Outcome]:
        from tunelab.evaluate.classifier import head_probabilities

        p = self.predictor
        probs = head_probabilities(self.model, self.tokenizer, [j.prompt for j in jobs], p.precision, len(jobs),
                                   p.cfg.data.max_length)
        out = []
        for j, row in zip(jobs, probs.tolist()):
            label = self.labels[max(range(len(row)), key=row.__getitem__)]
            j.emit([])
            out.append(Outcome([], label, "stop", label, dict(zip(self.labels, row))))
        return out

    def _labels(self, job: Job) -> Outcome:
        index, probs = self.decoder.label_scores(job.prompt, self.trie)
        label = self.trie.labels[index]
        tokens = [t for t in self.trie.sequences()[index] if t not in self.decoder.end_ids]
        job.emit(tokens)
        return Outcome(tokens, label, "stop", label, dict(zip(self.trie.labels, probs)))

    def _generate(self, jobs: list[Job]) -> list[Outcome]:
        constrained = jobs[0].constrained
        decoded = self.decoder.run([j.prompt for j in jobs], self.trie if constrained else None,
                                   [j.max_tokens for j in jobs], ignore_eos=[j.ignore_eos for j in jobs],
                                   on_token=lambda i, ids: jobs[i].emit(ids))
        out = []
        for j, d in zip(jobs, decoded):
            if constrained and d.label is not None:
                label = self.trie.labels[d.label]
                out.append(Outcome(d.tokens, label, "stop", label))
                continue
            text = self.tokenizer.decode(d.tokens, skip_special_tokens=True)
            finish = "stop" if d.stopped else "length"
            if j.stop_text is not None and j.stop_text(d.tokens):
                finish = "stop"
            out.append(Outcome(d.tokens, text, finish))
        return out


def _base_id(name: str) -> str:
    return Path(name).name if ("/" in name or name.startswith(".")) and Path(name).exists() else name


def load_models(paths: list[Path], max_batch: int, serve_base: bool = False,
                allow_incomplete: bool = False) -> dict[str, ServedModel]:
    """Load every run or export folder (and with `serve_base` their base models), keyed by model id.

    Raises:
        RunDirError: a run that is not complete (serving refuses it, saying why).
        UserError: two folders with the same run name.
    """
    from tunelab.models import load_model

    served: dict[str, ServedModel] = {}
    for path in paths:
        p = Predictor(path, allow_incomplete=allow_incomplete, complete=True)
        if p.name in served:
            raise UserError(f"two served folders are both named {p.name!r} ({path}): model ids must be unique; "
                            "serve an export of one of them under another run name")
        parent = _base_id(p.cfg.model.name)
        served[p.name] = ServedModel(p.name, p, max_batch, parent=parent)
        log.info(f"serving {p.name} ({p.cfg.task}, {p.task.serving}"
                 + (f", {len(p.labels)} labels" if p.labels and p.task.serving != "score" else "") + f") from {path}")
        if not serve_base or parent in served:
            continue
        if p.task.serving == "classify":
            log.info(f"not serving the base of {p.name}: a classification base model has no head to answer with")
            continue
        peft = hasattr(p.model, "disable_adapter")
        weights = None if peft else load_model(p.cfg.model, p.cfg.task).eval().to(p.precision.device)
        served[parent] = ServedModel(parent, p, max_batch, base=True, base_weights=weights)
        log.info(f"serving base model {parent}" + (" (the adapter switched off)" if peft else ""))
    return served
