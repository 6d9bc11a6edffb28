"""Sentence embeddings for the drift checks: the embedded MiniLM encoder (or another encoder folder),
mean-pooled and L2-normalised exactly as evaluation's embedding baselines pool (evaluate/classifier.py)."""

from __future__ import annotations

import logging

import numpy as np

from tunelab.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)


class Encoder:
    """`encoder(texts) -> (n, d) array`; texts seen before are not encoded again (overlapping windows)."""

    def __init__(self, name: str, max_length: int = 128, batch_size: int = 64):
        from transformers import AutoModel

        from tunelab.models import choose_precision, load_tokenizer, local_folder

        model_cfg = ModelConfig(name=name)
        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        self.tokenizer = load_tokenizer(model_cfg)
        self.model = AutoModel.from_pretrained(local_folder(model_cfg)).eval()
        self.precision = choose_precision(TrainConfig())
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        from tunelab.evaluate.classifier import embed

        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            rows = embed(self.model, self.tokenizer, new, self.precision, self.batch_size, self.max_length).numpy()
            self.cache.update(zip(new, rows))
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])
