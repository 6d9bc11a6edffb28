"""The dashboard's data, without a server: run summaries and their cache, filters and sorting, the incremental
curve reader, the config diff, the New-run form generated from the schema, uploads, the predictions browser, a tuning
study's page data."""

from __future__ import annotations

import io
import json
import shutil

import pytest

from tunelab.config import Config, json_schema
from tunelab.core.rundir import DashboardDir, RunDir, StudyDir
from tunelab.ui import curves, index, newrun, studies
from tunelab.ui import predictions as preds
from tunelab.ui.compare import config_diff


@pytest.fixture
def runs(lab, tmp_path):
    shutil.copytree(lab["runs"], tmp_path / "runs")
    return tmp_path / "runs"


def test_summary_of_a_real_run(runs):
    s = index.summarize(RunDir(runs / "intents-a"))
    assert (s.status, s.task, s.method, s.metric) == ("complete", "sft", "lora", "accuracy")
    metrics = RunDir(runs / "intents-a").metrics()
    assert s.metric_value == metrics["test"]["finetuned"]["accuracy"]
    assert s.baseline in ("zero-shot (base)", "few-shot (base)") and s.baseline_value is not None
    best = max(metrics["test"]["zero_shot"]["accuracy"], metrics["test"]["few_shot"]["accuracy"])
    assert s.gain == pytest.approx(s.metric_value - best)
    assert s.train_seconds == metrics["train"]["wall_seconds"] and s.tokens_per_second > 0


def test_index_rereads_only_changed_runs(runs, monkeypatch):
    idx = index.RunIndex(runs)
    (runs / "_ui").mkdir()                      # the dashboard's own folder is not a run
    assert sorted(s.name for s in idx.summaries()) == ["intents-a", "intents-b"]
    reads = []
    monkeypatch.setattr(index, "read_row", lambda rd, stamp=None: (reads.append(rd.name) or index.Summary(rd.name, status="x"), False))
    idx.summaries()
    restarted = index.RunIndex(runs)                # a new server reads <runs>/_ui/index.json, not the runs
    assert [s.status for s in restarted.summaries()] == ["complete", "complete"]
    assert reads == []
    RunDir(runs / "intents-b").set_tags(["best", " best ", ""])
    assert {s.name: s.status for s in idx.summaries()}["intents-b"] == "x"      # the stub's row: it was re-read
    assert reads == ["intents-b"]
    shutil.rmtree(runs / "intents-a")
    assert [s.name for s in idx.summaries()] == ["intents-b"]


def test_select_filters_and_sorts_with_missing_values_last():
    rows = [index.Summary("b", status="complete", task="sft", metric_value=0.5, tags=["x"]),
            index.Summary("a", status="failed", task="sft"),
            index.Summary("c", status="complete", task="classification", metric_value=0.9)]
    assert [s.name for s in index.select(rows, sort="metric_value", desc=True)] == ["c", "b", "a"]
    assert [s.name for s in index.select(rows, sort="metric_value", desc=False)] == ["b", "c", "a"]
    assert [s.name for s in index.select(rows, status="complete", task="sft")] == ["b"]
    assert [s.name for s in index.select(rows, tag="x")] == ["b"]
    assert [s.name for s in index.select(rows, q="C", sort="name")] == ["c"]


def test_curves_are_read_incrementally(runs):
    rd = RunDir(runs / "intents-a")
    first = curves.since(rd, 0)
    n = len(first["points"]["loss"])
    assert n > 0 and first["points"]["eval_loss"] and not first["reset"]
    with rd.metrics_jsonl.open("a") as f:
        f.write(json.dumps({"step": 99, "loss": 1.0}) + "\n" + '{"step": 100, "lo')    # a line being written
    nxt = curves.since(rd, first["offset"])
    assert nxt["points"]["loss"] == [[99, 1.0]]
    with rd.metrics_jsonl.open("a") as f:
        f.write('ss": 0.5}\n')
    assert curves.since(rd, nxt["offset"])["points"]["loss"] == [[100, 0.5]]
    rd.metrics_jsonl.write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")      # the run was replaced
    again = curves.since(rd, nxt["offset"])
    assert again["reset"] and again["points"]["loss"] == [[1, 3.0]]


def test_config_diff_keeps_only_differing_keys():
    rows = config_diff({"a": {"name": "a", "train": {"lr": 1e-3, "epochs": 1}, "method": {"r": 4}},
                        "b": {"name": "b", "train": {"lr": 1e-4, "epochs": 1}, "method": {"r": 4, "alpha": 8}}})
    assert rows == [{"key": "method.alpha", "values": ["(absent)", 8]}, {"key": "train.lr", "values": [1e-3, 1e-4]}]


def test_form_covers_the_schema_and_writes_only_changes(tmp_path):
    fields = newrun.form_fields()
    keys = {f.key for fs in fields.values() for f in fs}
    schema = json_schema()
    for section in newrun.SECTIONS:
        props = schema["$defs"][Config.model_fields[section].annotation.__name__]["properties"]
        # maps (e.g. data.fields) are written in the form's YAML box, like nested sections
        scalar = {k for k, p in props.items() if "$ref" not in p and p.get("type") != "object"}
        assert {f"{section}.{k}" for k in scalar} <= keys, section
    form = {f.key: f.default for fs in fields.values() for f in fs}
    form.update({"name": "x", "data.train": "t.csv", "train.lr": "1e-3", "train.patience": "",
                 "method.target_modules": "q_proj, v_proj", "eval.forgetting": "false", "data.clean": "html",
                 "yaml": "data:\n  dedup: {near: false}\n"})
    raw = newrun.raw_config(form, tmp_path)
    assert raw["train"] == {"lr": 1e-3, "patience": None}
    assert raw["method"] == {"target_modules": ["q_proj", "v_proj"]}
    assert raw["eval"] == {"forgetting": False}
    assert raw["data"] == {"dedup": {"near": False}, "train": "t.csv", "clean": ["html"]}
    form["method.target_modules"] = "all-linear"
    assert "method" not in newrun.raw_config(form, tmp_path)          # back at its default: not written
    with pytest.raises(newrun.FormError, match="YAML box line 2"):
        newrun.raw_config({**form, "yaml": "data: [\n"}, tmp_path)


class _Upload:
    def __init__(self, name: str, data: bytes):
        self.filename, self.file = name, io.BytesIO(data)


def test_uploads_are_size_limited(tmp_path):
    dirs = DashboardDir(tmp_path)
    saved = newrun.save_upload(dirs, _Upload("../../train.csv", b"text,label\n"), 100)
    assert saved.parent.parent == dirs.uploads and saved.name == "train.csv" and saved.read_bytes() == b"text,label\n"
    with pytest.raises(newrun.FormError, match="larger than the dashboard accepts"):
        newrun.save_upload(dirs, _Upload("big.csv", b"x" * 101), 100)
    assert len(list(dirs.uploads.iterdir())) == 1                     # nothing left of the refused file


def test_predictions_browser_filters(runs):
    table = preds.scored(RunDir(runs / "intents-a"))
    assert {s for s, _ in table["systems"]} == {"finetuned", "zero_shot", "few_shot"}
    ft = preds.browse(table, system="finetuned")
    wrong = preds.browse(table, system="finetuned", outcome="wrong")
    right = preds.browse(table, system="finetuned", outcome="right")
    assert wrong["total"] + right["total"] == ft["total"] > 0
    assert all(r["prediction"] != r["reference"] for r in wrong["rows"])
    label = table["classes"][0]
    assert all(label in (r["reference"], r["prediction"]) for r in preds.browse(table, label=label)["rows"])


def test_form_refuses_remote_code(tmp_path):
    form = {f.key: f.default for fs in newrun.form_fields().values() for f in fs}
    form.update({"name": "x", "data.train": "t.csv", "model.trust_remote_code": "true"})
    with pytest.raises(newrun.FormError, match="trust_remote_code is refused"):
        newrun.build(form, {}, DashboardDir(tmp_path), tmp_path, 100)


def test_a_study_is_a_study_not_a_run(runs):
    sd = StudyDir(runs / "intents-study")
    assert sd.is_study() and not StudyDir(runs / "intents-a").is_study()
    assert RunDir(runs / "intents-a").summary_files()[index._STATUS].name == "status.json"
    assert "intents-study" not in [s.name for s in index.RunIndex(runs, persist=False).summaries()]
    assert [s.path.name for s in studies.study_dirs(runs)] == ["intents-study"]
    s = studies.summarize(sd)
    assert s["finished"] and s["problem"] is None and len(s["rows"]) == 2 and sum(s["states"].values()) == 2
    assert s["objective"] == "accuracy" and "best" not in s["header"]
    best = [r for r in s["rows"] if r["best"] == "True"]
    assert len(best) == 1 and s["best"] == {"number": best[0]["number"], "value": best[0]["accuracy"]}
    assert {"tune_report.html", "trials.csv", "best_config.yaml"} <= set(s["downloads"])
    sd.trials_csv.unlink()                      # a study still searching: its trial folders, no best yet
    searching = studies.summarize(sd)
    assert not searching["finished"] and searching["best"] is None
    assert [r["number"] for r in searching["rows"]] == [0, 1] and searching["header"] == ["number", "state", "folder"]
