"""The `monitor` stage: production traffic against the run's own training data (`stage.py`: drift, quality,
operations over sliding windows -> monitor/ and retrain_recommendation.json), the same checks inside
`tunelab serve` (`live.py`), and champion/challenger retraining with promotion (`retrain.py`, `deployment.py`)."""
