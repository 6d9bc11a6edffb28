"""The `export` stage (`stage.py`): a run's model as a folder any loader can serve, with its model card
(`card.py`)."""
