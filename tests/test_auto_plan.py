"""`train.epochs: auto` / `train.eval_every: auto`: training length and validation cadence decided from the
data, logged, kept in metrics.json, and what the Trainer actually ran."""

import logging

import pytest

from test_pipeline import tiny_project
from tunelab.config import config_from_dict, load_config
from tunelab.core.rundir import RunDir
from tunelab.data.stage import prepare
from tunelab.models import load_tokenizer
from tunelab.train import auto
from tunelab.train.stage import run as train


def _cfg(**train):
    return config_from_dict({"name": "x", "task": "classification", "data": {"train": "a.csv"},
                             "train": {"epochs": "auto", "eval_every": "auto", "batch_size": 32, **train}})


@pytest.mark.parametrize("examples, classes, epochs, steps", [
    (8887, 77, 3, 834),         # Banking77: the 3 epochs (834 steps) the demo was measured with
    (12_400, 7, 2, 776),        # a larger data set: fewer passes for about the same examples seen
    (15_000, 150, 3, 1407),     # many classes: ~300 examples seen per class
    (500, 4, 10, 160),          # small: at most 10 epochs
    (100_000, 10, 1, 3125),     # large: at least one epoch
])
def test_auto_epochs_follow_size_and_classes(examples, classes, epochs, steps):
    cfg, decided = auto.resolve(_cfg(), examples, classes, quiet=True)
    assert cfg.train.epochs == epochs and cfg.train.max_steps is None
    assert decided["epochs"]["epochs"] == epochs and decided["epochs"]["steps"] == steps
    assert 6 <= steps / cfg.train.eval_every <= 10 and cfg.train.eval_every == decided["eval_every"]


def test_explicit_values_are_kept():
    cfg = _cfg(epochs=2, eval_every=7)
    assert auto.resolve(cfg, 1000, 5) == (cfg, {})
    resolved, decided = auto.resolve(_cfg(max_steps=40), 1000, 5, quiet=True)   # max_steps wins over auto
    assert resolved.train.max_steps == 40 and "epochs" not in decided and decided["eval_every"] == 5
    assert resolved.train.epochs == 1.0


def test_bad_values_name_the_field():
    for section, words in (({"epochs": "soon"}, "train.epochs"), ({"eval_every": 2.5}, "train.eval_every")):
        with pytest.raises(Exception, match=f"{words}.*above 0 or 'auto'"):
            _cfg(**section)


def test_a_run_with_auto_trains_what_it_logged(tmp_path, caplog):
    path = tiny_project(tmp_path, train={"epochs": "auto", "eval_every": "auto", "max_steps": None})
    cfg = load_config(path)
    tok = load_tokenizer(cfg.model)
    rd = RunDir.create(cfg)
    prepared = prepare(cfg, rd.data, tok)
    n = len(prepared.splits["train"])
    with caplog.at_level(logging.INFO, logger="tunelab"):
        result = train(cfg, rd, prepared, tok)
    per_epoch = -(-n // 4)
    decided = rd.metrics()["train"]["auto"]
    # 3 intents x a few examples: 27,000 examples seen is far beyond 10 epochs, so 10 epochs it is.
    assert decided["epochs"]["steps"] == 10 * per_epoch == result.stats["steps"]
    assert decided["eval_every"] == max(1, 10 * per_epoch // 8)
    text = caplog.text
    assert f"train.epochs auto: {n:,} training examples" in text and "10 epochs (at most 10)" in text
    assert "train.eval_every auto: validation every" in text
