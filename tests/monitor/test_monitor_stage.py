"""`tunelab monitor` on a real tiny run with traffic written by a contract-following writer: same-distribution
traffic stays quiet, a shift to an unseen intent is flagged with a recommendation, prompt logging off says
which checks could not run, bad log lines and feedback files are refused with file, line and field."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import SEEN, UNSEEN, write_csv
from request_log import entry, write
from tunelab.cli import app
from tunelab.config import ModelConfig
from tunelab.config.monitor import MonitorConfig
from tunelab.core.rundir import RunDir
from tunelab.models import load_tokenizer
from tunelab.monitor import stage


def _traffic(project, n_seen: int, n_unseen: int, model: str = "bank", log_prompts: bool = True,
             offset: int = 0) -> list[dict]:
    """n_seen requests of the seen intents, then n_unseen of the unseen one (answered with a seen label,
    as the champion must), each labelled with what the model answered."""
    fresh = project["fresh"]
    texts = [(fresh[SEEN[i % 2]][i // 2], SEEN[i % 2]) for i in range(n_seen)]
    texts += [(fresh[UNSEEN][i], SEEN[i % 2]) for i in range(n_unseen)]
    tok = load_tokenizer(ModelConfig(name=str(project["model"])))
    # Prompt tokens as the server counts them for a classification head: the text, truncated at max_length.
    count = lambda t: len(tok(t, truncation=True, max_length=32)["input_ids"])  # noqa: E731
    return [entry(t, l, i=offset + i, model=model, log_prompts=log_prompts, prompt_tokens=count(t),
                  route="/v1/classifications") for i, (t, l) in enumerate(texts)]


def test_quiet_on_same_distribution_then_flags_the_unseen_intent(intents_project, champion, tmp_path):
    rd = RunDir(champion)
    quiet = write(tmp_path / "quiet.jsonl", _traffic(intents_project, 120, 0))
    out = stage.run(rd, [quiet])
    assert out.status["state"] == "ok", out.status["alerts"]
    assert not rd.retrain_recommendation.exists()
    drifted = write(tmp_path / "drift.jsonl", _traffic(intents_project, 120, 150))
    out = stage.run(rd, [drifted])
    st = json.loads(rd.monitor_status.read_text())
    assert st["state"] == "drift" and st["drift_detected"]["requests_seen"] <= 120 + 60 + 30 + 30
    rec = json.loads(rd.retrain_recommendation.read_text())
    assert rec["recommend"] == "retrain" and any("input drift" in r for r in rec["reasons"])
    cands = [json.loads(l) for l in rd.monitor_candidates.read_text().splitlines()]
    assert cands and sum(c["input"] in intents_project["fresh"][UNSEEN] for c in cands[:20]) >= 15
    html = rd.monitor_report.read_text()
    assert "Input drift" in html and "data:image/png;base64" in html and "Retrain recommended" in html


def test_without_prompt_logging_it_says_what_could_not_run(intents_project, champion, tmp_path):
    log = write(tmp_path / "requests.jsonl", _traffic(intents_project, 60, 60, log_prompts=False))
    out = stage.run(RunDir(champion), [log])
    assert "input drift" in out.status["not_run"] and "log_prompts" in out.status["not_run"]["input drift"]
    assert out.status["not_run"]["embedding_mmd"].startswith("the request log holds no input text")
    latest = out.status["latest"]["checks"]
    assert latest["length"]["skipped"] is None and latest["labels"]["skipped"] is None


def test_bad_log_line_names_file_line_and_field(intents_project, champion, tmp_path):
    rows = _traffic(intents_project, 3, 0)
    rows[1]["status"] = "200"
    path = write(tmp_path / "bad.jsonl", rows)
    path.write_text(path.read_text() + "{not json\n")
    result = CliRunner().invoke(app, ["monitor", str(champion), "--requests", str(path)])
    assert result.exit_code == 2
    assert "bad.jsonl:2 [status]" in result.output and "bad.jsonl:4" in result.output and "malformed_json" in result.output


def test_feedback_quality_decline_and_dropped_rows(intents_project, champion, tmp_path):
    rows = _traffic(intents_project, 60, 60)
    log = write(tmp_path / "requests.jsonl", rows)
    labelled = [(r["input"], UNSEEN if i >= 60 else r["label"]) for i, r in enumerate(rows)]
    fb = write_csv(tmp_path / "feedback.csv", labelled + [("unknown request", "card_arrival")],
                   {"request_id": [r["request_id"] for r in rows] + ["nope"]})
    out = stage.run(RunDir(champion), [log], feedback=fb)
    q = out.status["quality"]
    assert q["matched"] == 120 and q["dropped"] == {"request_not_in_log": 1}
    assert q["latest"]["check"]["fired"] and q["latest"]["metrics"]["accuracy"]["value"] < 0.2
    bad = tmp_path / "nofield.csv"
    bad.write_text("text,category\nhello,card_arrival\n")
    with pytest.raises(Exception, match="nofield.csv:1 \\[request_id\\]"):
        stage.run(RunDir(champion), [log], feedback=bad)
    assert RunDir(champion).monitor_report.is_file()      # the last good report stays
    assert RunDir(champion).stage_state("monitor") == "failed"


def test_step_larger_than_window_is_a_config_error():
    with pytest.raises(ValueError, match="monitor.step"):
        MonitorConfig(window=50, step=60)
