"""`tunelab.load(run_dir)`: a fine-tuned model ready to predict, built exactly as evaluation built it.

The same renderer (template, system message, chat template), the same label trie and decoder, the same
classification head: what `predict` answers for a test record is what evaluation scored.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.core.errors import UserError
from tunelab.core.records import Record, new_record
from tunelab.core.rundir import RunDir
from tunelab.methods import load_trained
from tunelab.models import choose_precision, load_tokenizer
from tunelab.tasks import TASKS
from tunelab.train.render import Renderer


class Predictor:
    """A trained run's model with its tokenizer, renderer and (for label sets) label trie.

    Args:
        run_dir: a run folder whose training completed.
        allow_incomplete: use whatever `best/` holds even if training did not complete.
    """

    def __init__(self, run_dir: Path | str | RunDir, allow_incomplete: bool = False):
        self.rd = run_dir if isinstance(run_dir, RunDir) else RunDir.open(Path(run_dir))
        best = self.rd.require_trained(allow_incomplete)
        self.cfg = self.rd.config()
        self.task = TASKS[self.cfg.task]
        manifest = self.rd.data.manifest()
        self.labels: list[str] | None = manifest.get("labels")
        self.input_columns: list[str] = ((manifest.get("columns") or {}).get("input")
                                         or self.cfg.data.input_columns or ["text"])
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.model = load_trained(self.cfg.model, best, self.cfg.task, labels=self.labels, method=self.cfg.method)
        self.model.eval()
        self.renderer = Renderer(self.tokenizer, self.cfg)
        self.precision = choose_precision(self.cfg.train)
        self.trie = None
        if self.task.serving == "chat":
            from tunelab.evaluate.generative import is_closed_set, label_trie

            if is_closed_set(self.cfg, self.labels):
                self.trie = label_trie(self.renderer, self.labels, self.record(""))

    def record(self, value: str | dict) -> Record:
        """A record from raw input: a string for the (first) input column, or a dict of input columns."""
        rec = new_record("input", "request")
        rec["input"] = dict(value) if isinstance(value, dict) else {self.input_columns[0]: value}
        return rec

    def prompt_ids(self, rec: Record) -> list[int]:
        """The token ids of the prompt the fine-tuned model sees for `rec` (as in training and evaluation)."""
        return self.renderer.prompt_ids(self.renderer.prompt_messages(rec))

    def predict(self, inputs: list[str | dict]) -> list[str]:
        """The model's answer for each input: a label of the run's label set, or generated text.

        Raises:
            UserError: the run's task has no answer to give (continued pretraining scores text only).
        """
        records = [self.record(x) for x in inputs]
        if self.task.serving == "classify":
            from tunelab.evaluate.classifier import head_predictions

            texts = [self.renderer.user_text(r) for r in records]
            return head_predictions(self.model, self.tokenizer, texts, self.labels, self.precision,
                                    self.cfg.eval.batch_size, self.cfg.data.max_length)
        if self.task.serving == "chat":
            from tunelab.evaluate.generative import Generator

            gen = Generator(self.cfg, self.tokenizer, self.renderer, self.trie, self.precision)
            return gen.predict(self.model, [self.prompt_ids(r) for r in records], desc="predicting")
        raise UserError(f"a {self.cfg.task} run scores text; it does not answer inputs")
