"""The `tune` stage: hyper-parameter search with Optuna, where every trial is an ordinary tunelab run
(`stage.py`: the verb; `space.py`, `objective.py`, `study.py`, `trial.py`, `workers.py`, `final.py`,
`report.py`). Optuna is imported only inside this package (`pip install tunelab[tune]`)."""
