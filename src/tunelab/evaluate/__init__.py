"""The `evaluate` stage (`stage.py`): the fine-tuned model against zero-/few-shot baselines of the same base
model, on the same test examples, with the same metrics (`metrics.py`), intervals and paired tests
(`significance.py`), and the forgetting probe (`forgetting.py`). One evaluator per kind of task:
`generative.py` (constrained or free decoding, `decoding.py`, `prompts.py`), `classifier.py`, `lm.py`;
what they share is `common.py`."""
