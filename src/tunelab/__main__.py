"""`python -m tunelab`: the CLI, as `accelerate launch -m tunelab train CONFIG` starts it in each process."""

from tunelab.cli import app

app(prog_name="tunelab")
