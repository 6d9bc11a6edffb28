"""Tracking sinks through the Trainer's integrations, read back with TensorBoard's and MLflow's readers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from tests.tiny import tiny_examples, tiny_llama
from tunelab.core.rundir import RunDir
from tunelab.train import tracking
from tunelab.config import TrainConfig

SINK_VARS = ["TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR",
             "WANDB_MODE", "WANDB_PROJECT", "RANK", "LOCAL_RANK"]


@pytest.fixture
def clean_env(monkeypatch):
    for var in SINK_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_tiny_trainer_run_reaches_tensorboard_and_mlflow(tmp_path, clean_env):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "runs" / "tiny-run"
    env: dict[str, str] = {}
    kwargs = tracking.configure(TrainConfig(report_to=["tensorboard", "mlflow"]).report_to, RunDir(run_dir), environ=env)
    assert kwargs == {"report_to": ["tensorboard", "mlflow"], "run_name": "tiny-run"}
    for key, value in env.items():
        clean_env.setenv(key, value)

    path = tiny_llama(tmp_path / "llama")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    args = TrainingArguments(output_dir=str(run_dir / "trainer"), max_steps=4, logging_steps=1, learning_rate=1e-3,
                             per_device_train_batch_size=2, save_strategy="no", use_cpu=True, disable_tqdm=True,
                             **kwargs)
    Trainer(model=model, args=args, train_dataset=tiny_examples(tok, "sft", n=8)).train()

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("train/learning_rate")] == [1, 2, 3, 4]

    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tunelab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    tb_losses = [e.value for e in events.Scalars("train/loss")]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(tb_losses, rel=1e-5)
    assert float(run.data.params["learning_rate"]) == pytest.approx(1e-3)


def test_environment_keeps_user_choices_and_defaults_offline(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000", "WANDB_MODE": "online"}
    kwargs = tracking.configure(["mlflow", "wandb", "tensorboard"], RunDir(tmp_path / "runs" / "r1"), environ=env)
    assert kwargs["report_to"] == ["tensorboard", "mlflow", "wandb"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000" and env["WANDB_MODE"] == "online"
    assert env["WANDB_DIR"] == str((tmp_path / "runs" / "r1").resolve()) and env["WANDB_PROJECT"] == "tunelab"
    assert (tmp_path / "runs" / "r1" / "tensorboard").is_dir()
    fresh: dict[str, str] = {}
    tracking.configure(["wandb"], RunDir(tmp_path / "runs" / "r2"), environ=fresh)
    assert fresh["WANDB_MODE"] == "offline" and "MLFLOW_TRACKING_URI" not in fresh


def test_only_rank_zero_reports(tmp_path):
    env = {"RANK": "1", "LOCAL_RANK": "1"}
    assert tracking.configure(["tensorboard", "mlflow"], RunDir(tmp_path / "r"), environ=env) == {"report_to": "none"}
    assert set(env) == {"RANK", "LOCAL_RANK"}           # nothing set up on other ranks
    assert not (tmp_path / "r").exists()
    assert tracking.process_rank({"LOCAL_RANK": "0"}) == 0 and tracking.process_rank({}) == 0


def test_no_sinks_and_unknown_sinks():
    assert tracking.configure([], RunDir("runs/x"), environ={}) == {"report_to": "none"}
    with pytest.raises(ValueError, match="unknown sink"):
        tracking.configure(["comet"], RunDir("runs/x"), environ={})
    with pytest.raises(ValidationError):
        TrainConfig(report_to=["comet"])
