"""New run and Cancel in real headless Chromium: the form (generated from the config schema) with uploaded data
files, Validate showing data problems with file:line, Start -> the job runs `tunelab run` -> the run completes
and appears in the runs table; a long run is cancelled from its page and ends `interrupted`."""

from __future__ import annotations

import time

from browser import shot
from tunelab.core.rundir import RunDir

JOB_TIMEOUT_S = 240


def fill_form(page, dashboard, name: str, train_file, **fields) -> None:
    """The New-run form for a tiny LoRA run of the tiny model on `train_file` (uploaded) and the test file."""
    lab = dashboard.lab
    page.goto(dashboard.url + "/ui/new")
    values = {"name": name, "data.input_columns": "text", "data.output_column": "category",
              "data.template": "Intent of: {text}", "data.max_length": "64", "data.val_fraction": "0.2",
              "model.name": str(lab["model"]), "method.r": "4", "method.alpha": "8",
              "method.target_modules": "q_proj, v_proj", "train.lr": "0.005", "train.max_steps": "6",
              "train.batch_size": "4", "train.eval_every": "3", "train.log_every": "1", "train.precision": "fp32",
              "train.threads": "1", "train.patience": "", "eval.baseline_per_class": "2", "eval.few_shot_k": "2",
              "eval.bootstrap_samples": "100", **fields}
    for key, value in values.items():
        target = "#f-" + key.replace(".", "-")
        if page.locator(target).evaluate("e => e.tagName") == "SELECT":
            page.select_option(target, value)
        else:
            page.fill(target, value)
    page.uncheck("#f-eval-forgetting")
    page.set_input_files("#upload-train", str(train_file))
    page.set_input_files("#upload-test", str(lab["data"]["test"]))
    page.fill("#yaml", "data:\n  dedup: {near: false}\n")


def wait_state(dashboard, name: str, states: tuple[str, ...], timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        rd = RunDir(dashboard.runs / name)
        if rd.is_run() and rd.state() in states:
            return rd.state()
        time.sleep(0.5)
    raise AssertionError(f"{name} did not reach {states} in {timeout_s}s:\n{dashboard.log.read_text()[-3000:]}")


def wait_job(page, dashboard, name: str, states: tuple[str, ...], timeout_s: float) -> dict:
    """The job of run `name` once it is in one of `states` (read from /ui/api/jobs with the page's session)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        jobs = [j for j in page.request.get(dashboard.url + "/ui/api/jobs").json()["jobs"] if j["name"] == name]
        if jobs and jobs[0]["state"] in states:
            return jobs[0]
        time.sleep(0.5)
    raise AssertionError(f"the job of {name} did not reach {states} in {timeout_s}s")


def test_validate_shows_data_problems(page, dashboard, tmp_path):
    bad = tmp_path / "broken.csv"
    bad.write_text("text,category\nmy card is late,card_arrival\nthis row has no label\n,pin_blocked\n")
    fill_form(page, dashboard, "broken", bad)
    page.click("#validate")
    box = page.locator("#validation")
    assert "Problems found" in box.inner_text()
    assert "broken.csv:3" in box.inner_text()     # the row without a label, by file and line
    shot(page, "6-new-run-validate-problems", full=True)
    assert not (dashboard.runs / "broken").exists()
    assert page.console.errors == []


def test_start_from_form_completes_and_is_listed(page, dashboard):
    fill_form(page, dashboard, "from-form", dashboard.lab["data"]["train"])
    page.click("#validate")
    assert "Config and data OK" in page.locator("#validation").inner_text()
    shot(page, "7-new-run-validated")
    page.click("#start")
    page.wait_for_url("**/ui/jobs**")
    wait_state(dashboard, "from-form", ("complete", "failed"), JOB_TIMEOUT_S)
    assert RunDir(dashboard.runs / "from-form").state() == "complete", dashboard.log.read_text()[-3000:]
    assert wait_job(page, dashboard, "from-form", ("finished", "failed"), 60)["returncode"] == 0
    page.goto(dashboard.url + "/ui/jobs")
    assert page.locator(".job .status.finished").count() == 1
    shot(page, "8-jobs")
    page.goto(dashboard.url + "/ui/runs")
    row = page.locator("#runs tbody tr[data-run=from-form]")
    assert row.count() == 1 and "complete" in row.inner_text() and "accuracy" in row.inner_text()
    shot(page, "9-runs-with-new-run")
    assert page.console.errors == []


def test_cancel_leaves_an_interrupted_run(page, dashboard):
    # Long enough to be cancelled mid-training: many steps, no validation until the end.
    fill_form(page, dashboard, "long", dashboard.lab["data"]["train"], **{"train.max_steps": "100000",
                                                                          "train.eval_every": "100000"})
    page.click("#start")
    page.wait_for_url("**/ui/jobs**")
    wait_state(dashboard, "long", ("running",), JOB_TIMEOUT_S)
    page.goto(dashboard.url + "/ui/runs/long")
    # The curve grows while the run trains: the live view of a real training process.
    page.wait_for_function("() => +document.querySelector('#chart-loss').dataset.points > 0", timeout=JOB_TIMEOUT_S * 1000)
    seen = int(page.get_attribute("#chart-loss", "data-points"))
    page.wait_for_function(f"() => +document.querySelector('#chart-loss').dataset.points > {seen}", timeout=10_000)
    shot(page, "10-run-live")
    page.click("#cancel")
    state = wait_state(dashboard, "long", ("interrupted", "failed", "complete"), 90)
    assert state == "interrupted"
    assert RunDir(dashboard.runs / "long").status().get("stages", {}).get("train", {}).get("status") == "interrupted"
    page.goto(dashboard.url + "/ui/runs/long")
    assert "interrupted" in page.locator("h1 .status").inner_text()
    wait_job(page, dashboard, "long", ("cancelled",), 60)
    page.reload()
    assert page.locator("#resume").is_visible()          # it can be resumed (`tunelab run --resume`)
    shot(page, "11-run-interrupted")
    page.goto(dashboard.url + "/ui/jobs")
    assert page.locator(".job .status.cancelled").count() == 1
    assert page.console.errors == []
