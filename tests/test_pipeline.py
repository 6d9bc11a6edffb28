"""The spine end to end on a tiny model: CLI run, run-folder contents, what training changed, guards."""

import csv
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tiny import tiny_llama
from tunelab.cli import app
from tunelab.config import load_config
from tunelab.data.stage import prepare
from tunelab.models import load_model, load_tokenizer
from tunelab.core.rundir import RunDir
from tunelab.train.stage import run as train
from tunelab.train.trainer import TrainingStopped

INTENTS = {
    "card": ["my card has not arrived", "where is my new card", "card delivery is late",
             "I am still waiting on my card", "track my card please", "new card never came",
             "when will my card arrive", "my card is lost in the post"],
    "transfer": ["my transfer has not arrived", "why is my transfer pending", "the transfer failed",
                 "money sent to a friend is missing", "cancel my bank transfer", "transfer fee is wrong",
                 "how long does a transfer take", "my payment to rent did not go through"],
    "pin": ["I forgot my pin", "my pin is blocked", "change my pin at the atm", "pin not working",
            "reset the pin of my card", "wrong pin three times", "where do I see my pin", "unblock my pin"],
}


def write_data(folder):
    rows = [(t, label) for label, texts in INTENTS.items() for t in texts]
    with (folder / "train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for i, (t, label) in enumerate(rows):
            w.writerow([f"{t} ({i})", label])
    with (folder / "test.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for i, (t, label) in enumerate(rows[::2]):
            w.writerow([f"question {i}: {t.upper()} today?", label])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    write_data(root)
    model = tiny_llama(root / "tiny-llama")
    cfg = {"name": "tiny", "runs_dir": str(root / "runs"),
           "data": {"train": "train.csv", "test": "test.csv", "input_columns": ["text"],
                    "output_column": "category", "template": "Intent of: {text}", "max_length": 64,
                    "val_fraction": 0.2, "dedup": {"near": False}},
           "model": {"name": str(model)},
           "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
           "train": {"lr": 5e-3, "max_steps": 6, "batch_size": 4, "eval_every": 3, "log_every": 1,
                     "precision": "fp32", "threads": 1},
           "eval": {"baseline_per_class": 2, "few_shot_k": 2, "bootstrap_samples": 200,
                    "forgetting_tokens": 64}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_tunelab_run_end_to_end_through_the_cli(project):
    result = CliRunner().invoke(app, ["run", str(project / "cfg.yaml")])
    assert result.exit_code == 0, result.output
    rd = RunDir(project / "runs" / "tiny")
    for name in ["config.yaml", "metrics.jsonl", "metrics.json", "report.md", "loss.png", "predictions.jsonl",
                 "best/adapter_config.json", "best/adapter_model.safetensors", "best/tokenizer.json",
                 "last/adapter_model.safetensors", "data/manifest.json", "data/train.jsonl"]:
        assert (rd.path / name).exists(), name
    conf = yaml.safe_load(rd.config_path.read_text())
    assert conf["_meta"]["tunelab_version"] and "git_sha" in conf["_meta"]
    m = rd.metrics()
    for system in ("zero_shot", "few_shot", "finetuned"):
        assert {"accuracy", "f1_macro"} <= set(m["test"][system]), system
    assert m["test"]["finetuned"]["n"] == m["test"]["zero_shot"]["n"] == 6   # 2 per class
    assert m["test"]["finetuned_full_test"]["n"] == 12
    for key in ("tokens_per_second", "wall_seconds", "steps", "best_step"):
        assert key in m["train"]
    assert m["train"]["steps"] == 6
    log = rd.read_log()
    assert [r["step"] for r in log if "eval_loss" in r] == [3, 6]
    assert len([r for r in log if "loss" in r]) >= 6
    labels = set(INTENTS)
    preds = [json.loads(l) for l in (rd.path / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["prediction"] in labels for p in preds)
    assert "| fine-tuned |" in result.output and "| zero-shot (base) |" in result.output
    assert "Verdict: The fine-tuned model" in result.output and m["verdict"]["comparisons"]
    assert "Verdict:" in rd.report_md.read_text() and "Verdict:" in rd.report_html.read_text()


def test_lora_changed_and_base_is_bit_identical(project, tmp_path):
    cfg = load_config(project / "cfg.yaml", [f"runs_dir={tmp_path}", "name=inproc"])
    tok = load_tokenizer(cfg.model)
    rd = RunDir.create(cfg)
    result = train(cfg, rd, prepare(cfg, rd.data, tok), tok)
    fresh = load_model(cfg.model).state_dict()
    trained = dict(result.model.named_parameters())
    lora = {n: p for n, p in trained.items() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any(float(p.abs().sum()) > 0 for n, p in lora.items() if "lora_B" in n)  # B starts at zero
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in trained.items() if "lora_" not in n}
    assert base.keys() <= fresh.keys()
    for n, p in base.items():
        assert torch.equal(p, fresh[n]), n


def test_divergence_guard_stops_with_causes(project, tmp_path):
    cfg = load_config(project / "cfg.yaml", [f"runs_dir={tmp_path}", "name=diverge", "train.lr=1e12",
                                              "train.max_grad_norm=1e30", "train.max_steps=30"])
    tok = load_tokenizer(cfg.model)
    rd = RunDir.create(cfg)
    with pytest.raises(TrainingStopped, match="(NaN|nan|inf).*\n.*likely causes"):
        train(cfg, rd, prepare(cfg, rd.data, tok), tok)


def test_cli_reports_config_errors_without_traceback(project):
    result = CliRunner().invoke(app, ["run", str(project / "cfg.yaml"), "train.epoch=2"])
    assert result.exit_code == 2
    assert "did you mean 'train.epochs'" in result.output and "Traceback" not in result.output
