"""Every dashboard page over the real demo run (Banking77, 77 classes, 3,071 test predictions), in real headless
Chromium, with a full-page screenshot of each for the closing note.

Runs only when a demo run folder is given: `TUNELAB_DEMO_RUN=runs/banking77-lora` (a finished `tunelab run` of the
Banking77 example); it is copied first, never written to. CI has no demo run, so there the test is skipped
like everywhere else without one. Screenshots go to $TUNELAB_SCREENSHOTS (default build/screenshots/ui/), named
`demo-*.png`. The compare page compares the demo run with a copy of it whose config.yaml says another LoRA rank
and learning rate (same metrics: only the config diff differs). The same `tunelab ui` process serves the demo
run's model (`--serve`), so the playground pages (served models, classify, model card) are shot too.

    TUNELAB_DEMO_RUN=runs/banking77-lora TUNELAB_SCREENSHOTS=/tmp/ui_demo_shots \\
        .venv/bin/python -m pytest -q -m slow tests/ui/test_demo_screenshots.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browser import chromium_page, shot
from tunelab.config import config_from_dict
from tunelab.core.rundir import RunDir
from uiserver import running

DEMO = os.environ.get("TUNELAB_DEMO_RUN")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not DEMO, reason="no demo run folder given (TUNELAB_DEMO_RUN=runs/banking77-lora, a finished run of the Banking77 "
                     "example); CI has none, so it is skipped there too")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A runs folder holding a copy of the demo run and a second copy whose config differs (rank, learning rate)."""
    src = RunDir.open(Path(DEMO))
    runs = tmp_path_factory.mktemp("demo") / "runs"
    runs.mkdir()
    shutil.copytree(src.path, runs / src.name)
    other = RunDir(runs / f"{src.name}-r8")
    shutil.copytree(src.path, other.path)
    raw = src.raw_config()
    raw["name"] = other.name
    raw["method"]["r"], raw["train"]["lr"] = 8, raw["train"]["lr"] * 2
    other.write_config(config_from_dict(raw))
    return {"runs": runs, "run": RunDir(runs / src.name), "other": other}


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    with running(demo["runs"], tmp_path_factory.mktemp("demo-ui"), "--serve", str(demo["run"].path)) as dash:
        yield dash


@pytest.fixture(scope="module")
def page(server):
    with chromium_page() as pg:
        pg.goto(server.url + "/ui/login")
        shot(pg, "demo-00-sign-in", full=True)
        pg.fill("#api_key", server.key)
        pg.click("#signin")
        pg.wait_for_load_state()
        yield pg


def test_runs_table(page, server, demo):
    page.goto(server.url + "/ui/runs")
    assert page.locator("#runs tbody tr").count() == 2
    row = page.locator(f"#runs tbody tr[data-run={demo['run'].name}]").inner_text()
    assert "complete" in row and "classification" in row and "lora" in row and "accuracy" in row
    assert "base)" in row                                  # the best baseline, zero- or few-shot
    shot(page, "demo-01-runs", full=True)
    assert page.console.errors == []


def test_run_page(page, server, demo):
    rd = demo["run"]
    page.goto(server.url + f"/ui/runs/{rd.name}")
    page.wait_for_function("() => +document.querySelector('#chart-loss').dataset.points > 0", timeout=60_000)
    for section in ("summary", "data", "test", "classification", "samples", "config", "downloads"):
        assert page.locator(f"section#{section}").count() == 1, section
    assert "not measured" not in page.locator("section#test").inner_text()
    labels = rd.data.manifest()["labels"]
    assert len(labels) == 77
    shot(page, "demo-02-run", full=True)
    assert page.console.errors == []


def test_predictions_browser(page, server, demo):
    rd = demo["run"]
    page.goto(server.url + f"/ui/runs/{rd.name}/predictions")
    assert page.locator("#predictions tbody tr").count() == 50          # one page of 3,071 x systems
    shot(page, "demo-03-predictions", full=True)
    page.goto(server.url + f"/ui/runs/{rd.name}/predictions?system=finetuned&outcome=wrong")
    rows = page.locator("#predictions tbody tr")
    assert rows.count() >= 1 and all(rows.nth(i).get_attribute("class") == "wrong" for i in range(rows.count()))
    shot(page, "demo-04-predictions-finetuned-wrong", full=True)
    label = rd.data.manifest()["labels"][0]
    page.goto(server.url + f"/ui/runs/{rd.name}/predictions?label={label}")
    assert page.locator("#predictions tbody tr").count() >= 1
    shot(page, "demo-05-predictions-one-class", full=True)
    assert page.console.errors == []


def test_compare(page, server, demo):
    page.goto(server.url + "/ui/runs")
    page.check(f"input[value={demo['run'].name}]")
    page.check(f"input[value={demo['other'].name}]")
    page.click("#compare-selected")
    page.wait_for_url("**/ui/compare?**")
    diff = page.locator("#diff").inner_text()
    assert "method.r" in diff and "train.lr" in diff and "data.train" not in diff and "runs_dir" not in diff
    assert page.locator("#metrics-table tbody tr").count() == 2
    page.wait_for_function("() => +document.querySelector('#chart-loss').dataset.points > 0", timeout=60_000)
    shot(page, "demo-06-compare", full=True)
    assert page.console.errors == []


def test_new_run_jobs_and_studies(page, server):
    page.goto(server.url + "/ui/new")
    assert page.locator("form").count() >= 1
    shot(page, "demo-07-new-run", full=True)
    page.goto(server.url + "/ui/jobs")
    shot(page, "demo-08-jobs", full=True)
    page.goto(server.url + "/ui/studies")                 # the demo folder holds no tuning study: the empty list
    shot(page, "demo-09-studies", full=True)
    assert page.console.errors == []


def test_playground_of_the_served_demo_model(page, server, demo):
    name = demo["run"].name
    page.goto(server.url + "/ui/")
    assert name in page.locator("main").inner_text()
    shot(page, "demo-10-served-models", full=True)
    page.goto(server.url + f"/ui/classify?model={name}")
    page.fill("#text", "I lost my card yesterday, how do I block it?")
    page.click("#classify")
    page.wait_for_selector("#label")
    labels = set(demo["run"].data.manifest()["labels"])
    assert page.locator("#label").inner_text() in labels
    assert page.locator("#probabilities tbody tr").count() == len(labels)
    shot(page, "demo-11-classify", full=True)
    page.goto(server.url + f"/ui/models/{name}")
    shot(page, "demo-12-model-card", full=True)
    assert page.console.errors == []
