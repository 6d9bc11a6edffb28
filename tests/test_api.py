"""The Python API as the README shows it: the README's own code block runs (on a tiny model's config),
and `tunelab.load(...).predict` answers exactly what evaluation recorded for the same test examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tunelab
from tunelab.evaluate.prompts import PromptBuilder
from tunelab.train.render import Renderer
from test_pipeline import project  # noqa: F401  (module fixture: tiny Llama + Banking-like data + cfg.yaml)

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    code = readme_api_example().replace("examples/banking77/config.yaml", str(project / "cfg.yaml"))
    code = code.replace('"name=api-demo"', f'"name=api-demo", "runs_dir={tmp_path}"')
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert 0.0 <= float(out[-2]) <= 1.0
    predictions = eval(out[-1])   # the printed list of labels
    assert len(predictions) == 2 and set(predictions) <= {"card", "transfer", "pin"}


def test_load_predicts_what_evaluation_recorded(project, tmp_path):  # noqa: F811
    rd = tunelab.run(project / "cfg.yaml", [f"runs_dir={tmp_path}", "name=api"])
    recorded = {r["id"]: r["prediction"] for r in rd.predictions() if r["system"] == "finetuned"}
    model = tunelab.load(rd.path)
    test = rd.data.splits()["test"]
    assert model.predict([r["input"] for r in test]) == [recorded[r["id"]] for r in test]
    evaluation = PromptBuilder(Renderer(model.tokenizer, rd.config()), model.labels, None)
    assert [model.prompt_ids(r) for r in test] == [evaluation.finetuned(r) for r in test]


def test_api_refuses_an_untrained_run(project, tmp_path):  # noqa: F811
    rd = tunelab.prepare(project / "cfg.yaml", [f"runs_dir={tmp_path}", "name=prepared-only"])
    with pytest.raises(tunelab.core.errors.UserError, match="has not been trained"):
        tunelab.load(rd.path)
