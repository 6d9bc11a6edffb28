"""`tunelab estimate`: peak memory and wall time of a training run before it starts (`stage.py`), counted
from the architecture and the prepared data (`memory.py`), measured by a few calibration steps on this
machine (`calibrate.py`), with concrete advice when it will not fit (`advice.py`)."""
