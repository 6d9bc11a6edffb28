"""report.html from a realistic run folder written by the real writers, checked with html.parser."""

from __future__ import annotations

import base64
import csv
import fnmatch
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.tiny import tiny_tokenizer
from tunelab.evaluate import metrics as M
from tunelab.evaluate import significance as S
from tunelab.config import config_from_dict
from tunelab.data.stage import prepare
from tunelab.report import stage as report_stage
from tunelab.evaluate.verdict import overfitting
from tunelab.report.html import SECTIONS
from tunelab.core import templating
from tunelab.core.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "wbr"}
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
LABELS = ["card", "transfer", "other"]


class Page(HTMLParser):
    """Checks nesting (every non-void tag closed in order) and collects ids, images, links and section text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.ids, self.images, self.links = [], [], [], [], []
        self.text: dict[str, str] = {}
        self.section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "section":
            self.section = a.get("id")
            self.text[self.section] = ""
        if tag == "img":
            self.images.append((self.section, a.get("src", "")))
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "section":
            self.section = None

    def handle_data(self, data):
        if self.section:
            self.text[self.section] += data


def _parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    return page


def write_html(rd: RunDir):
    """The report stage on `rd`; returns the path of report.html."""
    return report_stage.run(rd.config(), rd)


def _training_log(rd: RunDir) -> None:
    # Train loss falls throughout; validation loss bottoms out at step 60 and then rises (overfitting).
    for step in range(10, 121, 10):
        rd.log({"step": step, "loss": 2.5 - step / 80, "lr": 2e-4 * min(1.0, step / 20) * (1 - step / 130),
                "epoch": step / 40})
        if step % 20 == 0:
            rd.log({"step": step, "eval_loss": {20: 2.1, 40: 1.8, 60: 1.6, 80: 1.7, 100: 1.85, 120: 1.95}[step]})


@pytest.fixture
def classification_run(tmp_path):
    rng = random.Random(0)
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(120):
            w.writerow([" ".join(rng.sample(WORDS, 6)) + " please & thanks", LABELS[i % 3]])
    cfg = config_from_dict({"name": "banking-demo", "task": "sft", "runs_dir": str(tmp_path / "runs"),
                            "data": {"train": str(tmp_path / "train.csv"), "test_fraction": 0.25}})
    rd = RunDir.create(cfg)
    test = prepare(cfg, rd.data, tiny_tokenizer()).splits["test"]
    refs = {r["id"]: r["output"] for r in test}
    systems, rows = {}, []
    for system, acc in (("finetuned", 0.85), ("zero_shot", 0.35), ("few_shot", 0.5)):
        preds = {i: (ref if rng.random() < acc else rng.choice([x for x in LABELS if x != ref])) for i, ref in refs.items()}
        systems[system] = preds
        rows += [{"system": system, "id": i, "prompt": f"<|im_start|>user\nClassify: {r['input']['text']}<|im_end|>",
                  "prediction": preds[i], "reference": refs[i]} for i, r in zip(refs, test)]
    (rd.path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    rd.update_metrics("test", S.score_systems(systems, refs, M.metrics_for("classification"), samples=200))
    rd.update_metrics("forgetting", {"perplexity": 31.2, "perplexity_base": 29.8, "perplexity_change": 31.2 / 29.8 - 1,
                                     "kl_mean": 0.041, "tokens": 4080, "text": "general_english.txt"})
    rd.update_metrics("train", {"steps": 120, "best_step": 60, "train_runtime_s": 84.2, "tokens_per_s": 1510.0})
    _training_log(rd)
    return rd, systems


def test_every_section_is_rendered_self_contained(classification_run):
    rd, systems = classification_run
    path = write_html(rd)
    assert path == rd.path / "report.html"
    page = _parse(path)
    assert [sid for sid, _ in SECTIONS] == [i for i in page.ids if i in dict(SECTIONS)]
    for sid, _ in SECTIONS:
        assert "not measured" not in page.text[sid], sid
    # Self-contained: every image is an inline PNG; links only point inside the page.
    assert all(link.startswith("#") for link in page.links)
    assert len(page.images) >= 5
    for _, src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    where = {sec for sec, _ in page.images}
    assert {"training", "test", "classification"} <= where


def test_report_content_matches_the_run(classification_run):
    rd, systems = classification_run
    page = _parse(write_html(rd))
    test = rd.metrics()["test"]
    ft = test["finetuned"]
    assert f"{ft['accuracy']:.4f}" in page.text["summary"]
    assert f"p = {ft['p_value_vs']['zero_shot']:.3g}" in page.text["summary"]
    assert "mcnemar" in page.text["test"] and f"{ft['ci']['f1_macro'][0]:.4f}" in page.text["test"]
    assert "Overfitting from step 80" in page.text["overfitting"] and "step 60" in page.text["overfitting"]
    assert "Leakage policy" in page.text["data"] and "banking-demo" in page.text["config"]
    assert "+4.7%" in page.text["forgetting"] and "0.0410" in page.text["forgetting"]
    refs = _refs(rd)
    n_right = sum(1 for i, p in systems["finetuned"].items() if p == refs[i])
    assert f"Right ({min(5, n_right)})" in page.text["samples"]
    assert f"Wrong ({min(5, len(refs) - n_right)})" in page.text["samples"]
    raw = (rd.path / "report.html").read_text(encoding="utf-8")
    # Prompts carry chat markup: it is shown escaped, never interpreted as HTML.
    assert "&lt;|im_start|&gt;user" in raw and "<|im_start|>" not in raw
    for label in ("card", "transfer", "other"):
        assert label in page.text["classification"]


def _refs(rd: RunDir) -> dict:
    rows = [json.loads(l) for l in (rd.path / "predictions.jsonl").read_text().splitlines()]
    return {r["id"]: r["reference"] for r in rows if r["system"] == "finetuned"}


def test_missing_sections_render_not_measured(tmp_path):
    cfg = config_from_dict({"name": "empty", "runs_dir": str(tmp_path / "runs"), "data": {"train": "x.csv"}})
    rd = RunDir.create(cfg)
    page = _parse(write_html(rd))
    for sid in ("summary", "data", "training", "overfitting", "test", "samples", "forgetting"):
        assert "not measured" in page.text[sid], sid
    assert "empty" in page.text["config"] and "python" in page.text["environment"]


def test_generation_run_shows_best_and_worst_by_rouge(tmp_path):
    cfg = config_from_dict({"name": "dialogsum", "runs_dir": str(tmp_path / "runs"), "data": {"train": "x.jsonl"}})
    rd = RunDir.create(cfg)
    refs = {f"t{i}": [f"person {i} talks about the {w}", f"they discuss the {w}"] for i, w in enumerate(WORDS[:12])}
    ft = {i: r[0] if n % 3 else "something else entirely" for n, (i, r) in enumerate(refs.items())}
    zs = {i: "a summary" for i in refs}
    rd.update_metrics("test", S.score_systems({"finetuned": ft, "zero_shot": zs}, refs, M.metrics_for("generation"), samples=200))
    # Entries beyond the three systems (here the fine-tuned model on a larger test set) are shown too.
    rd.update_metrics("test", {"finetuned_full_test": {"rougeL": 0.4321, "n": 500, "subset": "full_test"}})
    rows = [{"system": s, "id": i, "prompt": "Summarize", "prediction": p[i], "reference": refs[i]}
            for s, p in (("finetuned", ft), ("zero_shot", zs)) for i in refs]
    (rd.path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    page = _parse(write_html(rd))
    assert "Best by rougeL" in page.text["samples"] and "Worst by rougeL" in page.text["samples"]
    assert "not a classification task" in page.text["classification"]
    assert "paired_bootstrap" in page.text["test"] and "few-shot (base): not measured" in page.text["summary"]
    assert "fine-tuned, full test set" in page.text["test"] and "0.4321" in page.text["test"]


def test_overfitting_markers():
    log = [{"step": s, "loss": 3 - s / 100} for s in range(10, 101, 10)]
    log += [{"step": 20, "eval_loss": 2.0}, {"step": 40, "eval_loss": 1.5}, {"step": 60, "eval_loss": 1.7},
            {"step": 80, "eval_loss": 1.6}, {"step": 100, "eval_loss": 1.9}]
    marks = overfitting(log)
    assert marks["best_step"] == 40 and marks["rising"] == [60, 100] and marks["overfit_from"] == 60
    assert overfitting([{"step": 1, "loss": 1.0}])["best_step"] is None
    flat_train = [{"step": s, "loss": 1.0} for s in (10, 20, 30)] + [{"step": 10, "eval_loss": 1.0}, {"step": 30, "eval_loss": 1.2}]
    assert overfitting(flat_train)["overfit_from"] is None  # val rises but train did not fall


def test_language_modelling_run_counts_lower_perplexity_as_the_gain(tmp_path):
    cfg = config_from_dict({"name": "lm", "task": "pretrain", "runs_dir": str(tmp_path / "runs"), "data": {"train": "x.txt"}})
    rd = RunDir.create(cfg)
    tokens = {f"doc{i}": 50 + i for i in range(30)}
    tuned = {i: 2.0 * n for i, n in tokens.items()}            # summed NLL: 2.0 nats per token ...
    base = {i: 2.6 * n for i, n in tokens.items()}             # ... against 2.6 before tuning
    rd.update_metrics("test", S.score_systems({"finetuned": tuned, "zero_shot": base}, tokens, M.metrics_for("lm"), samples=200))
    raw = write_html(rd).read_text(encoding="utf-8")
    page = _parse(rd.path / "report.html")
    assert "Headline metric perplexity" in page.text["summary"]
    assert '<span class="good">-' in raw  # the fine-tuned perplexity is lower: shown as a gain
    assert "not a classification task" in page.text["classification"]


EVIL = "<script>alert(1)</script>"


def test_user_text_is_escaped_by_the_templates(classification_run):
    # A label and a prediction carrying markup must show as text: autoescape is on in every template.
    rd, _ = classification_run
    rows = rd.predictions()
    first = next(r for r in rows if r["system"] == "finetuned")
    first["prediction"] = first["reference"] = EVIL
    rd.write_predictions(rows)
    test = rd.metrics()["test"]
    test["finetuned"]["f1_per_class"][EVIL] = 0.5
    rd.set_metrics("test", test)
    raw = write_html(rd).read_text(encoding="utf-8")
    page = _parse(rd.path / "report.html")
    assert "<script" not in raw.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert EVIL in page.text["samples"] and EVIL in page.text["classification"]


def test_report_references_no_external_asset(classification_run):
    rd, _ = classification_run
    raw = write_html(rd).read_text(encoding="utf-8")
    for attr in ("src", "href"):
        assert not re.search(rf'{attr}\s*=\s*["\']?\s*(https?:)?//', raw, re.IGNORECASE), attr
    assert "<link" not in raw and "@import" not in raw and "url(" not in raw
    # The stylesheet is inlined from the package's static file, the one the web app serves.
    assert templating.STYLESHEET.read_text(encoding="utf-8").strip() in raw


def test_base_page_links_the_stylesheet_for_the_web_app():
    page = templating.environment().from_string(
        '{% extends "base.html" %}{% block title %}runs{% endblock %}{% block content %}<p>{{ x }}</p>{% endblock %}')
    linked = page.render(css_href="/static/tunelab.css", nav=[{"href": "/runs", "label": "Runs"}], x=EVIL)
    assert '<link rel="stylesheet" href="/static/tunelab.css">' in linked
    assert "<style" not in linked and "<script" not in linked   # the web app's CSP forbids inline code
    assert '<nav><a href="/runs">Runs</a></nav>' in linked and "<p>&lt;script&gt;" in linked
    inlined = page.render(x="")
    assert "<style>" in inlined and "<link" not in inlined


def test_templates_ship_as_package_data():
    # Every template and static file matches a [tool.setuptools.package-data] glob, so a wheel carries it.
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, as a package
        tomllib = pytest.importorskip("tomli")
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    pkg = templating.TEMPLATES_DIR.parent
    files = [p.relative_to(pkg).as_posix() for p in templating.TEMPLATES_DIR.rglob("*") if p.is_file()]
    assert {"templates/base.html", "templates/macros.html", "templates/run_report.html",
            "templates/static/tunelab.css"} <= set(files)
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs["tunelab"])]
    assert not missing, missing
