"""The `report` stage (`stage.py`): report.md (`markdown.py`), the self-contained report.html (`html.py`),
their shared plots (`plots.py`), and `tunelab compare` across runs (`compare.py`)."""
