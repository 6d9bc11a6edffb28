"""The dashboard in real headless Chromium over real tiny runs: every page renders without console errors, a curve
gains a point when a step is logged, compare shows the config diff, a run started from the form completes and
appears in the table, Cancel leaves an `interrupted` run; a tuning study has its own page. Screenshots go to
build/screenshots/ui/ (or $TUNELAB_SCREENSHOTS)."""

from __future__ import annotations

import time

from browser import Console, shot
from tunelab.core.rundir import RunDir

LIVE_BOUND_S = 5.0


def points(page, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points"))


def wait_points(page, chart: str, more_than: int, timeout_s: float) -> float:
    """Seconds until chart `chart` holds more than `more_than` points (fails after `timeout_s`)."""
    t0 = time.monotonic()
    page.wait_for_function(f"() => +document.querySelector('#chart-{chart}').dataset.points > {more_than}",
                           timeout=timeout_s * 1000)
    return time.monotonic() - t0


def test_pages_need_a_session(page, dashboard):
    other = page.context.browser.new_page(viewport={"width": 1280, "height": 900})   # no session cookie
    for path in ("/ui/runs", "/ui/runs/intents-a", "/ui/compare", "/ui/new", "/ui/jobs", "/ui/studies",
                 "/ui/studies/intents-study"):
        r = other.goto(dashboard.url + path)
        assert r.status == 401 and other.locator("#to-signin").is_visible(), path
        assert other.locator("main table, main form, figure").count() == 0, path
    shot(other, "0-signin-required")
    console = Console(other)                # the 401 answers above are console errors by design; the form is not
    other.click("#to-signin")
    other.wait_for_selector("#api_key")
    shot(other, "0-sign-in")
    assert console.errors == []
    other.close()


def test_runs_table(page, dashboard):
    page.goto(dashboard.url + "/ui/runs")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 2
    text = page.locator("#runs").inner_text()
    assert "intents-a" in text and "intents-b" in text and "complete" in text and "accuracy" in text
    assert "zero-shot (base)" in text or "few-shot (base)" in text
    shot(page, "1-runs")
    page.goto(dashboard.url + "/ui/runs?sort=name&desc=false")
    assert page.locator("#runs tbody tr").first.get_attribute("data-run") == "intents-a"
    assert page.console.errors == []


def test_run_page_and_live_curve(page, dashboard):
    page.goto(dashboard.url + "/ui/runs/intents-a")
    wait_points(page, "loss", 0, 10)
    rd = RunDir(dashboard.runs / "intents-a")
    logged = [r for r in rd.read_log() if "loss" in r and "eval_loss" not in r]
    assert points(page, "loss") == len(logged) + len([r for r in rd.read_log() if "eval_loss" in r])
    for section in ("summary", "data", "test", "classification", "samples", "config", "downloads"):
        assert page.locator(f"section#{section}").count() == 1, section
    assert "not measured" not in page.locator("section#test").inner_text()
    shot(page, "2-run")
    shot(page, "2-run-full", full=True)

    # A step logged by the run's writer (the one the Trainer's RunLog callback calls) shows up within 5 s.
    before, step = points(page, "loss"), logged[-1]["step"] + 1
    rd.log({"step": step, "epoch": 1.0, "loss": 2.5, "grad_norm": 0.5, "learning_rate": 1e-4})
    took = wait_points(page, "loss", before, LIVE_BOUND_S)
    assert page.get_attribute("#chart-loss", "data-last-step") == str(step)
    assert points(page, "lr") == len(logged) + 1
    print(f"\nlive curve: a logged step appeared on the chart after {took:.2f}s (bound {LIVE_BOUND_S}s)")

    # Smoothing and the log scale redraw the same points.
    page.fill("#smoothing", "0.8")
    page.dispatch_event("#smoothing", "input")
    page.check("#logscale")
    assert points(page, "loss") == before + 1
    shot(page, "3-run-smoothed-log")

    page.fill("#tags", "baseline, demo")
    page.click("#save-tags")
    page.goto(dashboard.url + "/ui/runs?tag=demo")
    assert page.locator("#runs tbody tr").count() == 1 and "demo" in page.locator("#runs").inner_text()
    assert page.console.errors == []


def test_predictions_browser(page, dashboard):
    page.goto(dashboard.url + "/ui/runs/intents-a/predictions?system=finetuned&outcome=wrong")
    rows = page.locator("#predictions tbody tr")
    assert rows.count() >= 1
    assert all(rows.nth(i).get_attribute("class") == "wrong" for i in range(rows.count()))
    page.goto(dashboard.url + "/ui/runs/intents-a/predictions")
    total = page.locator("#predictions tbody tr").count()
    page.select_option("#p-outcome", "right")
    page.click("#pred-filters button")
    right = page.locator("#predictions tbody tr.right").count()
    assert right == page.locator("#predictions tbody tr").count() and right < total
    shot(page, "4-predictions")
    assert page.console.errors == []


def test_compare_shows_config_diff(page, dashboard):
    page.goto(dashboard.url + "/ui/runs")
    page.check("input[value=intents-a]")
    page.check("input[value=intents-b]")
    page.click("#compare-selected")
    page.wait_for_url("**/ui/compare?**")
    diff = page.locator("#diff").inner_text()
    assert "train.lr" in diff and "method.r" in diff and "0.005" in diff and "0.001" in diff
    assert "data.template" not in diff and "model.name" not in diff   # equal keys are left out
    assert page.locator("#metrics-table tbody tr").count() == 2
    assert "intents-a" in page.locator("#paired-table").inner_text()
    wait_points(page, "loss", 0, 10)
    shot(page, "5-compare", full=True)
    page.goto(dashboard.url + "/ui/compare?run=intents-a")       # fewer than two runs: pick them
    assert page.locator("#pick input[value=intents-a]").is_checked()
    shot(page, "5-compare-pick")
    assert page.console.errors == []


def test_study_page(page, dashboard):
    import csv

    from tunelab.core.rundir import StudyDir

    sd = StudyDir(dashboard.runs / "intents-study")
    rows = list(csv.DictReader(sd.trials_csv.open()))
    best = next(r for r in rows if r["best"] == "True")
    page.goto(dashboard.url + "/ui/runs")
    assert page.locator("#runs tbody tr[data-run=intents-study]").count() == 0     # a study is not a run
    page.click("nav.app a:has-text('Studies')")
    row = page.locator("#studies tbody tr[data-study=intents-study]")
    assert row.count() == 1 and f"trial {best['number']}" in row.inner_text()
    shot(page, "12-studies")
    row.locator("a").first.click()
    page.wait_for_url("**/ui/studies/intents-study")
    assert page.locator("#trials-table tbody tr").count() == len(rows) == 2
    assert page.locator("#trials-table tbody tr.best").get_attribute("data-trial") == best["number"]
    assert f"(trial {best['number']})" in page.locator("#best-value").inner_text()
    objective = list(best)[2]                   # trials.csv: number, state, the objective, ...
    assert f"validation {objective} {float(best[objective]):.4f}" in page.locator("#best-value").inner_text()
    link = page.locator("#study-files a", has_text="tune_report.html")
    r = page.request.get(dashboard.url + link.get_attribute("href"))
    assert r.status == 200 and b"configurations tried" in r.body()
    shot(page, "13-study", full=True)
    assert page.console.errors == []
