"""`tunelab.load(run_dir)`: a fine-tuned model ready to predict, built exactly as evaluation built it.

The same renderer (template, system message, chat template), the same label trie and decoder, the same
classification head: what `predict` answers for a test record is what evaluation scored. A folder
written by `tunelab export` loads too (its `tunelab_export.json` carries the run's config and labels),
and inputs are cleaned with the run's own string cleaning operations, as training text was.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import ModelConfig, config_from_dict
from tunelab.core.errors import UserError
from tunelab.core.records import Record, new_record
from tunelab.core.rundir import RunDir
from tunelab.data.clean import clean_text
from tunelab.export.bundle import is_export, read_export
from tunelab.methods import load_trained
from tunelab.models import choose_precision, load_tokenizer
from tunelab.tasks import TASKS
from tunelab.train.render import Renderer


class Predictor:
    """A trained run's model with its tokenizer, renderer and (for label sets) label trie.

    Args:
        run_dir: a run folder whose training completed, or an export folder (`tunelab export`).
        allow_incomplete: use whatever `best/` holds even if training did not complete.
        complete: require the whole run to be complete (serving), not only its training.
    """

    def __init__(self, run_dir: Path | str | RunDir, allow_incomplete: bool = False, complete: bool = False):
        path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
        self.rd: RunDir | None = None
        if is_export(path):
            info = read_export(path)
            self.cfg = config_from_dict(info["config"], source=str(path))
            self.name, weights, labels, columns = info.get("name") or self.cfg.name, path, info.get("labels"), info.get("columns") or {}
            self.tokenizer = load_tokenizer(ModelConfig(name=str(path.resolve())))   # saved by the export
        else:
            self.rd = run_dir if isinstance(run_dir, RunDir) else RunDir.open(path)
            weights = (self.rd.require_complete("serve it", allow_incomplete) if complete
                       else self.rd.require_trained(allow_incomplete))
            self.cfg = self.rd.config()
            manifest = self.rd.data.manifest()
            self.name, labels, columns = self.rd.name, manifest.get("labels"), manifest.get("columns") or {}
            self.tokenizer = load_tokenizer(self.cfg.model)
        self.task = TASKS[self.cfg.task]
        self.labels: list[str] | None = labels
        self.input_columns: list[str] = columns.get("input") or self.cfg.data.input_columns or ["text"]
        self.chat_shaped = bool(columns.get("chat"))    # trained on conversations: requests render as sent
        self.model = load_trained(self.cfg.model, weights, self.cfg.task, labels=self.labels)
        self.model.eval()
        self.renderer = Renderer(self.tokenizer, self.cfg)
        self.precision = choose_precision(self.cfg.train)
        self.model.to(self.precision.device)
        self.trie = None
        if self.task.serving == "chat":
            from tunelab.evaluate.generative import is_closed_set, label_trie

            if is_closed_set(self.cfg, self.labels):
                self.trie = label_trie(self.renderer, self.labels, self.record(""))

    def clean(self, text: str) -> str:
        """`text` cleaned by the run's string cleaning operations (data.clean), as its training text was."""
        return clean_text(text, self.cfg.data.clean, self.cfg.data.date_order)

    def record(self, value: str | dict) -> Record:
        """A record from raw input: a string for the (first) input column, or a dict of input columns."""
        rec = new_record("input", "request")
        raw = dict(value) if isinstance(value, dict) else {self.input_columns[0]: value}
        rec["input"] = {k: self.clean(str(v)) for k, v in raw.items()}
        return rec

    def messages_record(self, messages: list[dict]) -> Record:
        """A record holding a conversation (for runs trained on conversations), cleaned turn by turn."""
        rec = new_record("input", "request")
        rec["messages"] = [{"role": m["role"], "content": self.clean(m["content"])} for m in messages]
        return rec

    def prompt_ids(self, rec: Record) -> list[int]:
        """The token ids of the prompt the fine-tuned model sees for `rec` (as in training and evaluation)."""
        return self.renderer.prompt_ids(self.renderer.prompt_messages(rec))

    def user_text(self, rec: Record) -> str:
        """The text a classification head sees for `rec`: the templated user turn."""
        return self.renderer.user_text(rec)

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
