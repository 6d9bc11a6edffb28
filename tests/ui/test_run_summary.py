"""A run's summary file (`summary.json`, the runs-table row): written by a real run, kept in step by every
RunDir writer of the files it is computed from, and replaced by a read of those files when it is missing,
damaged or stale (the dashboard then stores it, so its next scan reads one small file per run)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from tunelab.core.files import atomic_write_json
from tunelab.core.rundir import RunDir
from tunelab.ui import index


@pytest.fixture
def runs(lab, tmp_path):
    shutil.copytree(lab["runs"], tmp_path / "runs")
    return tmp_path / "runs"


def test_a_real_run_writes_its_summary_file(lab):
    rd = RunDir(lab["made"]["intents-a"])          # made by tunelab.run in conftest (the session's lab)
    assert rd.summary_path.is_file()
    row = rd.read_summary()
    assert row is not None, "the summary file is not in step with the run's files"
    assert row == index.summarize(rd).as_dict()
    assert (row["status"], row["task"], row["method"], row["metric"]) == ("complete", "sft", "lora", "accuracy")
    test = rd.metrics()["test"]
    shown = test.get("finetuned_full_test") or test["finetuned"]   # the whole test set's when baselines used a subset
    assert row["metric_value"] == shown["accuracy"] and row["gain"] is not None
    assert row["train_seconds"] == rd.metrics()["train"]["wall_seconds"] and row["tokens_per_second"] > 0


def test_every_writer_keeps_the_summary_in_step(runs):
    rd = RunDir(runs / "intents-b")
    rd.set_tags(["best", "lr-1e-3"])
    assert rd.read_summary()["tags"] == ["best", "lr-1e-3"]
    test = rd.metrics()["test"]
    (test.get("finetuned_full_test") or test["finetuned"])["accuracy"] = 0.987
    rd.set_metrics("test", test)
    assert rd.read_summary()["metric_value"] == 0.987
    rd.update_metrics("train", {"wall_seconds": 42.0})
    assert rd.read_summary()["train_seconds"] == 42.0
    with rd.stage("report", fresh=False, derived=()):
        assert rd.read_summary()["status"] == "running"      # this process is alive
    with pytest.raises(RuntimeError), rd.stage("report", fresh=False, derived=()):
        raise RuntimeError("disk full")
    row = rd.read_summary()
    assert (row["status"], row["stage"]) == ("failed", "report") and "disk full" in row["error"]
    assert row == index.summarize(rd).as_dict()


def test_a_missing_damaged_or_stale_summary_is_read_from_the_run_files(runs):
    rd = RunDir(runs / "intents-a")
    truth = index.summarize(rd)
    rd.summary_path.unlink()                                   # a folder made by an older tunelab
    assert rd.read_summary() is None and index.read_row(rd) == (truth, True)
    rd.summary_path.write_text("{not json")                    # damaged
    assert rd.read_summary() is None and index.read_row(rd) == (truth, True)
    rd.refresh_summary()
    doc = rd.metrics()                                         # changed by hand, not through RunDir: stale
    (doc["test"].get("finetuned_full_test") or doc["test"]["finetuned"])["accuracy"] = 0.123
    atomic_write_json(rd.metrics_json, doc)
    assert rd.read_summary() is None
    row, summarized = index.read_row(rd)
    assert summarized and row.metric_value == 0.123


def test_odd_metrics_name_the_problem_and_never_fail_the_writer(runs):
    rd = RunDir(runs / "intents-a")
    rd.set_metrics("test", {"finetuned": {"accuracy": 0.9}, "zero_shot": {"accuracy": "n/a"}})   # no exception
    row = rd.read_summary()
    assert row["status"] == "complete" and "metrics.json" in row["problem"] and "TypeError" in row["problem"]


def test_the_index_reads_summary_files_and_stores_missing_ones(runs, monkeypatch):
    (runs / "_ui").mkdir()                                     # the dashboard's own folder is not a run
    RunDir(runs / "intents-b").summary_path.unlink()
    reads = []
    real = index.summarize
    monkeypatch.setattr(index, "summarize", lambda rd: reads.append(rd.name) or real(rd))
    idx = index.RunIndex(runs, persist=False)
    rows = {s.name: s for s in idx.summaries()}
    assert sorted(rows) == ["intents-a", "intents-b"] and reads == ["intents-b"]   # only the one without a file
    assert RunDir(runs / "intents-b").read_summary() == rows["intents-b"].as_dict()   # stored for the next scan
    idx.summaries()
    assert reads == ["intents-b"]                                # nothing changed: nothing re-read
    assert sorted(s.name for s in index.RunIndex(runs, persist=False).summaries()) == ["intents-a", "intents-b"]
    assert reads == ["intents-b"]                                # a fresh index reads summary files only
    RunDir(runs / "intents-a").set_tags(["x"])
    assert {s.name: s.tags for s in idx.summaries()}["intents-a"] == ["x"] and reads == ["intents-b"]


def test_a_copied_run_folder_reports_its_own_name(runs):
    shutil.copytree(runs / "intents-a", runs / "intents-copy")   # copytree keeps mtimes: the file stays in step
    row = RunDir(runs / "intents-copy").read_summary()
    assert row is not None and row["name"] == "intents-copy"


def test_the_runs_page_shows_what_a_long_scan_has_read_so_far(runs, monkeypatch):
    release, calls = threading.Event(), []
    real = index.read_row

    def slow(rd, stamp=None):                      # the second folder takes as long as the test wants
        calls.append(rd.name)
        if len(calls) == 2:
            release.wait(60)
        return real(rd, stamp)

    monkeypatch.setattr(index, "read_row", slow)
    idx = index.RunIndex(runs, persist=False)
    scan = threading.Thread(target=idx.summaries)  # the dashboard's start-up scan
    scan.start()
    try:
        t = time.monotonic()
        rows, left = idx.summaries_within(0.3)
        assert time.monotonic() - t < 5 and left >= 1 and [s.name for s in rows] == calls[:1]
    finally:
        release.set()
        scan.join(60)
    rows, left = idx.summaries_within(5)
    assert left == 0 and sorted(s.name for s in rows) == ["intents-a", "intents-b"]


def test_the_test_metric_is_the_whole_test_sets_and_the_gain_the_paired_one():
    """Baselines measured on a subset: the row shows the fine-tuned model on the whole test set, and the gain and
    p-value of the paired comparison on the subset."""
    from tunelab.report.summary import Summary, _metrics

    sub = {"n": 385, "accuracy": 0.90, "ci": {"accuracy": [0.87, 0.93]}, "p_value_vs": {"few_shot": 1e-60}}
    full = {"n": 3071, "accuracy": 0.9036, "ci": {"accuracy": [0.894, 0.914]}}
    base = {"n": 385, "accuracy": 0.16, "ci": {"accuracy": [0.13, 0.20]}}
    s = Summary(name="x")
    _metrics(s, {"test": {"finetuned": sub, "few_shot": base, "finetuned_full_test": full}})
    assert (s.metric_value, s.metric_ci) == (0.9036, [0.894, 0.914])
    assert s.gain == pytest.approx(0.74) and s.p_value == 1e-60 and s.baseline_value == 0.16
