"""The `train` stage (`stage.py`): records -> token ids (`render.py`) -> batches (`collate.py`) -> our
`Trainer` subclass (`trainer.py`) with the task's objective (`loss.py`), guards and `best/` (`callbacks.py`),
and optional tracking sinks (`tracking.py`)."""
